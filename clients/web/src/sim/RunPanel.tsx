// A simulation while it runs and after: transcript, live sentiment chart, turn counter and
// metrics, the human's turn, Stop and End.
import type { orchestration } from "@callisto/client";
import { useEffect, useMemo, useState } from "react";
import { SentimentChart, type SentimentPoint } from "../components/SentimentChart.js";
import { Transcript } from "../components/Transcript.js";
import { useAction } from "../components/use-action.js";
import { href } from "../router.js";
import { finished } from "../run-state.js";
import { useSession } from "../session.js";
import { useRun } from "../use-run.js";

export function Metrics({ metrics }: { metrics: orchestration.ConversationMetrics | undefined }) {
  if (!metrics) return null;
  const items: [string, string][] = [
    ["Turns", `${metrics.turns} (${metrics.agentTurns} agent, ${metrics.humanTurns} human)`],
    ["Mean sentiment", metrics.meanSentiment.toFixed(2)],
    ["Trend", metrics.sentimentTrend || "—"],
    ["Tokens", `${metrics.usage?.totalTokens ?? 0}`],
    ["Cost", `$${metrics.cost.toFixed(4)}`],
    ["Generation", `${(metrics.generationMs / 1000).toFixed(1)} s`],
    ["Passages retrieved", `${metrics.passagesRetrieved}`],
    ["Outcome", metrics.outcome || "running"],
  ];
  return (
    <dl className="metrics" aria-label="Metrics">
      {items.map(([label, value]) => (
        <div key={label}>
          <dt>{label}</dt>
          <dd>{value}</dd>
        </div>
      ))}
    </dl>
  );
}

export function sentimentPoints(
  turns: { turn: number; sentiment?: number; speakerId: string }[],
  labels: Record<string, string>,
): SentimentPoint[] {
  return turns
    .filter((t) => t.sentiment !== undefined && t.turn > 0)
    .map((t) => ({ turn: t.turn, score: t.sentiment!, speaker: labels[t.speakerId] ?? t.speakerId }));
}

export function RunPanel({ name, live }: { name: string; live: boolean }) {
  const { client } = useSession();
  const { view, labels, error } = useRun(name);
  const [metrics, setMetrics] = useState<orchestration.ConversationMetrics>();
  const [reply, setReply] = useState("");
  const { busy, problem, perform } = useAction();
  const endedTurns = view.turns.filter((t) => t.ended).length;
  const over = finished(view);

  useEffect(() => {
    let current = true;
    client.orchestration
      .getConversationMetrics({ name })
      .then((answer) => current && setMetrics(answer.metrics))
      .catch(() => undefined);
    return () => {
      current = false;
    };
  }, [client, name, endedTurns, over]);

  const points = useMemo(() => sentimentPoints(view.turns, labels), [view.turns, labels]);
  const yourTurn = view.awaiting !== undefined && view.awaiting.speaker !== "" && !view.awaiting.approvalId;

  const status = view.done
    ? `Done: ${view.done.reason}${view.done.detail ? ` (${view.done.detail})` : ""}`
    : view.error
      ? `Failed: ${view.error}`
      : yourTurn
        ? "Your turn"
        : "Running…";
  return (
    <section aria-label="Simulation">
      <div className="row">
        <h2 style={{ margin: 0 }}>{name}</h2>
        <span className="badge" role="status" aria-live="polite" data-testid="run-status">
          {status}
        </span>
        <span className="muted" data-testid="turn-counter">
          Turn {Math.max(0, ...view.turns.map((t) => t.turn))}
        </span>
        {live && !over && (
          <>
            <button type="button" className="danger" disabled={busy !== ""} onClick={() => void perform("Stopping…", () => client.cancel(name, "stopped from the console"))}>
              Stop
            </button>
            <button
              type="button"
              className="secondary"
              disabled={busy !== ""}
              onClick={() => void perform("Ending…", () => client.submitTurn(name, "", { endConversation: true }))}
            >
              End
            </button>
          </>
        )}
        {over && <a href={href("conversations", [name.split("/")[1] ?? ""])}>Open the replay</a>}
      </div>
      {(error || problem) && (
        <p className="error" role="alert">
          {problem || error}
        </p>
      )}
      {yourTurn && (
        <form
          className="awaiting panel"
          onSubmit={(event) => {
            event.preventDefault();
            const text = reply.trim();
            if (!text) return;
            void perform("Sending…", async () => {
              await client.submitTurn(name, text, { author: view.awaiting?.speaker ?? "" });
              setReply("");
            });
          }}
        >
          <label htmlFor="your-turn">Your turn{view.awaiting?.prompt ? `: ${view.awaiting.prompt}` : ""}</label>
          <textarea id="your-turn" value={reply} onChange={(e) => setReply(e.target.value)} autoFocus />
          <button type="submit" disabled={busy !== "" || !reply.trim()}>
            Send
          </button>
        </form>
      )}
      <div className="columns">
        <div className="panel">
          <Transcript turns={view.turns} labels={labels} />
        </div>
        <div>
          <div className="panel">
            <SentimentChart points={points} />
          </div>
          <div className="panel">
            <h2>Metrics</h2>
            <Metrics metrics={metrics} />
          </div>
        </div>
      </div>
    </section>
  );
}
