"""`callisto chat`: ask an agent, watch it plan, call tools and answer with numbered sources.

With a question it runs one turn and exits; without one it is interactive (each question a new
turn of the same conversation; Ctrl-C cancels the running turn, Ctrl-D or `exit` quits).
`--attach conversations/<id>` re-attaches to a run (from the start, or after `--after N`) and
shows it to its end. Everything goes through the SDK's Converse session, so a dropped stream
re-attaches by itself from the last event it showed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from google.protobuf import json_format

from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.cli.connection import api_key_for, target_for
from callisto.client import Client
from callisto.errors import CallistoError
from callisto.orchestration import ConverseSession, agent_name, assistant_start

QUIT_WORDS = frozenset({"exit", "quit", ":q"})


def _arguments(arguments: Any) -> str:
    """`query="cold chain", entity_type="session"` from a tool call's arguments Struct."""
    values = json_format.MessageToDict(arguments)
    return ", ".join(f"{key}={_short(value)}" for key, value in values.items())


def _short(value: Any, limit: int = 60) -> str:
    return _clip(json.dumps(value, ensure_ascii=False), limit)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _source(citation: common_pb2.Citation, *, quote: bool = False) -> str:
    """`title (page, section) — where`, and the passage's opening words when `quote` (to
    tell apart passages of one document)."""
    where = citation.source_uri or citation.document_id or citation.chunk_id
    details = []
    if citation.page:
        details.append(f"p. {citation.page}")
    if citation.section:
        details.append(citation.section)
    extra = f" ({', '.join(details)})" if details else ""
    title = citation.title or where
    line = f"{title}{extra}" + (f" — {where}" if where and where != title else "")
    if quote and citation.text:
        line += f': "{_clip(" ".join(citation.text.split()), 70)}"'
    return line


class EventPrinter:
    """Shows a run's events as they arrive: tool calls and plans on their own lines, tokens as
    a growing answer, the numbered sources when the turn ends."""

    def __init__(self, out: TextIO, *, as_json: bool = False) -> None:
        self.out = out
        self.as_json = as_json
        self._mid_line = False
        self._human_turn = False
        self._streamed = False
        self._citations: list[common_pb2.Citation] = []
        self._agent_speakers: set[str] = set()

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def line(self, text: str) -> None:
        if self._mid_line:
            self._write("\n")
            self._mid_line = False
        self._write(text + "\n")

    def show(self, event: pb.ConversationEvent) -> None:
        if self.as_json:
            self._write(json_format.MessageToJson(event, indent=None) + "\n")
            return
        kind = event.WhichOneof("kind")
        if kind is None:
            return
        handler = getattr(self, f"_{kind}", None)
        if handler is not None:
            handler(getattr(event, kind))

    def _turn_started(self, started: pb.TurnStarted) -> None:
        self._human_turn = not started.agent
        if started.agent:
            self._agent_speakers.add(started.speaker)
        self._streamed = False
        self._citations = []
        if started.restarted:
            self.line(f"↻ turn {started.turn} starts over (the run was taken over)")
        elif not self._human_turn:
            self.line(f"{started.speaker or 'assistant'} ({started.agent}):")

    def _plan(self, plan: pb.Plan) -> None:
        calls = ", ".join(f"{c.tool}({_arguments(c.arguments)})" for c in plan.calls)
        source = "" if plan.source in ("", "model") else f" [{plan.source}]"
        self.line(f"  · plan {plan.iteration}{source}: {calls or 'answer without tools'}")

    def _tool_call(self, call: pb.ToolCall) -> None:
        took = f"{call.duration_ms:.0f} ms"
        if call.cached:
            took += ", cached"
        if call.error:
            attempts = f" after {call.attempts} attempts" if call.attempts > 1 else ""
            outcome = f"✗ failed{attempts}: {call.error}"
        else:
            outcome = f"→ {_clip(call.result, 160)}"
        self.line(f"  · {call.tool}({_arguments(call.arguments)}) {outcome} ({took})")

    def _reflection(self, reflection: pb.Reflection) -> None:
        if reflection.sufficient:
            self.line(f"  · round {reflection.iteration}: the evidence suffices")
        else:
            missing = f": {reflection.missing}" if reflection.missing else ""
            self.line(f"  · round {reflection.iteration}: more evidence needed{missing}")

    def _token(self, token: pb.TokenChunk) -> None:
        if not self._mid_line:
            self._write("  ")
        self._write(token.text.replace("\n", "\n  "))
        self._mid_line = True
        self._streamed = True

    def _citation(self, citation: common_pb2.Citation) -> None:
        self._citations.append(citation)

    def _turn_ended(self, ended: pb.TurnEnded) -> None:
        # A human's turn may be logged with no turn_started of its own.
        if self._human_turn or ended.speaker not in self._agent_speakers:
            self.line(f"{ended.speaker or 'you'}: {ended.text}")
            return
        if not self._streamed and ended.text:
            self.line(f"  {ended.text}")
        citations = list(ended.citations) or self._citations
        if citations:
            self.line("")
            self.line("Sources:")
            plain = [_source(c) for c in citations]
            for citation in sorted(citations, key=lambda c: c.marker):
                # Several passages of one document read the same: quote each.
                repeated = plain.count(_source(citation)) > 1
                self.line(f"  [{citation.marker}] {_source(citation, quote=repeated)}")
        self.line("")

    def _awaiting_input(self, waiting: pb.AwaitingInput) -> None:
        subject = f" step {waiting.step_id}" if waiting.step_id else ""
        self.line(f"… waiting for input{subject}: {waiting.prompt}")

    def _step(self, step: pb.StepUpdate) -> None:
        self.line(f"  · step {step.step_id}: {step.state}")

    def _done(self, done: pb.Done) -> None:
        usage = done.usage.total_tokens
        self.line(f"(done: {done.reason}; {done.turns} turns, {usage} tokens)")

    def _error(self, status: Any) -> None:
        self.line(f"(the run failed: {status.message} [code {status.code}])")


