// Follows one conversation's events from its first (resuming after drops) and folds them into a
// RunView, re-rendering at most once per animation frame. A page that started a run puts the
// conversation in its URL and renders this: a reload replays the log and shows the same text.
import type { persistence } from "@callisto/client";
import { useEffect, useState } from "react";
import { emptyRun, reduce, type RunView } from "./run-state.js";
import { useSession } from "./session.js";

export interface RunState {
  view: RunView;
  /** `speaker id -> "name (Company – Role)"`, from the conversation's participants. */
  labels: Record<string, string>;
  error: string;
  /** Call after starting another run on the conversation (a follow-up question): the hook
   * follows it too. */
  follow: () => void;
}

export function participantLabel(participant: persistence.Participant): string {
  const name = participant.displayName || participant.id;
  const about = [participant.company, participant.role].filter(Boolean).join(" – ");
  return about ? `${name} (${about})` : name;
}

export function useRun(name: string | null): RunState {
  const { client } = useSession();
  const [poke] = useState(() => new Poke());
  const [state, setState] = useState<Omit<RunState, "follow">>({ view: emptyRun(name ?? ""), labels: {}, error: "" });

  useEffect(() => {
    if (!name) return;
    let view = emptyRun(name);
    let labels: Record<string, string> = {};
    let error = "";
    let frame = 0;
    const controller = new AbortController();
    const publish = () => {
      if (frame) return;
      frame = requestAnimationFrame(() => {
        frame = 0;
        if (!controller.signal.aborted) setState({ view, labels, error });
      });
    };
    const loadLabels = async () => {
      try {
        const found = await client.persistence.getConversation({ name });
        labels = Object.fromEntries(
          (found.conversation?.participants ?? []).map((p) => [p.id, participantLabel(p)]),
        );
        publish();
      } catch {
        // Labels are a nicety: the speaker ids still show.
      }
    };
    setState({ view, labels, error });
    void loadLabels();
    void (async () => {
      // One stream per run of the conversation: each ends with its run's terminal event, and a
      // later run (a follow-up question) is followed from where the last one ended.
      while (!controller.signal.aborted) {
        const waiting = poke.next();
        let delivered = 0;
        try {
          const stream = client.streamConversation(name, { afterEventId: view.lastEventId, signal: controller.signal });
          for await (const event of stream) {
            delivered += 1;
            view = reduce(view, event);
            if (event.kind.case === "turnStarted" && !(event.kind.value.speaker in labels)) void loadLabels();
            publish();
          }
          error = "";
        } catch (caught) {
          error = caught instanceof Error ? caught.message : String(caught);
          publish();
        }
        if (controller.signal.aborted) return;
        if (delivered > 0 && !error) {
          // The log may already hold another run's events (a replay of several questions).
          const found = await client.persistence.getConversation({ name }).catch(() => undefined);
          if ((found?.conversation?.lastSequence ?? 0n) > view.lastEventId) continue;
        }
        await waiting;
      }
    })();
    return () => {
      controller.abort();
      cancelAnimationFrame(frame);
      poke.wake();
    };
  }, [client, name, poke]);

  return { ...state, follow: () => poke.wake() };
}

/** A promise that the next `wake()` resolves. */
class Poke {
  private resolve: () => void = () => undefined;
  private promise: Promise<void> = this.renew();

  private renew(): Promise<void> {
    this.promise = new Promise((resolve) => {
      this.resolve = resolve;
    });
    return this.promise;
  }

  next(): Promise<void> {
    return this.promise;
  }

  wake(): void {
    const resolve = this.resolve;
    this.renew();
    resolve();
  }
}
