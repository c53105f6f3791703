import type { Route } from "../router.js";

export function ConversationsPage(_props: { route: Route }) {
  return <p>Conversations: coming in this change.</p>;
}
