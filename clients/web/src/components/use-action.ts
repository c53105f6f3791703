// One user action at a time on a form: what is under way (its label, "" when idle) and the
// last action's error, shown in place. Controls disable themselves while `busy`.
import { useCallback, useState } from "react";
import { errorText } from "./download.js";

export interface Action {
  busy: string;
  problem: string;
  setProblem: (problem: string) => void;
  /** Runs `work` labelled `label`; its error, if any, becomes `problem`. */
  perform: (label: string, work: () => Promise<unknown>) => Promise<void>;
}

export function useAction(): Action {
  const [busy, setBusy] = useState("");
  const [problem, setProblem] = useState("");
  const perform = useCallback(async (label: string, work: () => Promise<unknown>) => {
    setBusy(label);
    setProblem("");
    try {
      await work();
    } catch (caught) {
      setProblem(errorText(caught));
    } finally {
      setBusy("");
    }
  }, []);
  return { busy, problem, setProblem, perform };
}
