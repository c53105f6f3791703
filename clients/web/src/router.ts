import { useEffect, useState } from "react";

/** The console's pages; the hash routes them (`#/simulator`, `#/conversations/abc`), so the gateway
 * serves one index.html and a reload lands on the same page. */
export const PAGES = [
  { path: "simulator", title: "Simulator" },
  { path: "conversations", title: "Conversations" },
  { path: "assistant", title: "Assistant" },
  { path: "workflows", title: "Workflows" },
  { path: "approvals", title: "Approvals" },
  { path: "status", title: "Status" },
] as const;

export type PagePath = (typeof PAGES)[number]["path"];

export interface Route {
  page: PagePath;
  /** What follows the page in the hash, split on `/` (`["abc"]` for `#/conversations/abc`). */
  rest: string[];
  /** Query parameters after `?` in the hash. */
  query: URLSearchParams;
}

export function parseRoute(hash: string): Route {
  const [path = "", search = ""] = hash.replace(/^#\/?/, "").split("?", 2);
  const [first = "", ...rest] = path.split("/").filter(Boolean).map(decodeURIComponent);
  const page = PAGES.find((p) => p.path === first)?.path ?? "simulator";
  return { page, rest, query: new URLSearchParams(search) };
}

/** `#/page/a/b?x=1` for `navigate("page", ["a", "b"], {x: "1"})`. */
export function href(page: PagePath, rest: string[] = [], query: Record<string, string> = {}): string {
  const path = [page, ...rest.map(encodeURIComponent)].join("/");
  const search = new URLSearchParams(query).toString();
  return `#/${path}${search ? `?${search}` : ""}`;
}

/** Replace the current history entry (a run's id joining the URL), so Back still leaves the page. */
export function replaceRoute(page: PagePath, rest: string[] = [], query: Record<string, string> = {}): void {
  history.replaceState(null, "", href(page, rest, query));
  window.dispatchEvent(new HashChangeEvent("hashchange"));
}

export function navigate(page: PagePath, rest: string[] = [], query: Record<string, string> = {}): void {
  window.location.hash = href(page, rest, query);
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(window.location.hash));
  useEffect(() => {
    const changed = () => setRoute(parseRoute(window.location.hash));
    window.addEventListener("hashchange", changed);
    return () => window.removeEventListener("hashchange", changed);
  }, []);
  return route;
}
