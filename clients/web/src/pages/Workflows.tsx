import { InvalidArgument, orchestration, type persistence } from "@callisto/client";
import { useEffect, useState } from "react";
import { errorText, saveBytes } from "../components/download.js";
import { RunPage, startRun } from "../components/RunPage.js";
import { TableHead } from "../components/TableHead.js";
import { href, type Route } from "../router.js";
import { finished } from "../run-state.js";
import { useSession } from "../session.js";
import { useRun } from "../use-run.js";
import { Dag } from "../workflows/Dag.js";
import { parsePlan, SAMPLE_PLAN, SAMPLE_TASK } from "../workflows/plan.js";

function Start() {
  const { client } = useSession();
  const [text, setText] = useState(SAMPLE_PLAN);
  const [problems, setProblems] = useState<string[]>([]);
  const [stages, setStages] = useState<string[][]>([]);
  const [busy, setBusy] = useState(false);

  function plan(): orchestration.WorkflowPlan | null {
    try {
      return parsePlan(text);
    } catch (caught) {
      setProblems([`The plan does not read as a workflow plan: ${errorText(caught)}`]);
      return null;
    }
  }

  async function validate(): Promise<orchestration.WorkflowPlan | null> {
    setProblems([]);
    setStages([]);
    const parsed = plan();
    if (!parsed) return null;
    try {
      const answer = await client.orchestration.validatePlan({ plan: parsed });
      setStages(answer.stages.map((s) => s.stepIds));
      return parsed;
    } catch (caught) {
      setProblems(
        caught instanceof InvalidArgument && caught.fieldViolations.length
          ? caught.fieldViolations.map((v) => `${v.field}: ${v.description}`)
          : [errorText(caught)],
      );
      return null;
    }
  }

  async function run() {
    setBusy(true);
    try {
      const parsed = await validate();
      if (!parsed) return;
      await startRun(
        client,
        { mode: orchestration.ConversationMode.WORKFLOW, title: SAMPLE_TASK, prompt: SAMPLE_TASK, plan: parsed, tags: ["console", "workflow"] },
        "workflows",
      );
    } catch (caught) {
      setProblems([errorText(caught)]);
    } finally {
      setBusy(false);
    }
  }

  return (
    <form
      className="panel"
      onSubmit={(event) => {
        event.preventDefault();
        void run();
      }}
    >
      <label htmlFor="plan">Plan (YAML or JSON; the sample reviews a supplier's offer)</label>
      <textarea id="plan" value={text} onChange={(e) => setText(e.target.value)} rows={16} spellCheck={false} style={{ fontFamily: "monospace" }} />
      <div className="row">
        <button type="button" className="secondary" onClick={() => void validate()}>
          Validate
        </button>
        <button type="submit" disabled={busy}>
          Run workflow
        </button>
        <button type="button" className="link" onClick={() => setText(SAMPLE_PLAN)}>
          Reset to the sample
        </button>
      </div>
      {stages.length > 0 && (
        <p className="good" role="status">
          Valid: {stages.map((s) => s.join(" + ")).join(" → ")}
        </p>
      )}
      {problems.length > 0 && (
        <ul className="error" role="alert" aria-label="Problems with the plan">
          {problems.map((p) => (
            <li key={p}>{p}</li>
          ))}
        </ul>
      )}
    </form>
  );
}

function Artifacts({ name, refresh }: { name: string; refresh: unknown }) {
  const { client } = useSession();
  const [artifacts, setArtifacts] = useState<persistence.Artifact[]>([]);
  const [problem, setProblem] = useState("");
  useEffect(() => {
    client.orchestration
      .listArtifacts({ parent: name })
      .then((answer) => setArtifacts(answer.artifacts))
      .catch((caught: unknown) => setProblem(errorText(caught)));
  }, [client, name, refresh]);
  async function download(artifact: persistence.Artifact) {
    try {
      const body = await client.orchestration.downloadArtifact({ name: artifact.name });
      saveBytes(body.data, body.contentType || artifact.contentType, artifact.displayName);
    } catch (caught) {
      setProblem(errorText(caught));
    }
  }
  if (!artifacts.length && !problem) return <p className="muted">No artifacts yet.</p>;
  return (
    <ul aria-label="Artifacts">
      {artifacts.map((a) => (
        <li key={a.name}>
          <button type="button" className="link" onClick={() => void download(a)}>
            {a.displayName}
          </button>{" "}
          <span className="muted">
            ({a.contentType}, {String(a.sizeBytes)} bytes)
          </span>
        </li>
      ))}
      {problem && <li className="error">{problem}</li>}
    </ul>
  );
}

function RunView({ name }: { name: string }) {
  const { client } = useSession();
  const { view, error } = useRun(name);
  const over = finished(view);
  const steps = view.plan?.plan?.steps ?? [];
  const status = view.done ? `Done: ${view.done.reason}` : view.error ? `Failed: ${view.error}` : view.awaiting ? "Waiting for an approval" : "Running…";
  const succeeded = Object.values(view.steps).filter((s) => s.update.state === "succeeded").length;
  return (
    <section aria-label="Workflow run">
      <div className="row">
        <h2 style={{ margin: 0 }}>{name}</h2>
        <span className="badge" role="status" aria-live="polite" data-testid="run-status">
          {status}
        </span>
        {!over && (
          <button type="button" className="danger" onClick={() => void client.cancel(name, "stopped from the console")}>
            Cancel
          </button>
        )}
      </div>
      {error && (
        <p className="error" role="alert">
          {error}
        </p>
      )}
      {view.awaiting?.approval && (
        <p className="awaiting">
          Step <strong>{view.awaiting.stepId}</strong> waits for approval:{" "}
          <a href={href("approvals", [], { approval: view.awaiting.approval })} data-testid="approval-link">
            review it in Approvals
          </a>
        </p>
      )}
      <div className="panel">
        {view.plan ? <Dag planned={view.plan} steps={view.steps} /> : <p className="muted">Planning…</p>}
      </div>
      <div className="panel">
        <h2>Steps</h2>
        <div className="table-scroll">
          <table>
            <TableHead columns={["Step", "Agent", "State", "Attempts", "Output"]} />
            <tbody>
              {steps.map((step) => {
                const s = view.steps[step.id];
                return (
                  <tr key={step.id} data-testid="step-row">
                    <td>{step.id}</td>
                    <td>{step.agent}</td>
                    <td>{s?.states.join(" → ") ?? "pending"}</td>
                    <td>{s?.update.attempt ?? 0}</td>
                    <td>
                      <div className="output">{s?.update.output || s?.update.error || ""}</div>
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      </div>
      <div className="panel">
        <h2>Artifacts</h2>
        <Artifacts name={name} refresh={`${succeeded}-${over}`} />
      </div>
    </section>
  );
}

export function WorkflowsPage({ route }: { route: Route }) {
  return <RunPage title="Workflows" route={route} again="Start another" start={<Start />} run={(name) => <RunView name={name} />} />;
}
