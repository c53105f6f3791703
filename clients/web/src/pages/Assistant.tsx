import type { Route } from "../router.js";

export function AssistantPage(_props: { route: Route }) {
  return <p>Assistant: coming in this change.</p>;
}
