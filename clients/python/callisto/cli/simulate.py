"""`callisto simulate "SCENARIO"`: suggested agents talk the scenario through, live.

SuggestAgents proposes the agents (a table: name, company, role, tools, and which path made
them), then a simulation run streams every turn: the speaker with their company, the tokens as
they come, tool calls and sources briefly, the turn's sentiment coloured. With `--participate`
you take part for the buying company: when it is your turn you are asked at the prompt (an
empty line, `/end` or end of input ends the conversation). Ctrl-C cancels the run (a second
Ctrl-C stops watching). At the end: the reason it ended, the conversation's metrics, and the
commands that replay and export it. Without a terminal (stdin piped) it works the same, your
turns read line by line from stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from callisto._facade import Metadata
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.cli.connection import (
    ApiKeyOption,
    HomeOption,
    TargetOption,
    TenantOption,
    api_key_for,
    connection_flags,
    target_for,
)
from callisto.cli.conversation_view import ConversationView
from callisto.client import Client
from callisto.errors import CallistoError
from callisto.orchestration import ConverseSession, simulation_start

# The start of the run, from the suggestion and the human taking part (if any).
StartBuilder = Callable[
    [pb.SuggestAgentsResponse, pb.HumanParticipant | None], pb.StartConversation
]
MODEL_EXTRAS_HEADER = "x-callisto-model-extras"
END_WORDS = frozenset({"", "/end"})
DEFAULT_HUMAN = pb.HumanParticipant(id="user", display_name="You", role="buyer")


def new_console() -> Console:
    """Output without rich's guesswork: no highlighting of numbers, no wrapping of streamed
    text (the terminal wraps it)."""
    return Console(highlight=False)


async def load_participants(client: Client, conversation: str, view: ConversationView) -> None:
    """Names the view's speakers from the stored conversation (its participants)."""
    try:
        stored = await client.persistence.get_conversation(conversation)
    except CallistoError as error:
        view.note(f"(speakers shown by id: {error.message})")
        return
    view.know({p.id: p for p in stored.participants})


def agents_table(suggestion: pb.SuggestAgentsResponse, human: pb.HumanParticipant | None) -> Table:
    """The suggested agents (and the human), with where the suggestion came from."""
    attempts = f", {suggestion.attempts} model calls" if suggestion.attempts else ""
    table = Table(
        title=f"{len(suggestion.agents)} agents suggested (source: {suggestion.source}{attempts})",
        title_justify="left",
    )
    for column in ("#", "name", "company", "role", "tools"):
        table.add_column(column)
    for number, agent in enumerate(suggestion.agents, 1):
        table.add_row(
            str(number),
            agent.display_name,
            agent.company,
            agent.role,
            ", ".join(agent.tools) or "—",
        )
    if human is not None:
        table.add_row("you", human.display_name or human.id, human.company, human.role, "—")
    return table


