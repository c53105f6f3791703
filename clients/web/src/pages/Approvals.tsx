import { type CallistoClient, orchestration } from "@callisto/client";
import { useCallback, useState } from "react";
import { ConfirmDialog } from "../approvals/ConfirmDialog.js";
import { errorText } from "../components/download.js";
import { TableHead } from "../components/TableHead.js";
import { usePolling } from "../components/use-polling.js";
import { href, type Route } from "../router.js";
import { useSession } from "../session.js";
import { consequence } from "../workflows/plan.js";

const REFRESH_MS = 5_000;
const DECIDED_STORAGE = "callisto.decidedApprovals";
const Decision = orchestration.ApprovalDecision;

const STATES: Record<number, string> = {
  [orchestration.ApprovalState.PENDING]: "pending",
  [orchestration.ApprovalState.APPROVED]: "approved",
  [orchestration.ApprovalState.REJECTED]: "rejected",
  [orchestration.ApprovalState.MODIFIED]: "modified",
  [orchestration.ApprovalState.CANCELLED]: "cancelled",
};

function when(time: { seconds: bigint } | undefined): string {
  return time ? new Date(Number(time.seconds) * 1000).toLocaleString() : "";
}

/** The plan a workflow run follows: its first `workflow_plan` event. */
async function planOf(client: CallistoClient, conversation: string): Promise<orchestration.WorkflowPlan | undefined> {
  const stream = client.streamConversation(conversation);
  try {
    for await (const event of stream) {
      if (event.kind.case === "workflowPlan") return event.kind.value.plan;
    }
  } finally {
    stream.close();
  }
  return undefined;
}

function decidedNames(): string[] {
  return JSON.parse(sessionStorage.getItem(DECIDED_STORAGE) ?? "[]") as string[];
}

interface Pending {
  approval: orchestration.StepApproval;
  decision: orchestration.ApprovalDecision;
  text: string;
}

function ApprovalCard({ approval, highlighted, onDecide }: { approval: orchestration.StepApproval; highlighted: boolean; onDecide: (p: Pending) => void }) {
  const [modified, setModified] = useState(approval.proposedOutput);
  const [modifying, setModifying] = useState(false);
  const id = approval.name.split("/")[1] ?? "";
  return (
    <article className={`panel${highlighted ? " awaiting" : ""}`} aria-labelledby={`approval-${id}`} data-testid="approval">
      <h2 id={`approval-${id}`}>
        Step {approval.stepId} <span className="muted">by {approval.agent}</span>
      </h2>
      <p className="muted">
        <a href={href("workflows", [approval.conversation.split("/")[1] ?? ""])}>{approval.conversation}</a> · asked {when(approval.createTime)}
        {approval.deadline && <> · decide by {when(approval.deadline)}</>}
        {approval.escalated && <> · escalated to {approval.escalateTo}</>}
      </p>
      <h3>Proposed output</h3>
      <p style={{ whiteSpace: "pre-wrap" }} data-testid="proposed-output">
        {approval.proposedOutput}
      </p>
      {approval.reasoning && (
        <>
          <h3>Reasoning</h3>
          <p style={{ whiteSpace: "pre-wrap" }}>{approval.reasoning}</p>
        </>
      )}
      {modifying && (
        <>
          <label htmlFor={`modified-${id}`}>Modified output</label>
          <textarea id={`modified-${id}`} value={modified} onChange={(e) => setModified(e.target.value)} />
        </>
      )}
      <div className="row">
        <button type="button" onClick={() => onDecide({ approval, decision: Decision.APPROVE, text: "" })}>
          Approve
        </button>
        {modifying ? (
          <button type="button" className="secondary" disabled={!modified.trim()} onClick={() => onDecide({ approval, decision: Decision.MODIFY, text: modified })}>
            Approve modified
          </button>
        ) : (
          <button type="button" className="secondary" onClick={() => setModifying(true)}>
            Modify
          </button>
        )}
        <button type="button" className="danger" onClick={() => onDecide({ approval, decision: Decision.REJECT, text: "" })}>
          Reject
        </button>
      </div>
    </article>
  );
}

