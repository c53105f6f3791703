import type { Route } from "../router.js";

export function WorkflowsPage(_props: { route: Route }) {
  return <p>Workflows: coming in this change.</p>;
}
