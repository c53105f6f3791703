import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { AssistantPage } from "./pages/Assistant.js";
import { ApprovalsPage } from "./pages/Approvals.js";
import { ConversationsPage } from "./pages/Conversations.js";
import { SimulatorPage } from "./pages/Simulator.js";
import { StatusPage } from "./pages/Status.js";
import { WorkflowsPage } from "./pages/Workflows.js";
import { href, PAGES, type Route, useRoute } from "./router.js";
import { SessionGate, useSession } from "./session.js";
import "./styles.css";

function Page({ route }: { route: Route }) {
  switch (route.page) {
    case "simulator":
      return <SimulatorPage route={route} />;
    case "conversations":
      return <ConversationsPage route={route} />;
    case "assistant":
      return <AssistantPage route={route} />;
    case "workflows":
      return <WorkflowsPage route={route} />;
    case "approvals":
      return <ApprovalsPage route={route} />;
    case "status":
      return <StatusPage route={route} />;
  }
}

function Console() {
  const route = useRoute();
  const { tenant, signOut } = useSession();
  const title = PAGES.find((p) => p.path === route.page)?.title ?? "";
  return (
    <div className="layout">
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="top">
        <span className="brand">Callisto</span>
        <nav aria-label="Pages">
          <ul>
            {PAGES.map((p) => (
              <li key={p.path}>
                <a href={href(p.path)} aria-current={p.path === route.page ? "page" : undefined}>
                  {p.title}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <span className="tenant" title="Your tenant (from the API key)">
          tenant <strong data-testid="tenant">{tenant}</strong>
        </span>
        <button type="button" className="link" onClick={signOut}>
          Sign out
        </button>
      </header>
      <main id="main" tabIndex={-1} aria-label={title}>
        <Page route={route} />
      </main>
    </div>
  );
}

const root = document.getElementById("root");
if (root === null) throw new Error("no #root element");
createRoot(root).render(
  <StrictMode>
    <SessionGate>
      <Console />
    </SessionGate>
  </StrictMode>,
);
