import { orchestration } from "@callisto/client";
import { useState } from "react";
import { RunPage, startRun } from "../components/RunPage.js";
import { useAction } from "../components/use-action.js";
import type { Route } from "../router.js";
import { useSession } from "../session.js";
import { RunPanel } from "../sim/RunPanel.js";

const SCENARIO = "Tessaline Systems sells edge servers to Marrowick Motor Works";
const SIMULATION = orchestration.ConversationMode.SIMULATION;

interface Draft {
  displayName: string;
  company: string;
  role: string;
  systemPrompt: string;
  tools: string;
}

function draftOf(agent: orchestration.Agent): Draft {
  return {
    displayName: agent.displayName,
    company: agent.company,
    role: agent.role,
    systemPrompt: agent.systemPrompt,
    tools: agent.tools.join(", "),
  };
}

function AgentEditor({ draft, index, onChange }: { draft: Draft; index: number; onChange: (d: Draft) => void }) {
  const id = (field: string) => `agent-${index}-${field}`;
  const field = (name: keyof Draft, label: string) => (
    <div>
      <label htmlFor={id(name)}>{label}</label>
      <input id={id(name)} value={draft[name]} onChange={(e) => onChange({ ...draft, [name]: e.target.value })} />
    </div>
  );
  return (
    <fieldset className="panel" data-testid="suggested-agent">
      <legend>Agent {index + 1}</legend>
      <div className="row">
        {field("displayName", "Name")}
        {field("company", "Company")}
        {field("role", "Role")}
        {field("tools", "Tools (comma-separated)")}
      </div>
      <label htmlFor={id("systemPrompt")}>System prompt</label>
      <textarea id={id("systemPrompt")} value={draft.systemPrompt} onChange={(e) => onChange({ ...draft, systemPrompt: e.target.value })} />
    </fieldset>
  );
}

function Setup() {
  const { client } = useSession();
  const [scenario, setScenario] = useState(SCENARIO);
  const [count, setCount] = useState(2);
  const [participate, setParticipate] = useState(false);
  const [maxTurns, setMaxTurns] = useState(6);
  const [agents, setAgents] = useState<Draft[]>([]);
  const [human, setHuman] = useState<orchestration.HumanParticipant>();
  const { busy, problem, perform } = useAction();

  const suggest = () =>
    perform("Suggesting agents…", async () => {
      const answer = await client.orchestration.suggestAgents(
        { scenario, agentCount: count, participate },
        { timeoutMs: 120_000 },
      );
      setAgents(answer.agents.map(draftOf));
      setHuman(answer.human);
    });

  const run = () =>
    perform("Starting…", () =>
      startRun(client, {
        mode: SIMULATION,
        title: scenario.slice(0, 80),
        prompt: scenario,
        inlineAgents: agents.map((a) => ({
          displayName: a.displayName,
          company: a.company,
          role: a.role,
          systemPrompt: a.systemPrompt,
          tools: a.tools.split(",").map((t) => t.trim()).filter(Boolean),
        })),
        termination: { maxTurns },
        humanInTheLoop: participate && human !== undefined,
        simulation: participate && human ? { human } : {},
        tags: ["console"],
      }, "simulator"),
    );

  return (
    <form
      className="panel"
      onSubmit={(event) => {
        event.preventDefault();
        void suggest();
      }}
    >
      <label htmlFor="scenario">Scenario</label>
      <textarea id="scenario" value={scenario} onChange={(e) => setScenario(e.target.value)} required />
      <div className="row">
        <div>
          <label htmlFor="agent-count">Agents</label>
          <input id="agent-count" type="number" min={2} max={5} value={count} onChange={(e) => setCount(Number(e.target.value))} />
        </div>
        <div>
          <label htmlFor="max-turns">Max turns</label>
          <input id="max-turns" type="number" min={1} max={50} value={maxTurns} onChange={(e) => setMaxTurns(Number(e.target.value))} />
        </div>
        <label className="inline">
          <input type="checkbox" checked={participate} onChange={(e) => setParticipate(e.target.checked)} />I want to participate
        </label>
      </div>
      <div className="row" style={{ marginTop: 12 }}>
        <button type="submit" disabled={busy !== ""}>
          Suggest agents
        </button>
        {busy && (
          <span role="status" className="muted">
            {busy}
          </span>
        )}
      </div>
      {problem && (
        <p className="error" role="alert">
          {problem}
        </p>
      )}
      {agents.length > 0 && (
        <>
          <h2>Suggested agents (edit before running)</h2>
          {agents.map((draft, i) => (
            <AgentEditor key={i} index={i} draft={draft} onChange={(d) => setAgents(agents.map((a, j) => (j === i ? d : a)))} />
          ))}
          {participate && human && (
            <p>
              You take part as <strong>{human.displayName}</strong> ({[human.company, human.role].filter(Boolean).join(" – ")}).
            </p>
          )}
          <button type="button" onClick={() => void run()} disabled={busy !== ""}>
            Run simulation
          </button>
        </>
      )}
    </form>
  );
}

export function SimulatorPage({ route }: { route: Route }) {
  return <RunPage title="Simulator" route={route} again="New simulation" start={<Setup />} run={(name) => <RunPanel name={name} live />} />;
}