async def _watch(session: ConverseSession, printer: EventPrinter) -> bool:
    """Shows the session's events to the end; Ctrl-C asks the service to cancel the run.
    True when the run did not fail."""
    loop = asyncio.get_running_loop()
    cancels: list[asyncio.Task[None]] = []

    def interrupted() -> None:
        if not cancels:
            printer.line("(cancelling…)")
            cancels.append(loop.create_task(session.cancel("interrupted from callisto chat")))

    loop.add_signal_handler(signal.SIGINT, interrupted)
    try:
        async for event in session.events():
            printer.show(event)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        for task in cancels:
            try:
                await task
            except CallistoError as error:  # the run ended meanwhile: nothing to cancel
                printer.line(f"(could not cancel: {error.message})")
    return session.error is None


def _reattach_hint(conversation: str, printer: EventPrinter) -> None:
    if conversation and not printer.as_json:
        printer.line(f"(conversation {conversation}: re-attach with --attach {conversation})")


async def _ask(
    client: Client,
    agent: str,
    question: str,
    conversation: str,
    printer: EventPrinter,
    *,
    max_iterations: int,
    max_total_tokens: int,
) -> tuple[str, bool]:
    start = assistant_start(
        agent,
        question,
        conversation=conversation,
        title=question[:80],
        max_iterations=max_iterations,
        max_total_tokens=max_total_tokens,
    )
    async with client.orchestration.converse(start=start) as session:
        ok = await _watch(session, printer)
    return session.conversation, ok


async def _interactive(
    client: Client,
    agent: str,
    conversation: str,
    printer: EventPrinter,
    **limits: int,
) -> bool:
    ok = True
    printer.line(f"Chatting with {agent}; Ctrl-C cancels an answer, Ctrl-D or `exit` quits.")
    while True:
        try:
            question = (await asyncio.to_thread(input, "you> ")).strip()
        except EOFError:
            printer.line("")
            break
        if question.lower() in QUIT_WORDS:
            break
        if not question:
            continue
        conversation, ok = await _ask(client, agent, question, conversation, printer, **limits)
    _reattach_hint(conversation, printer)
    return ok


def chat(
    question: Annotated[
        str | None, typer.Argument(help="The question; interactive when left out.")
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option("--agent", "-a", help="Agent to ask: agents/<id> or <id>."),
    ] = None,
    attach: Annotated[
        str | None,
        typer.Option("--attach", help="Re-attach to a run: conversations/<id>."),
    ] = None,
    after: Annotated[
        int, typer.Option("--after", help="With --attach: show events after this id.")
    ] = 0,
    conversation: Annotated[
        str | None,
        typer.Option("--conversation", "-c", help="Ask in an existing conversation."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", "--key", envvar="CALLISTO_API_KEY", help="API key."),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", help="Without --api-key: the running mesh's key of a tenant."),
    ] = None,
    home: Annotated[
        Path | None,
        typer.Option("--home", help="Home of the running mesh (env CALLISTO_HOME)."),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", help="gRPC address (gateway or service); default: the mesh."),
    ] = None,
    max_iterations: Annotated[
        int, typer.Option(help="Most plan/execute rounds per turn (1-5); 0: the default.")
    ] = 0,
    max_tokens: Annotated[int, typer.Option(help="Token budget of each run; 0: no limit.")] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print every event as one JSON line.")
    ] = False,
) -> None:
    """Ask an agent: the answer streams, with its tool calls and numbered sources."""
    if attach is None and agent is None:
        raise typer.BadParameter("pass --agent (or --attach a run)", param_hint="--agent")
    if attach is not None and (agent is not None or question is not None):
        raise typer.BadParameter("--attach takes no --agent or question", param_hint="--attach")
    if after < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--after")
    key = api_key_for(api_key, tenant, home)
    address = target_for(target, home)
    printer = EventPrinter(sys.stdout, as_json=as_json)

    async def main() -> bool:
        async with await Client.connect(address, api_key=key) as client:
            if attach is not None:
                session = client.orchestration.converse(attach=attach, after_event_id=after)
                async with session:
                    return await _watch(session, printer)
            assert agent is not None
            name = agent_name(agent)
            limits = {"max_iterations": max_iterations, "max_total_tokens": max_tokens}
            if question is None:
                return await _interactive(client, name, conversation or "", printer, **limits)
            asked, ok = await _ask(client, name, question, conversation or "", printer, **limits)
            _reattach_hint(asked, printer)
            return ok

    try:
        ok = asyncio.run(main())
    except CallistoError as error:
        typer.echo(f"chat failed: {error}", err=True)
        raise typer.Exit(2) from error
    if not ok:
        raise typer.Exit(1)
