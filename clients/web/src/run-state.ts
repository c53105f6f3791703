// A conversation's events folded into what the pages show. Pure: the same events give the same
// view, and an event at or before `lastEventId` changes nothing, so a replay from the first event
// after a reload, or a stream resumed after a drop, never duplicates or loses text.
import type { common, orchestration } from "@callisto/client";

export interface TurnView {
  key: string;
  speakerId: string;
  turn: number;
  human: boolean;
  text: string;
  citations: common.Citation[];
  toolCalls: orchestration.ToolCall[];
  sentiment?: number;
  sentimentLabel?: number;
  /** The stored message of an ended turn: `conversations/{id}/messages/{n}`. */
  message?: string;
  generationMs?: number;
  stepId: string;
  ended: boolean;
  /** The run ended (stopped, failed) while this turn was still being spoken. */
  interrupted?: boolean;
}

export interface StepView {
  update: orchestration.StepUpdate;
  /** Every state the step went through, in order. */
  states: string[];
}

export interface RunView {
  conversation: string;
  turns: TurnView[];
  awaiting?: orchestration.AwaitingInput;
  done?: orchestration.Done;
  error?: string;
  lastEventId: bigint;
  steps: Record<string, StepView>;
  plan?: orchestration.WorkflowPlanned;
  usage?: common.TokenUsage;
  approvalsDecided: orchestration.ApprovalDecided[];
  warnings: string[];
}

export function emptyRun(conversation = ""): RunView {
  return { conversation, turns: [], lastEventId: 0n, steps: {}, approvalsDecided: [], warnings: [] };
}

function openTurn(turns: TurnView[], speaker: string, stepId: string): number {
  for (let i = turns.length - 1; i >= 0; i--) {
    const turn = turns[i]!;
    if (!turn.ended && turn.stepId === stepId && (speaker === "" || turn.speakerId === speaker)) return i;
  }
  return -1;
}

function withTurn(view: RunView, index: number, change: (turn: TurnView) => TurnView): RunView {
  const turns = view.turns.slice();
  turns[index] = change(turns[index]!);
  return { ...view, turns };
}

function closeTurns(view: RunView): RunView {
  return { ...view, turns: view.turns.map((t) => (t.ended ? t : { ...t, ended: true, interrupted: true })) };
}

/** `view` after `event`. */
export function reduce(view: RunView, event: orchestration.ConversationEvent): RunView {
  if (event.eventId <= view.lastEventId) return view;
  let next: RunView = {
    ...view,
    lastEventId: event.eventId,
    conversation: event.conversation || view.conversation,
  };
  const stepId = event.stepId;
  const { kind } = event;
  switch (kind.case) {
    case "turnStarted": {
      const started = kind.value;
      // A restarted turn (its process died mid-turn) supersedes the unfinished one.
      const open = openTurn(next.turns, started.speaker, stepId);
      const turns = open >= 0 && started.restarted ? next.turns.filter((_, i) => i !== open) : next.turns;
      next = {
        ...next,
        awaiting: undefined,
        turns: [
          ...turns,
          {
            key: `${event.eventId}`,
            speakerId: started.speaker,
            turn: started.turn,
            human: started.human,
            text: "",
            citations: [],
            toolCalls: [],
            stepId,
            ended: false,
          },
        ],
      };
      break;
    }
    case "token": {
      const open = openTurn(next.turns, kind.value.speaker, stepId);
      if (open >= 0) next = withTurn(next, open, (t) => ({ ...t, text: t.text + kind.value.text }));
      break;
    }
    case "toolCall": {
      const open = openTurn(next.turns, "", stepId);
      if (open >= 0) {
        next = withTurn(next, open, (t) => {
          // A call is announced, then reported with its result under the same id.
          const others = t.toolCalls.filter((c) => !kind.value.id || c.id !== kind.value.id);
          return { ...t, toolCalls: [...others, kind.value] };
        });
      }
      break;
    }
    case "citation": {
      const open = openTurn(next.turns, "", stepId);
      if (open >= 0) next = withTurn(next, open, (t) => ({ ...t, citations: [...t.citations, kind.value] }));
      break;
    }
    case "turnEnded": {
      const ended = kind.value;
      let open = openTurn(next.turns, ended.speaker, stepId);
      if (open < 0) {
        // A human turn arrives whole.
        next = {
          ...next,
          turns: [
            ...next.turns,
            {
              key: `${event.eventId}`,
              speakerId: ended.speaker,
              turn: ended.turn,
              human: ended.human,
              text: "",
              citations: [],
              toolCalls: [],
              stepId,
              ended: false,
            },
          ],
        };
        open = next.turns.length - 1;
      }
      next = withTurn(next, open, (t) => ({
        ...t,
        text: ended.text || t.text,
        citations: ended.citations.length ? ended.citations : t.citations,
        sentiment: ended.sentiment?.score,
        sentimentLabel: ended.sentiment?.label,
        generationMs: ended.generationMs,
        message: ended.message || t.message,
        turn: ended.turn || t.turn,
        human: ended.human || t.human,
        ended: true,
      }));
      next = { ...next, awaiting: undefined };
      break;
    }
    case "awaitingInput":
      next = { ...next, awaiting: kind.value };
      break;
    case "step": {
      const update = kind.value;
      const before = next.steps[update.stepId];
      const states = before ? [...before.states] : [];
      if (states.at(-1) !== update.state) states.push(update.state);
      next = { ...next, steps: { ...next.steps, [update.stepId]: { update, states } } };
      if (next.awaiting?.stepId === update.stepId && update.state !== "awaiting_approval") {
        next = { ...next, awaiting: undefined };
      }
      break;
    }
    case "workflowPlan":
      next = { ...next, plan: kind.value };
      break;
    case "usage":
      next = { ...next, usage: kind.value };
      break;
    case "approvalDecided":
      next = { ...next, awaiting: undefined, approvalsDecided: [...next.approvalsDecided, kind.value] };
      break;
    case "warning":
      next = { ...next, warnings: [...next.warnings, kind.value.message] };
      break;
    case "done":
      next = { ...closeTurns(next), done: kind.value, awaiting: undefined };
      break;
    case "error":
      next = { ...closeTurns(next), error: kind.value.message, awaiting: undefined };
      break;
    default:
      break;
  }
  return next;
}

export function finished(view: RunView): boolean {
  return view.done !== undefined || view.error !== undefined;
}