function History({ approval }: { approval: orchestration.StepApproval }) {
  return (
    <article className="panel" data-testid="decided">
      <h3>
        {approval.stepId} · {STATES[approval.state] ?? "unknown"}{" "}
        <a className="muted" href={href("workflows", [approval.conversation.split("/")[1] ?? ""])}>
          {approval.conversation}
        </a>
      </h3>
      <div className="table-scroll">
        <table aria-label={`Audit history of ${approval.name}`}>
          <TableHead columns={["When", "Action", "Who", "Comment"]} />
          <tbody>
            {approval.history.map((entry, i) => (
              <tr key={i} data-testid="audit-entry">
                <td>{when(entry.time)}</td>
                <td>{entry.action}</td>
                <td>{entry.actor}</td>
                <td>{entry.comment || (entry.modifiedOutput ? `→ ${entry.modifiedOutput}` : "")}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </article>
  );
}

export function ApprovalsPage({ route }: { route: Route }) {
  const { client, tenant } = useSession();
  const [pending, setPending] = useState<orchestration.StepApproval[]>([]);
  const [decided, setDecided] = useState<orchestration.StepApproval[]>([]);
  const [asking, setAsking] = useState<Pending & { plan?: orchestration.WorkflowPlan }>();
  const [comment, setComment] = useState("");
  const [problem, setProblem] = useState("");
  const [notice, setNotice] = useState("");
  const highlighted = route.query.get("approval") ?? "";

  const refresh = useCallback(async () => {
    try {
      setPending((await client.orchestration.listApprovals({ pageSize: 100 })).approvals);
      const names = decidedNames();
      const found = await Promise.all(names.map((name) => client.orchestration.getApproval({ name }).then((a) => a.approval).catch(() => undefined)));
      setDecided(found.filter((a): a is orchestration.StepApproval => a !== undefined).reverse());
    } catch (caught) {
      setProblem(errorText(caught));
    }
  }, [client]);

  usePolling(refresh, REFRESH_MS);

  async function ask(choice: Pending) {
    setProblem("");
    const plan = await planOf(client, choice.approval.conversation).catch(() => undefined);
    setAsking({ ...choice, plan });
  }

  async function decide() {
    if (!asking) return;
    const { approval, decision, text } = asking;
    setAsking(undefined);
    try {
      await client.answerApproval(approval.name, decision, { comment, modifiedOutput: text, reviewer: `console (${tenant})` });
      sessionStorage.setItem(DECIDED_STORAGE, JSON.stringify([...decidedNames().filter((n) => n !== approval.name), approval.name]));
      setNotice(`${approval.stepId}: ${decision === Decision.REJECT ? "rejected" : decision === Decision.MODIFY ? "approved with your changes" : "approved"}.`);
      setComment("");
      await refresh();
    } catch (caught) {
      setProblem(errorText(caught));
    }
  }

  const verb = asking?.decision === Decision.REJECT ? "Reject" : asking?.decision === Decision.MODIFY ? "Approve with changes" : "Approve";
  return (
    <>
      <h1>Approvals</h1>
      <p className="muted">Pending approvals of every workflow run in tenant {tenant}, refreshed every {REFRESH_MS / 1000} s.</p>
      {notice && (
        <p className="good" role="status">
          {notice}
        </p>
      )}
      {problem && (
        <p className="error" role="alert">
          {problem}
        </p>
      )}
      {pending.length === 0 && <p data-testid="no-approvals">Nothing waits for a decision.</p>}
      {pending.map((approval) => (
        <ApprovalCard key={approval.name} approval={approval} highlighted={approval.name === highlighted} onDecide={(p) => void ask(p)} />
      ))}
      {asking && (
        <ConfirmDialog
          title={`${verb} ${asking.approval.stepId}?`}
          body={consequence(asking.plan, asking.approval.stepId, asking.decision)}
          confirm={verb}
          onConfirm={() => void decide()}
          onCancel={() => setAsking(undefined)}
        >
          <label htmlFor="decision-comment">Comment (kept in the audit history)</label>
          <input id="decision-comment" value={comment} onChange={(e) => setComment(e.target.value)} style={{ width: "100%" }} />
        </ConfirmDialog>
      )}
      <h2>Decided here</h2>
      {decided.length === 0 ? <p className="muted">No decisions from this tab yet.</p> : decided.map((a) => <History key={a.name} approval={a} />)}
    </>
  );
}
