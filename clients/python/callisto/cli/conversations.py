"""`callisto conversations list|replay|export`: find stored conversations, watch one again, save
one as a document.

- `list` filters by company (a participant's company or id), creation date range, tags,
  outcome (the tag `outcome:<reason>` a finished simulation carries) and `--simulations` (the
  tag `simulation`), newest first.
- `replay CONV` streams the conversation's events from the start (StreamConversation) and shows
  them as `callisto simulate` showed them live.
- `export CONV --format md|pdf|json [-o FILE]` writes what DownloadConversation renders.

Without CONV, `replay` and `export` take the tenant's newest simulation.
"""

from __future__ import annotations

import asyncio
import enum
import json
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf import json_format, timestamp_pb2
from rich.text import Text

from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2
from callisto.cli.connection import (
    ApiKeyOption,
    HomeOption,
    TargetOption,
    TenantOption,
    api_key_for,
    target_for,
)
from callisto.cli.conversation_view import ConversationView
from callisto.cli.simulate import new_console
from callisto.client import Client
from callisto.errors import CallistoError
from callisto.persistence import conversation_name

conversations_app = typer.Typer(
    help="Find, replay and export stored conversations (simulations among them).",
    no_args_is_help=True,
)

SIMULATION_TAG = "simulation"
OUTCOME_TAG = "outcome:"


class ExportChoice(enum.StrEnum):
    """The formats `export` writes."""

    md = "md"
    pdf = "pdf"
    json = "json"


EXPORT_FORMATS = {
    ExportChoice.md: pb.EXPORT_FORMAT_MARKDOWN,
    ExportChoice.pdf: pb.EXPORT_FORMAT_PDF,
    ExportChoice.json: pb.EXPORT_FORMAT_JSON,
}


def parse_when(value: str, option: str, *, end: bool = False) -> datetime:
    """An ISO date or date-time (UTC unless it says otherwise); a bare date as `--until` means
    the end of that day."""
    text = value.strip()
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return start + timedelta(days=1) if end else start
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date (2026-05-12) or a date and time (2026-05-12T09:30)",
            param_hint=option,
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def list_request(
    *,
    company: str | None,
    since: str | None,
    until: str | None,
    tags: list[str],
    outcome: str | None,
    simulations: bool,
    page_size: int,
) -> persistence_pb2.ListConversationsRequest:
    """The persistence ListConversations request these filters make."""
    wanted = list(dict.fromkeys(tags))
    if simulations and SIMULATION_TAG not in wanted:
        wanted.append(SIMULATION_TAG)
    if outcome:
        wanted.append(f"{OUTCOME_TAG}{outcome}")
    request = persistence_pb2.ListConversationsRequest(
        page_size=page_size, tags=wanted, participant=company or ""
    )
    if since:
        request.create_time_start.CopyFrom(_timestamp(parse_when(since, "--since")))
    if until:
        request.create_time_end.CopyFrom(_timestamp(parse_when(until, "--until", end=True)))
    if (
        since
        and until
        and request.create_time_end.ToDatetime() <= (request.create_time_start.ToDatetime())
    ):
        raise typer.BadParameter("must come after --since", param_hint="--until")
    return request


def _metadata(conversation: persistence_pb2.Conversation) -> dict[str, object]:
    return json_format.MessageToDict(conversation.metadata)


def outcome_of(conversation: persistence_pb2.Conversation) -> str:
    """Why the conversation ended: its recorded outcome, else its `outcome:` tag, else ""."""
    recorded = _metadata(conversation).get("outcome")
    if isinstance(recorded, str) and recorded:
        return recorded
    for tag in conversation.tags:
        if tag.startswith(OUTCOME_TAG):
            return tag.removeprefix(OUTCOME_TAG)
    return ""


def _status(conversation: persistence_pb2.Conversation) -> str:
    name = persistence_pb2.ConversationStatus.Name(conversation.status)
    return name.removeprefix("CONVERSATION_STATUS_").lower()


def _row(conversation: persistence_pb2.Conversation) -> dict[str, object]:
    companies = list(dict.fromkeys(p.company for p in conversation.participants if p.company))
    return {
        "conversation": conversation.name,
        "created": conversation.create_time.ToDatetime(UTC).isoformat(timespec="seconds"),
        "title": conversation.title,
        "companies": companies,
        "messages": conversation.message_count,
        "status": _status(conversation),
        "outcome": outcome_of(conversation),
        "tags": list(conversation.tags),
    }


def _connect(
    api_key: str | None, tenant: str | None, home: Path | None, target: str | None
) -> tuple[str, str]:
    return target_for(target, home), api_key_for(api_key, tenant, home)


async def resolve(client: Client, conversation: str | None) -> str:
    """`conversations/{id}` of `conversation`, or of the tenant's newest simulation."""
    if conversation:
        return conversation_name(conversation)
    newest = client.persistence.list_conversations(page_size=1, tags=[SIMULATION_TAG])
    async for found in newest:
        return found.name
    raise typer.BadParameter(
        "this tenant has no simulation yet: run `callisto simulate` first, or name one",
        param_hint="CONVERSATION",
    )


def _fail(what: str, error: CallistoError) -> typer.Exit:
    typer.echo(f"{what} failed: {error}", err=True)
    return typer.Exit(2)


