// The frame of a page that starts runs: its start form, or (with a conversation id in the URL)
// the run it follows, and how a page starts one.
import type { CallistoClient, StartConversation } from "@callisto/client";
import type { ReactNode } from "react";
import { type PagePath, replaceRoute, type Route } from "../router.js";

export function RunPage({
  title,
  route,
  again,
  start,
  run,
}: {
  title: string;
  route: Route;
  again: string;
  start: ReactNode;
  run: (name: string) => ReactNode;
}) {
  const id = route.rest[0];
  return (
    <>
      <h1>{title}</h1>
      {id ? (
        <>
          <p>
            <a href={`#/${route.page}`}>{again}</a>
          </p>
          {run(`conversations/${id}`)}
        </>
      ) : (
        start
      )}
    </>
  );
}

/** Starts a detached run and puts its conversation in `page`'s URL as soon as the first event
 * names it; the page then follows the run by name (and a reload re-attaches). */
export async function startRun(client: CallistoClient, start: StartConversation, page: PagePath): Promise<void> {
  const stream = client.run(start);
  try {
    for await (const event of stream) {
      if (event.conversation) {
        replaceRoute(page, [event.conversation.split("/")[1] ?? ""]);
        return;
      }
    }
  } finally {
    stream.close();
  }
}
