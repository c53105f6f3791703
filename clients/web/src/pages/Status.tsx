import { generation, health, type orchestration, type persistence } from "@callisto/client";
import { useCallback, useState } from "react";
import { errorText } from "../components/download.js";
import { TableHead } from "../components/TableHead.js";
import { usePolling } from "../components/use-polling.js";
import type { Route } from "../router.js";
import { useSession } from "../session.js";

const SERVICES = [
  ["persistence", "callisto.persistence.v1.PersistenceService"],
  ["generation", "callisto.generation.v1.GenerationService"],
  ["retrieval", "callisto.retrieval.v1.RetrievalService"],
  ["orchestration", "callisto.orchestration.v1.OrchestrationService"],
] as const;
const RECENT = 10;
const REFRESH_MS = 15_000;

interface Usage {
  conversation: persistence.Conversation;
  metrics?: orchestration.ConversationMetrics;
}

interface Snapshot {
  health: Record<string, string>;
  models: generation.Model[];
  usage: Usage[];
  at: Date;
  problems: string[];
}

function servingName(status: health.HealthCheckResponse_ServingStatus): string {
  return health.HealthCheckResponse_ServingStatus[status] ?? "UNKNOWN";
}

export function StatusPage(_props: { route: Route }) {
  const { client } = useSession();
  const [snapshot, setSnapshot] = useState<Snapshot>();
  const [loading, setLoading] = useState(false);

  const refresh = useCallback(async () => {
    setLoading(true);
    const problems: string[] = [];
    const checks = await Promise.all(
      SERVICES.map(async ([short, service]) => {
        try {
          const answer = await client.health.check({ service }, { timeoutMs: 5_000 });
          return [short, servingName(answer.status)] as const;
        } catch (caught) {
          return [short, `unreachable (${errorText(caught)})`] as const;
        }
      }),
    );
    let models: generation.Model[] = [];
    try {
      models = (await client.generation.listModels({})).models;
    } catch (caught) {
      problems.push(`models: ${errorText(caught)}`);
    }
    let usage: Usage[] = [];
    try {
      const recent = await client.persistence.listConversations({ pageSize: RECENT });
      usage = await Promise.all(
        recent.conversations.map(async (conversation) => {
          try {
            const answer = await client.orchestration.getConversationMetrics({ name: conversation.name });
            return { conversation, metrics: answer.metrics };
          } catch {
            return { conversation }; // not a run (a plain stored conversation)
          }
        }),
      );
    } catch (caught) {
      problems.push(`usage: ${errorText(caught)}`);
    }
    setSnapshot({ health: Object.fromEntries(checks), models, usage, at: new Date(), problems });
    setLoading(false);
  }, [client]);

  usePolling(refresh, REFRESH_MS);

  const tokens = snapshot?.usage.reduce((sum, u) => sum + (u.metrics?.usage?.totalTokens ?? 0), 0) ?? 0;
  const cost = snapshot?.usage.reduce((sum, u) => sum + (u.metrics?.cost ?? 0), 0) ?? 0;
  return (
    <>
      <h1>Status</h1>
      <div className="row">
        <button type="button" onClick={() => void refresh()} disabled={loading}>
          Refresh
        </button>
        <span className="muted" role="status">
          {loading ? "Refreshing…" : snapshot ? `Updated ${snapshot.at.toLocaleTimeString()} (every ${REFRESH_MS / 1000} s)` : ""}
        </span>
      </div>
      {snapshot?.problems.map((p) => (
        <p key={p} className="error" role="alert">
          {p}
        </p>
      ))}
      <div className="columns">
        <section className="panel" aria-labelledby="services-title">
          <h2 id="services-title">Services</h2>
          <table>
            <tbody>
              {SERVICES.map(([short, service]) => {
                const state = snapshot?.health[short] ?? "…";
                return (
                  <tr key={short} data-testid="service-health">
                    <th scope="row" title={service}>
                      {short}
                    </th>
                    <td>
                      <span className={`badge ${state === "SERVING" ? "good" : "bad"}`}>{state}</span>
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </section>
        <section className="panel" aria-labelledby="models-title">
          <h2 id="models-title">Models Triton serves</h2>
          <table>
            <TableHead columns={["Model", "Ready", "Streaming"]} />
            <tbody>
              {snapshot?.models.map((m) => (
                <tr key={m.name} data-testid="model">
                  <td>{m.name}</td>
                  <td>{m.ready ? "ready" : "not ready"}</td>
                  <td>{m.streaming ? "yes" : "no"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </section>
      </div>
      <section className="panel" aria-labelledby="usage-title">
        <h2 id="usage-title">Recent usage and cost</h2>
        <p>
          Last {snapshot?.usage.length ?? 0} conversations: <strong data-testid="usage-tokens">{tokens}</strong> tokens,{" "}
          <strong>${cost.toFixed(4)}</strong>
        </p>
        <div className="table-scroll">
          <table>
            <TableHead columns={["Conversation", "Turns", "Tokens", "Cost", "Outcome"]} />
            <tbody>
              {snapshot?.usage.map(({ conversation, metrics }) => (
                <tr key={conversation.name}>
                  <td>{conversation.title || conversation.name}</td>
                  <td>{metrics?.turns ?? "—"}</td>
                  <td>{metrics?.usage?.totalTokens ?? "—"}</td>
                  <td>{metrics ? `$${metrics.cost.toFixed(4)}` : "—"}</td>
                  <td>{metrics?.outcome || "—"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
    </>
  );
}