@conversations_app.command("list")
def list_conversations(
    company: Annotated[
        str | None,
        typer.Option("--company", help="Only with a participant of this company (or id)."),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Created at or after: 2026-05-12[T09:30].")
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="Created before (a bare date: up to that day's end)."),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Only carrying this tag (repeatable).")
    ] = None,
    outcome: Annotated[
        str | None,
        typer.Option("--outcome", help="Only ended so: max_turns, keyword, sentiment, ..."),
    ] = None,
    simulations: Annotated[bool, typer.Option("--simulations", help="Only simulations.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Show at most.")] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per conversation.")
    ] = False,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    home: HomeOption = None,
    target: TargetOption = None,
) -> None:
    """List stored conversations, newest first, filtered."""
    request = list_request(
        company=company,
        since=since,
        until=until,
        tags=tag or [],
        outcome=outcome,
        simulations=simulations,
        page_size=min(limit, 100),
    )
    address, key = _connect(api_key, tenant, home, target)

    async def main() -> list[persistence_pb2.Conversation]:
        found: list[persistence_pb2.Conversation] = []
        async with await Client.connect(address, api_key=key) as client:
            async for conversation in client.persistence.list_conversations(request=request):
                found.append(conversation)
                if len(found) >= limit:
                    break
        return found

    try:
        found = asyncio.run(main())
    except CallistoError as error:
        raise _fail("list", error) from error
    rows = [_row(c) for c in found]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, ensure_ascii=False))
        return
    console = new_console()
    if not rows:
        console.print("No conversations match.")
        return
    # One block per conversation, whatever the width: the id, time and outcome on one line
    # (never cut: they are what the other commands take), the prose below, folding.
    count = f"{len(rows)} conversation" + ("" if len(rows) == 1 else "s")
    console.print(Text(count, style="bold"))
    for row in rows:
        companies = row["companies"]
        tags = row["tags"]
        assert isinstance(companies, list) and isinstance(tags, list)
        created = str(row["created"]).replace("T", " ").replace("+00:00", "")[:16]
        head = Text(str(row["conversation"]).removeprefix("conversations/"), style="bold")
        head.append(f"  {created}  ")
        head.append(str(row["outcome"] or row["status"]), style="cyan")
        head.append(f"  {row['messages']} messages", style="dim")
        console.print(head, soft_wrap=True)
        # The outcome and `simulation` tags say what the line above already says.
        shown = [t for t in tags if t != SIMULATION_TAG and not t.startswith(OUTCOME_TAG)]
        about = [
            str(row["title"]),
            ", ".join(companies),
            "tags: " + ", ".join(shown) if shown else "",
        ]
        console.print(Text("  " + " · ".join(a for a in about if a)), markup=False)


@conversations_app.command("replay")
def replay(
    conversation: Annotated[
        str | None,
        typer.Argument(help="conversations/<id> or <id>; default: the newest simulation."),
    ] = None,
    after: Annotated[int, typer.Option("--after", min=0, help="Show events after this id.")] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print every event as one JSON line.")
    ] = False,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    home: HomeOption = None,
    target: TargetOption = None,
) -> None:
    """Show a conversation's run again, from its first event, as it was shown live (a later
    run of the same conversation: --after the id of the event before it)."""
    address, key = _connect(api_key, tenant, home, target)
    console = new_console()
    view = ConversationView(console, as_json=as_json)

    async def main() -> bool:
        async with await Client.connect(address, api_key=key) as client:
            name = await resolve(client, conversation)
            stored = await client.persistence.get_conversation(name)
            if stored.last_sequence <= after:
                view.note(f"({name} has no events after {after} to replay)")
                return True
            view.know({p.id: p for p in stored.participants})
            finished = stored.status != persistence_pb2.CONVERSATION_STATUS_ACTIVE
            stream = client.orchestration.stream(name, after)
            try:
                async for event in stream:
                    view.show(event)
                    # A finished conversation's log ends here, terminal event or not.
                    if finished and event.event_id >= stored.last_sequence:
                        break
            finally:
                view.close()
                await stream.aclose()
            if not stream.finished and not finished:
                return True
            return stream.error is None

    try:
        ok = asyncio.run(main())
    except CallistoError as error:
        raise _fail("replay", error) from error
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if not ok:
        raise typer.Exit(1)


@conversations_app.command("export")
def export(
    conversation: Annotated[
        str | None,
        typer.Argument(help="conversations/<id> or <id>; default: the newest simulation."),
    ] = None,
    format: Annotated[
        ExportChoice, typer.Option("--format", "-f", help="md, pdf or json.")
    ] = ExportChoice.md,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write ('-': stdout); default <id>.<format>."),
    ] = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    home: HomeOption = None,
    target: TargetOption = None,
) -> None:
    """Save a conversation as Markdown, PDF or JSON: agents, turns with sentiment, metrics."""
    address, key = _connect(api_key, tenant, home, target)

    async def main() -> tuple[str, bytes]:
        async with await Client.connect(address, api_key=key) as client:
            name = await resolve(client, conversation)
            body = await client.orchestration.download_conversation(
                name, EXPORT_FORMATS[format], timeout=120
            )
        return name, bytes(body.data)

    try:
        name, data = asyncio.run(main())
    except CallistoError as error:
        raise _fail("export", error) from error
    if output is not None and str(output) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = output or Path(f"{name.removeprefix('conversations/')}.{format.value}")
    try:
        path.write_bytes(data)
    except OSError as error:
        typer.echo(f"export failed: cannot write {path}: {error.strerror}", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"wrote {path} ({len(data)} bytes, {format.value})")
