import type { Route } from "../router.js";

export function ApprovalsPage(_props: { route: Route }) {
  return <p>Approvals: coming in this change.</p>;
}
