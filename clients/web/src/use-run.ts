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
}

export function participantLabel(participant: persistence.Participant): string {
  const name = participant.displayName || participant.id;
  const about = [participant.company, participant.role].filter(Boolean).join(" – ");
  return about ? `${name} (${about})` : name;
}

export function useRun(name: string | null): RunState {
  const { client } = useSession();
  const [state, setState] = useState<RunState>({ view: emptyRun(name ?? ""), labels: {}, error: "" });

  useEffect(() => {
    if (!name) return;
    let view = emptyRun(name);
    let labels: Record<string, string> = {};
    let error = "";
    let frame = 0;
    let stopped = false;
    const publish = () => {
      if (frame) return;
      frame = requestAnimationFrame(() => {
        frame = 0;
        if (!stopped) setState({ view, labels, error });
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
    const stream = client.streamConversation(name);
    void (async () => {
      try {
        for await (const event of stream) {
          view = reduce(view, event);
          if (event.kind.case === "turnStarted" && !(event.kind.value.speaker in labels)) void loadLabels();
          publish();
        }
      } catch (caught) {
        error = caught instanceof Error ? caught.message : String(caught);
        publish();
      }
    })();
    return () => {
      stopped = true;
      cancelAnimationFrame(frame);
      stream.close();
    };
  }, [client, name]);

  return state;
}
