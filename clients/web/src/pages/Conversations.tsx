import { orchestration, persistence } from "@callisto/client";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { useEffect, useState } from "react";
import { errorText, saveBytes } from "../components/download.js";
import { TableHead } from "../components/TableHead.js";
import { href, type Route } from "../router.js";
import { useSession } from "../session.js";
import { RunPanel } from "../sim/RunPanel.js";

const STATUSES: [string, persistence.ConversationStatus][] = [
  ["any", persistence.ConversationStatus.UNSPECIFIED],
  ["active", persistence.ConversationStatus.ACTIVE],
  ["paused", persistence.ConversationStatus.PAUSED],
  ["completed", persistence.ConversationStatus.COMPLETED],
  ["cancelled", persistence.ConversationStatus.CANCELLED],
  ["failed", persistence.ConversationStatus.FAILED],
];

interface Filters {
  company: string;
  tag: string;
  status: number;
  from: string;
  to: string;
}

function statusName(status: persistence.ConversationStatus): string {
  return STATUSES.find(([, value]) => value === status)?.[0] ?? "unknown";
}

function List() {
  const { client } = useSession();
  const [filters, setFilters] = useState<Filters>({ company: "", tag: "", status: 0, from: "", to: "" });
  const [applied, setApplied] = useState(filters);
  const [pages, setPages] = useState<persistence.Conversation[][]>([]);
  const [next, setNext] = useState("");
  const [problem, setProblem] = useState("");
  const [loading, setLoading] = useState(false);

  async function load(token: string, reset: boolean) {
    setLoading(true);
    setProblem("");
    try {
      const answer = await client.persistence.listConversations({
        pageSize: 20,
        pageToken: token,
        participant: applied.company.trim(),
        tags: applied.tag.trim() ? [applied.tag.trim()] : [],
        status: applied.status,
        ...(applied.from ? { createTimeStart: timestampFromDate(new Date(`${applied.from}T00:00:00`)) } : {}),
        ...(applied.to ? { createTimeEnd: timestampFromDate(new Date(`${applied.to}T23:59:59.999`)) } : {}),
      });
      setPages((before) => (reset ? [answer.conversations] : [...before, answer.conversations]));
      setNext(answer.nextPageToken);
    } catch (caught) {
      setProblem(errorText(caught));
    } finally {
      setLoading(false);
    }
  }

  useEffect(() => {
    void load("", true);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [applied]);

  const field = (name: "company" | "tag" | "from" | "to", label: string, type = "text") => (
    <div>
      <label htmlFor={`filter-${name}`}>{label}</label>
      <input id={`filter-${name}`} type={type} value={filters[name]} onChange={(e) => setFilters({ ...filters, [name]: e.target.value })} />
    </div>
  );
  const rows = pages.flat();
  return (
    <>
      <form
        className="panel row"
        aria-label="Filters"
        onSubmit={(event) => {
          event.preventDefault();
          setApplied(filters);
        }}
      >
        {field("company", "Company or participant")}
        {field("tag", "Tag")}
        <div>
          <label htmlFor="filter-status">Outcome</label>
          <select id="filter-status" value={filters.status} onChange={(e) => setFilters({ ...filters, status: Number(e.target.value) })}>
            {STATUSES.map(([label, value]) => (
              <option key={label} value={value}>
                {label}
              </option>
            ))}
          </select>
        </div>
        {field("from", "From", "date")}
        {field("to", "To", "date")}
        <button type="submit">Filter</button>
      </form>
      {problem && (
        <p className="error" role="alert">
          {problem}
        </p>
      )}
      <div className="table-scroll panel">
        <table aria-label="Conversations">
          <TableHead columns={["Title", "Participants", "Outcome", "Messages", "Created"]} />
          <tbody>
            {rows.map((c) => (
              <tr key={c.name} data-testid="conversation-row">
                <td>
                  <a href={href("conversations", [c.name.split("/")[1] ?? ""])}>{c.title || c.name}</a>
                </td>
                <td>{c.participants.map((p) => [p.displayName || p.id, p.company].filter(Boolean).join(", ")).join("; ")}</td>
                <td>{statusName(c.status)}</td>
                <td>{String(c.messageCount)}</td>
                <td>{c.createTime ? new Date(Number(c.createTime.seconds) * 1000).toLocaleString() : ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {rows.length === 0 && !loading && <p className="muted">No conversations match.</p>}
        {loading && (
          <p role="status" className="muted">
            Loading…
          </p>
        )}
        {next && (
          <button type="button" className="secondary" onClick={() => void load(next, false)} disabled={loading}>
            More
          </button>
        )}
      </div>
    </>
  );
}

const EXPORTS: [string, orchestration.ExportFormat, string][] = [
  ["JSON", orchestration.ExportFormat.JSON, "json"],
  ["Markdown", orchestration.ExportFormat.MARKDOWN, "md"],
  ["PDF", orchestration.ExportFormat.PDF, "pdf"],
];

function Replay({ id }: { id: string }) {
  const { client } = useSession();
  const name = `conversations/${id}`;
  const [problem, setProblem] = useState("");
  async function download(format: orchestration.ExportFormat, extension: string) {
    setProblem("");
    try {
      const body = await client.orchestration.downloadConversation({ name, format });
      saveBytes(body.data, body.contentType, `${id}.${extension}`);
    } catch (caught) {
      setProblem(errorText(caught));
    }
  }
  return (
    <>
      <div className="row">
        <a href={href("conversations")}>All conversations</a>
        <span className="muted">Export:</span>
        {EXPORTS.map(([label, format, extension]) => (
          <button key={label} type="button" className="secondary" onClick={() => void download(format, extension)}>
            {label}
          </button>
        ))}
      </div>
      {problem && (
        <p className="error" role="alert">
          {problem}
        </p>
      )}
      <RunPanel name={name} live={false} />
    </>
  );
}

export function ConversationsPage({ route }: { route: Route }) {
  const id = route.rest[0];
  return (
    <>
      <h1>Conversations</h1>
      {id ? <Replay id={id} /> : <List />}
    </>
  );
}