class LineReader:
    """Reads one line of the user's at a time without blocking the event loop: the reading
    thread is a daemon, so a prompt nobody answers never holds the command open at exit. The
    terminal stays in its own line mode (no readline library), so leaving mid-prompt (Ctrl-C)
    leaves the terminal as it was."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: asyncio.Future[str | None] | None = None

    def read(self, prompt: str) -> asyncio.Future[str | None]:
        """The next line (None at end of input); a read still waiting is reused."""
        if self._pending is not None and not self._pending.done():
            return self._pending
        future: asyncio.Future[str | None] = self._loop.create_future()
        if sys.stdin.isatty():
            sys.stdout.write(prompt)
            sys.stdout.flush()

        def deliver(line: str | None) -> None:
            if not future.done():
                future.set_result(line)

        def work() -> None:
            line: str | None
            try:
                raw = sys.stdin.readline()
                line = raw.rstrip("\r\n") if raw else None
            except (OSError, ValueError):
                line = None
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(deliver, line)

        threading.Thread(target=work, name="callisto-input", daemon=True).start()
        self._pending = future
        return future


class SimulationDriver:
    """Watches one simulation session: shows its events, asks the human for their turns, and
    turns Ctrl-C into a cancel of the run."""

    def __init__(
        self,
        client: Client,
        session: ConverseSession,
        view: ConversationView,
        human: pb.HumanParticipant | None,
    ) -> None:
        self.client = client
        self.session = session
        self.view = view
        self.human = human
        self._asking: asyncio.Task[None] | None = None
        self._cancels: list[asyncio.Task[None]] = []
        self._interrupts = 0
        self._reader: LineReader | None = None
        # The human's turn being waited for, until it is taken or goes by.
        self._waiting_turn: int | None = None

    async def watch(self) -> bool:
        """Shows the run to its end; True when it did not fail."""
        loop = asyncio.get_running_loop()
        self._reader = LineReader(loop)
        watcher = asyncio.current_task()
        loop.add_signal_handler(signal.SIGINT, self._interrupted, watcher)
        try:
            known = False
            async for event in self.session.events():
                if not known and event.conversation:
                    await load_participants(self.client, event.conversation, self.view)
                    known = True
                self._skipped(event)
                self.view.show(event)
                if event.WhichOneof("kind") == "awaiting_input":
                    self._ask(event.awaiting_input)
        finally:
            self.view.close()
            loop.remove_signal_handler(signal.SIGINT)
            if self._asking is not None and not self._asking.done():
                self._asking.cancel()
            for task in self._cancels:
                try:
                    await task
                except CallistoError as error:  # the run ended meanwhile: nothing to cancel
                    self.view.note(f"(could not cancel: {error.message})")
        return self.session.error is None

    def _interrupted(self, watcher: asyncio.Task[object] | None) -> None:
        self._interrupts += 1
        if self._interrupts == 1:
            self.view.note("(cancelling… Ctrl-C again stops watching)")
            self._cancels.append(
                asyncio.get_running_loop().create_task(
                    self.session.cancel("interrupted from callisto simulate")
                )
            )
        elif watcher is not None:
            watcher.cancel()

    def _skipped(self, event: pb.ConversationEvent) -> None:
        """Says so when the human's turn went by unanswered (its wait timed out)."""
        kind = event.WhichOneof("kind")
        if kind == "turn_ended" and event.turn_ended.human:
            self._waiting_turn = None
        elif kind == "turn_started" and not event.turn_started.human and self._waiting_turn:
            self.view.note(
                f"  (turn {self._waiting_turn} went by without your answer; what you type now "
                "answers your next turn)"
            )
            self._waiting_turn = None

    def _ask(self, waiting: pb.AwaitingInput) -> None:
        if self.human is None or self.view.as_json:
            return
        if waiting.speaker and waiting.speaker != (self.human.id or "user"):
            return
        self._waiting_turn = waiting.turn or None
        if self._asking is not None and not self._asking.done():
            return
        self._asking = asyncio.get_running_loop().create_task(self._take_turn(waiting))

    async def _take_turn(self, waiting: pb.AwaitingInput) -> None:
        assert self._reader is not None
        if sys.stdin.isatty():
            self.view.note("  (type your turn; an empty line or /end ends the conversation)")
        line = await self._reader.read("you> ")
        text = (line or "").strip()
        ends = line is None or text.lower() in END_WORDS
        author = self.human.id if self.human is not None and self.human.id else "user"
        try:
            await self.client.orchestration.submit_turn(
                self.session.conversation,
                "" if ends else text,
                author=author,
                end_conversation=ends,
            )
        except CallistoError as error:
            self.view.note(f"(your turn {waiting.turn} was not taken: {error.message})")


def _extras(raw: str | None) -> Metadata | None:
    """The run's `x-callisto-model-extras` metadata from `--model-extras`."""
    if raw is None:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--model-extras")
    return ((MODEL_EXTRAS_HEADER, json.dumps(parsed)),)


def _human(suggestion: pb.SuggestAgentsResponse, participate: bool) -> pb.HumanParticipant | None:
    if not participate:
        return None
    if suggestion.HasField("human") and (suggestion.human.id or suggestion.human.display_name):
        return suggestion.human
    return DEFAULT_HUMAN


def program() -> str:
    """How to call this command line again: `callisto` when that is what PATH finds, else the
    path it was started as."""
    started = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    found = shutil.which("callisto")
    if started is None or not started.exists() or started.suffix == ".py":
        return "callisto"
    if found is not None and Path(found).resolve() == started:
        return "callisto"
    return shlex.quote(str(started))


def next_steps(conversation: str, flags: str) -> list[str]:
    """The commands that replay and export `conversation` (copy and paste)."""
    short = conversation.removeprefix("conversations/")
    tail = f" {flags}" if flags else ""
    callisto = program()
    return [
        f"{callisto} conversations replay {conversation}{tail}",
        f"{callisto} conversations export {conversation} --format pdf -o {short}.pdf{tail}",
        f"{callisto} conversations export {conversation} --format md -o {short}.md{tail}",
    ]


async def simulate_once(
    client: Client,
    view: ConversationView,
    scenario: str,
    *,
    agent_count: int,
    participate: bool,
    start_options: StartBuilder,
    metadata: Metadata | None = None,
) -> tuple[str, bool, pb.Done | None]:
    """Suggests the agents, shows them, runs the simulation and shows it; returns the
    conversation, whether it did not fail, and its `done`."""
    console = view.console
    with console.status("Suggesting agents…") if console.is_terminal else contextlib.nullcontext():
        suggestion = await client.orchestration.suggest_agents(
            scenario, agent_count=agent_count, participate=participate
        )
    human = _human(suggestion, participate)
    if not view.as_json:
        console.print(agents_table(suggestion, human))
    start = start_options(suggestion, human)
    async with client.orchestration.converse(start=start, metadata=metadata) as session:
        driver = SimulationDriver(client, session, view, human)
        try:
            ok = await driver.watch()
        except asyncio.CancelledError:
            view.note("(stopped watching; the run may still be ending)")
            return session.conversation, False, None
    done = session.done
    if done is not None and not done.HasField("metrics") and session.conversation:
        # A service that sends no metrics on `done`: ask for them.
        with contextlib.suppress(CallistoError):
            view.metrics(await client.orchestration.get_conversation_metrics(session.conversation))
    return session.conversation, ok, done


