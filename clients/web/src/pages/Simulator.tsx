import type { Route } from "../router.js";

export function SimulatorPage(_props: { route: Route }) {
  return <p>Simulator: coming in this change.</p>;
}
