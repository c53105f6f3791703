import { type common, orchestration, persistence } from "@callisto/client";
import { useEffect, useState } from "react";
import { CitationDialog } from "../assistant/CitationDialog.js";
import { errorText } from "../components/download.js";
import { RunPage, startRun } from "../components/RunPage.js";
import { Transcript } from "../components/Transcript.js";
import { useAction } from "../components/use-action.js";
import type { Route } from "../router.js";
import { finished } from "../run-state.js";
import { useSession } from "../session.js";
import { useRun } from "../use-run.js";

const DEFAULT_AGENT = "agents/conference-assistant";
const QUESTION = "Which sessions talk about cold-chain monitoring, and who speaks?";

function Feedback({ message }: { message: string }) {
  const { client } = useSession();
  const [rated, setRated] = useState<persistence.FeedbackRating>();
  const [problem, setProblem] = useState("");
  async function rate(rating: persistence.FeedbackRating) {
    try {
      await client.orchestration.submitFeedback({ name: message, rating });
      setRated(rating);
    } catch (caught) {
      setProblem(errorText(caught));
    }
  }
  return (
    <div className="row" role="group" aria-label="Rate this answer">
      <button type="button" className="secondary" aria-pressed={rated === persistence.FeedbackRating.UP} onClick={() => void rate(persistence.FeedbackRating.UP)}>
        Helpful
      </button>
      <button type="button" className="secondary" aria-pressed={rated === persistence.FeedbackRating.DOWN} onClick={() => void rate(persistence.FeedbackRating.DOWN)}>
        Not helpful
      </button>
      {rated !== undefined && <span className="muted" role="status">Thanks, recorded.</span>}
      {problem && <span className="error">{problem}</span>}
    </div>
  );
}

function Chat({ name }: { name: string }) {
  const { client } = useSession();
  const { view, labels, error, follow } = useRun(name);
  const [citation, setCitation] = useState<common.Citation | null>(null);
  const [question, setQuestion] = useState("");
  const [problem, setProblem] = useState("");
  const over = finished(view);
  const answers = view.turns.filter((t) => !t.human && t.ended && t.message);
  return (
    <>
      <div className="panel" aria-live="polite">
        <Transcript turns={view.turns} labels={labels} onCitation={setCitation} />
        {answers.length > 0 && over && <Feedback key={answers.at(-1)!.message} message={answers.at(-1)!.message!} />}
        <p className="muted" role="status" data-testid="run-status">
          {view.done ? `Done: ${view.done.reason}` : view.error ? `Failed: ${view.error}` : "Answering…"}
        </p>
      </div>
      {(error || problem) && (
        <p className="error" role="alert">
          {problem || error}
        </p>
      )}
      <form
        className="panel"
        onSubmit={(event) => {
          event.preventDefault();
          const text = question.trim();
          if (!text) return;
          setProblem("");
          // A turn on a finished conversation starts its next run with the same agent.
          client
            .submitTurn(name, text)
            .then(() => {
              setQuestion("");
              follow();
            })
            .catch((caught: unknown) => setProblem(errorText(caught)));
        }}
      >
        <label htmlFor="follow-up">Follow-up question</label>
        <textarea id="follow-up" value={question} onChange={(e) => setQuestion(e.target.value)} />
        <button type="submit" disabled={!over || !question.trim()}>
          Ask
        </button>
      </form>
      <CitationDialog citation={citation} onClose={() => setCitation(null)} />
    </>
  );
}

function Ask({ agentFromUrl }: { agentFromUrl: string }) {
  const { client } = useSession();
  const [agents, setAgents] = useState<orchestration.Agent[]>([]);
  const [agent, setAgent] = useState(agentFromUrl);
  const [question, setQuestion] = useState(QUESTION);
  const { busy, problem, setProblem, perform } = useAction();

  useEffect(() => {
    client.orchestration
      .listAgents({ pageSize: 100 })
      .then((answer) => {
        setAgents(answer.agents);
        setAgent((chosen) => chosen || (answer.agents.some((a) => a.name === DEFAULT_AGENT) ? DEFAULT_AGENT : (answer.agents[0]?.name ?? "")));
      })
      .catch((caught: unknown) => setProblem(errorText(caught)));
  }, [client]);

  const ask = () =>
    perform("Asking…", () =>
      startRun(
        client,
        { mode: orchestration.ConversationMode.ASSISTANT, agents: [agent], prompt: question, title: question.slice(0, 80), tags: ["console"] },
        "assistant",
      ),
    );

  return (
    <form
      className="panel"
      onSubmit={(event) => {
        event.preventDefault();
        void ask();
      }}
    >
      <label htmlFor="agent">Agent</label>
      <select id="agent" value={agent} onChange={(e) => setAgent(e.target.value)} required>
        {agents.map((a) => (
          <option key={a.name} value={a.name}>
            {a.displayName} ({a.name})
          </option>
        ))}
      </select>
      <label htmlFor="question">Question</label>
      <textarea id="question" value={question} onChange={(e) => setQuestion(e.target.value)} required />
      <button type="submit" disabled={busy !== "" || !agent}>
        Ask
      </button>
      {problem && (
        <p className="error" role="alert">
          {problem}
        </p>
      )}
    </form>
  );
}

export function AssistantPage({ route }: { route: Route }) {
  return (
    <RunPage
      title="Assistant"
      route={route}
      again="New chat"
      start={<Ask agentFromUrl={route.query.get("agent") ?? ""} />}
      run={(name) => <Chat name={name} />}
    />
  );
}
