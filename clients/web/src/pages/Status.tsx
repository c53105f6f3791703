import type { Route } from "../router.js";

export function StatusPage(_props: { route: Route }) {
  return <p>Status: coming in this change.</p>;
}