def simulate(
    scenario: Annotated[str, typer.Argument(help="The scenario, in plain words.")],
    agents: Annotated[
        int, typer.Option("--agents", "-n", min=2, max=5, help="How many agents (2-5).")
    ] = 3,
    participate: Annotated[
        bool, typer.Option("--participate", help="Take part yourself, for the buying company.")
    ] = False,
    max_turns: Annotated[
        int,
        typer.Option(
            "--max-turns",
            min=0,
            max=200,
            help="Stop after this many turns (up to 200); 0: default.",
        ),
    ] = 0,
    stop: Annotated[
        list[str] | None,
        typer.Option("--stop", help="Stop when a turn says this keyword (repeatable)."),
    ] = None,
    min_sentiment: Annotated[
        float | None,
        typer.Option("--min-sentiment", min=-1.0, max=1.0, help="Stop below this sentiment."),
    ] = None,
    max_sentiment: Annotated[
        float | None,
        typer.Option("--max-sentiment", min=-1.0, max=1.0, help="Stop above this sentiment."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0.001, help="Stop after this many seconds of wall time."),
    ] = None,
    human_timeout: Annotated[
        float | None,
        typer.Option(
            "--human-timeout", min=0.001, help="Seconds to wait for your turn (then skipped)."
        ),
    ] = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=0, help="Token budget of the run; 0: no limit.")
    ] = 0,
    turn_tokens: Annotated[
        int,
        typer.Option(
            "--turn-tokens",
            min=0,
            max=1024,
            help="Most tokens of one agent turn (16-1024); 0: default.",
        ),
    ] = 0,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Model the agents speak with (models/<name>)."),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Tag the conversation (repeatable).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print every event as one JSON line.")
    ] = False,
    model_extras: Annotated[
        str | None,
        typer.Option(
            "--model-extras",
            hidden=True,
            help="Extra model request fields (a JSON object), where the service forwards them.",
        ),
    ] = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    home: HomeOption = None,
    target: TargetOption = None,
) -> None:
    """Suggest agents for a scenario and watch them talk it through, turn by turn."""
    if not scenario.strip():
        raise typer.BadParameter("describe the scenario", param_hint="SCENARIO")
    if 0 < turn_tokens < 16:
        raise typer.BadParameter("must be 0 (the default) or 16-1024", param_hint="--turn-tokens")
    if participate and as_json:
        # JSON lines are for programs: nobody would be asked for the human's turns.
        raise typer.BadParameter("cannot be used with --json", param_hint="--participate")
    key = api_key_for(api_key, tenant, home)
    address = target_for(target, home)
    console = new_console()
    view = ConversationView(console, as_json=as_json)

    def start_options(
        suggestion: pb.SuggestAgentsResponse, human: pb.HumanParticipant | None
    ) -> pb.StartConversation:
        inline = list(suggestion.agents)
        if model:
            for agent in inline:
                agent.model = model if model.startswith("models/") else f"models/{model}"
        return simulation_start(
            scenario,
            inline_agents=inline,
            max_turn_tokens=turn_tokens,
            human=human,
            human_turn_timeout_s=human_timeout,
            max_turns=max_turns,
            stop_keywords=stop or (),
            min_sentiment=min_sentiment,
            max_sentiment=max_sentiment,
            timeout_s=timeout,
            max_total_tokens=max_tokens,
            tags=tag or (),
        )

    extras = _extras(model_extras)

    async def main() -> tuple[str, bool, pb.Done | None]:
        async with await Client.connect(address, api_key=key) as client:
            return await simulate_once(
                client,
                view,
                scenario,
                agent_count=agents,
                participate=participate,
                start_options=start_options,
                metadata=extras,
            )

    try:
        conversation, ok, done = asyncio.run(main())
    except KeyboardInterrupt:
        console.print("(interrupted)", style="dim")
        raise typer.Exit(130) from None
    except CallistoError as error:
        typer.echo(f"simulate failed: {error}", err=True)
        raise typer.Exit(2) from error
    if conversation and not as_json:
        console.print()
        console.print(
            Text(f"Conversation {conversation}. Replay or export it:", style="bold"),
            soft_wrap=True,
        )
        for command in next_steps(conversation, connection_flags(target, tenant, home, api_key)):
            console.print(f"  {command}", markup=False, soft_wrap=True)
    if not ok:
        raise typer.Exit(1)
    if done is None:
        raise typer.Exit(130)
