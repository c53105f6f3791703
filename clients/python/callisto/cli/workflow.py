"""`callisto workflow run|watch|answer`: run a workflow plan (or a task the planner plans) and
follow it.

- `run PLAN.yaml` (or `--task TEXT`) starts the run on a Converse stream and shows it: every
  line prefixed by its step id (parallel steps interleave), each state change with its attempt
  and duration, tool calls, and, when a step waits for approval, the approval's id, the proposed
  output, the reasoning, the deadline and the `callisto approvals approve|reject|modify`
  commands that answer it (from any terminal). A question of the planner is shown with the
  `callisto workflow answer` command. It keeps watching until `done`, then prints each step's
  result and the artifacts to download. `--detach` prints the conversation and returns;
  `--json` prints one event per line. Ctrl-C stops watching; the run goes on.
- `watch CONVERSATION` re-attaches (from the run's first event) and shows it the same way.
- `answer CONVERSATION TEXT` answers the planner's question (a SubmitInput turn).
"""

from __future__ import annotations

import asyncio
import shlex
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from google.protobuf import json_format
from google.rpc import status_pb2
from rich.console import Console
from rich.text import Text

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
from callisto.cli.simulate import new_console, program
from callisto.client import Client
from callisto.errors import CallistoError, InvalidArgument
from callisto.orchestration import ConverseSession, workflow_plan, workflow_start
from callisto.persistence import conversation_name

workflow_app = typer.Typer(
    help="Run workflow plans (DAGs of agent steps with approvals) and follow them.",
    no_args_is_help=True,
)

# Plan files are small; a bigger one is a mistake (the service takes at most 64 KiB).
MAX_PLAN_BYTES = 1024 * 1024
STEP_STYLES = ("cyan", "magenta", "blue", "green", "yellow", "bright_red")
STATE_STYLES = {
    "running": "bold",
    "retrying": "yellow",
    "awaiting_approval": "bold yellow",
    "succeeded": "bold green",
    "failed": "bold red",
    "skipped": "dim",
    "cancelled": "dim",
}
OUTPUT_LINES = 8
DECIDED = {
    pb.APPROVAL_DECISION_APPROVE: "approved",
    pb.APPROVAL_DECISION_REJECT: "rejected",
    pb.APPROVAL_DECISION_MODIFY: "modified",
}


class PlanFileError(ValueError):
    """A plan file that cannot be read as a workflow plan."""


def read_plan(path: Path) -> pb.WorkflowPlan:
    """The plan in a YAML (or JSON) file: `steps:` with each step's `id`, `agent`,
    `instruction`, `depends_on`, ... as the WorkflowPlan message names them."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise PlanFileError(f"cannot read {path}: {error.strerror or error}") from None
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanFileError(f"{path} is {len(raw)} bytes; a plan file is at most 1 MiB")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise PlanFileError(f"{path} is not UTF-8 text") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise PlanFileError(f"{path} is not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise PlanFileError(
            f"{path} must hold a mapping with `steps:` (a list of steps), not "
            f"{type(data).__name__ if data is not None else 'nothing'}"
        )
    if "steps" not in data:
        raise PlanFileError(f"{path} has no `steps:` (a list of the plan's steps)")
    try:
        return workflow_plan(data)
    except ValueError as error:
        raise PlanFileError(f"{path}: {error}") from None


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _seconds(duration: Any) -> str:
    return f"{duration.ToTimedelta().total_seconds():.1f} s"


def _when(stamp: Any) -> str:
    """A timestamp in local time, with how far off it is."""
    moment = stamp.ToDatetime(tzinfo=UTC)
    left = (moment - datetime.now(UTC)).total_seconds()
    local = moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    if left >= 0:
        return f"{local} (in {_span(left)})"
    return f"{local} ({_span(-left)} ago)"


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _arguments(arguments: Any) -> str:
    values = json_format.MessageToDict(arguments)
    return ", ".join(
        f"{key}={_clip(yaml.safe_dump(value, default_flow_style=True).strip(), 50)}"
        for key, value in sorted(values.items())
    )


@dataclass
class WorkflowView:
    """Prints a workflow run's events readably (see the module docstring); `flags` are the
    connection options the printed commands carry."""

    console: Console
    conversation: str = ""
    flags: str = ""
    as_json: bool = False
    _styles: dict[str, str] = field(default_factory=dict)
    # Tokens of each step not yet printed (lines are printed whole, so steps interleave by line).
    _pending: dict[str, str] = field(default_factory=dict)
    # Steps whose current answer streamed at least one line.
    _streamed: set[str] = field(default_factory=set)

    def _style(self, step_id: str) -> str:
        if step_id not in self._styles:
            self._styles[step_id] = STEP_STYLES[len(self._styles) % len(STEP_STYLES)]
        return self._styles[step_id]

    def prefix(self, step_id: str) -> Text:
        if not step_id:
            return Text("[run] ", style="bold")
        return Text(f"[{step_id}] ", style=f"bold {self._style(step_id)}")

    def say(self, step_id: str, text: str | Text, style: str = "") -> None:
        line = self.prefix(step_id)
        if isinstance(text, Text):
            line.append_text(text)
        else:
            line.append(text, style=style)
        self.console.print(line, soft_wrap=True)

    def note(self, text: str) -> None:
        if not self.as_json:
            self.console.print(Text(text, style="dim"), soft_wrap=True)

    def command(self, *words: str) -> str:
        """A command line for the user to paste, with the connection options."""
        tail = f" {self.flags}" if self.flags else ""
        return f"{program()} {shlex.join(words)}{tail}"

    def show(self, event: pb.ConversationEvent) -> None:
        if event.conversation:
            self.conversation = event.conversation
        if self.as_json:
            self.console.file.write(json_format.MessageToJson(event, indent=None) + "\n")
            self.console.file.flush()
            return
        kind = event.WhichOneof("kind")
        if kind is None:
            return
        handler = getattr(self, f"_{kind}", None)
        if handler is not None:
            if kind != "token":
                self._flush(event.step_id)
            handler(event.step_id, getattr(event, kind))

    def close(self) -> None:
        for step_id in list(self._pending):
            self._flush(step_id)

    def _flush(self, step_id: str) -> None:
        rest = self._pending.pop(step_id, "")
        if rest.strip():
            self.say(step_id, rest.rstrip())
            self._streamed.add(step_id)

    def _token(self, step_id: str, token: pb.TokenChunk) -> None:
        text = self._pending.get(step_id, "") + token.text
        *lines, rest = text.split("\n")
        for line in lines:
            if line.strip():
                self.say(step_id, line.rstrip())
                self._streamed.add(step_id)
        self._pending[step_id] = rest

    def _workflow_plan(self, _: str, planned: pb.WorkflowPlanned) -> None:
        stages = " → ".join("[" + ", ".join(s.step_ids) + "]" for s in planned.stages)
        source = planned.source or "given"
        tries = f", {planned.attempts} planner attempts" if planned.attempts else ""
        count = len(planned.plan.steps)
        self.say("", f"plan ({source}{tries}): {count} steps, in order {stages}")
        for spec in planned.plan.steps:
            details = [spec.agent or "(planner's choice)"]
            if spec.depends_on:
                details.append("after " + ", ".join(spec.depends_on))
            if spec.tools:
                details.append("tools " + ", ".join(spec.tools))
            if spec.requires_approval:
                details.append("needs approval")
            self.say(spec.id, " · ".join(details), style="dim")

    def _step(self, step_id: str, update: pb.StepUpdate) -> None:
        state = update.state or "?"
        line = Text(state, style=STATE_STYLES.get(state, "bold"))
        details = [f"attempt {update.attempt}"] if update.attempt else []
        if update.HasField("duration") and state != "running":
            details.append(_seconds(update.duration))
        if update.usage.total_tokens:
            details.append(f"{update.usage.total_tokens} tokens")
        if state == "running" and update.agent:
            details.append(update.agent)
        if details:
            line.append(" · " + " · ".join(details), style="dim")
        if update.HasField("retry_delay"):
            line.append(f" · next attempt in {_seconds(update.retry_delay)}", style="yellow")
        if update.error:
            line.append(f" · {_clip(update.error, 300)}", style="red")
        self.say(step_id, line)
        if state == "running":
            self._streamed.discard(step_id)
        elif state == "succeeded" and update.output and step_id not in self._streamed:
            self._output(step_id, update.output)

    def _output(self, step_id: str, output: str, limit: int = OUTPUT_LINES) -> None:
        lines = [line for line in output.splitlines() if line.strip()]
        for line in lines[:limit]:
            self.say(step_id, "  " + _clip(line, 200))
        if len(lines) > limit:
            self.say(step_id, f"  … ({len(lines) - limit} more lines)", style="dim")

    def _tool_call(self, step_id: str, call: pb.ToolCall) -> None:
        line = Text(f"· {call.tool}({_arguments(call.arguments)}) ")
        if call.error:
            line.append(f"failed: {_clip(call.error, 200)}", style="red")
        else:
            line.append(f"→ {_clip(call.result, 160)}", style="green")
        line.append(f" ({call.duration_ms:.0f} ms)", style="dim")
        self.say(step_id, line)

    def _plan(self, step_id: str, plan: pb.Plan) -> None:
        calls = ", ".join(call.tool for call in plan.calls) or "no tool"
        intent = f"{_clip(plan.intent, 100)}; " if plan.intent else ""
        self.say(step_id, f"thinks: {intent}calls {calls}", style="dim")

    def _turn_started(self, step_id: str, started: pb.TurnStarted) -> None:
        if started.restarted:
            self.say(step_id, "(starts over after a take-over)", style="dim")

    def _awaiting_input(self, step_id: str, waiting: pb.AwaitingInput) -> None:
        if not waiting.approval_id:
            self._question(waiting)
            return
        approval = waiting.approval_id
        head = Text("⏸ waits for approval ", style="bold yellow")
        head.append(waiting.approval or f"approvals/{approval}", style="bold")
        if waiting.escalated:
            head.append(f" (escalated to {waiting.escalate_to or 'the escalation reviewers'})")
        self.say(step_id, head)
        deadline = _when(waiting.deadline) if waiting.HasField("deadline") else "none"
        self.say(step_id, f"  deadline: {deadline}")
        self.say(step_id, "  proposed output:")
        for line in waiting.proposed_output.splitlines() or [""]:
            self.say(step_id, "    " + line)
        if waiting.reasoning:
            self.say(step_id, "  reasoning: " + waiting.reasoning)
        self.say(step_id, "  answer it (from any terminal):", style="bold")
        for words in (
            ("approvals", "approve", approval),
            ("approvals", "reject", approval, "--comment", "why"),
            ("approvals", "modify", approval, "--output", "the corrected output"),
        ):
            self.console.print(f"    {self.command(*words)}", markup=False, soft_wrap=True)

    def _question(self, waiting: pb.AwaitingInput) -> None:
        self.say("", Text(f"? {waiting.prompt or 'the run waits for your input'}", style="bold"))
        if waiting.HasField("deadline"):
            self.say("", f"  answer by {_when(waiting.deadline)}")
        self.say("", "  answer it:", style="bold")
        conversation = self.conversation or "CONVERSATION"
        answer = self.command("workflow", "answer", conversation, "your answer")
        self.console.print(f"    {answer}", markup=False, soft_wrap=True)

    def _approval_decided(self, step_id: str, decided: pb.ApprovalDecided) -> None:
        decision = DECIDED.get(decided.decision, "decided")
        line = Text(f"{decision} ", style="bold")
        line.append(f"({decided.approval}) by {decided.reviewer or 'an unnamed reviewer'}")
        if decided.comment:
            line.append(f": {_clip(decided.comment, 200)}")
        self.say(step_id, line)
        if decided.modified_output:
            self.say(step_id, "  new output: " + _clip(decided.modified_output, 300))

    def _warning(self, step_id: str, warning: pb.Warning) -> None:
        self.say(step_id, f"⚠ {warning.message or warning.code}", style="yellow")

    def _done(self, _: str, done: pb.Done) -> None:
        style = "bold green" if done.reason == "completed" else "bold red"
        line = Text("done: ", style="bold")
        line.append(done.reason or "completed", style=style)
        figures = [f"{done.usage.total_tokens} tokens"]
        if done.cost:
            figures.append(f"cost {done.cost:.4f}")
        line.append(" · " + " · ".join(figures), style="dim")
        if done.detail:
            line.append(f" · {done.detail}")
        self.say("", line)

    def _error(self, _: str, status: Any) -> None:
        self.say("", f"the run failed: {status.message} [code {status.code}]", style="bold red")

    def results(self, done: pb.Done) -> None:
        """Each step's result: state, attempts, time, tokens and its output's first lines."""
        if self.as_json or not done.steps:
            return
        self.console.print()
        self.console.print(Text("Results", style="bold"))
        for result in done.steps:
            line = Text(result.state, style=STATE_STYLES.get(result.state, "bold"))
            details = [f"{result.attempts} attempt" + ("" if result.attempts == 1 else "s")]
            if result.HasField("duration"):
                details.append(_seconds(result.duration))
            if result.usage.total_tokens:
                details.append(f"{result.usage.total_tokens} tokens")
            line.append(" · " + " · ".join(details), style="dim")
            if result.error:
                line.append(f" · {_clip(result.error, 300)}", style="red")
            self.say(result.step_id, line)
            if result.output:
                self._output(result.step_id, result.output, 4)


def _violations(error: CallistoError) -> Iterator[str]:
    for path, description in sorted(error.field_violations.items()):
        yield f"  {path}: {description}"


def _fail(what: str, error: CallistoError) -> typer.Exit:
    if isinstance(error, InvalidArgument) and error.field_violations:
        # The violations say it all (the message repeats them).
        typer.echo(f"{what} failed: the service refused it (invalid argument):", err=True)
        for line in _violations(error):
            typer.echo(line, err=True)
    else:
        typer.echo(f"{what} failed: {error.message or error}", err=True)
    return typer.Exit(2)


async def watch_session(
    session: ConverseSession, view: WorkflowView, *, detach: bool = False
) -> pb.Done | None:
    """Shows the session's events up to `done` (or, detached, until the conversation is
    known); Ctrl-C stops watching. Returns `done` (None when it stopped before)."""
    loop = asyncio.get_running_loop()
    watcher = asyncio.current_task()
    interrupted = False

    def stop_watching() -> None:
        nonlocal interrupted
        interrupted = True
        if watcher is not None:
            watcher.cancel()

    loop.add_signal_handler(signal.SIGINT, stop_watching)
    try:
        async for event in session.events():
            view.show(event)
            if detach and view.conversation:
                break
    except asyncio.CancelledError:
        if not interrupted:
            raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        view.close()
    if interrupted:
        view.note(
            "(stopped watching; the run goes on: "
            + view.command("workflow", "watch", view.conversation or "CONVERSATION")
            + ")"
        )
    return session.done


async def _artifacts(client: Client, conversation: str) -> list[str]:
    try:
        return [a.name async for a in client.orchestration.list_artifacts(conversation)]
    except CallistoError:
        return []


async def follow(
    client: Client,
    view: WorkflowView,
    *,
    start: pb.StartConversation | None = None,
    attach: str | None = None,
    detach: bool = False,
) -> tuple[pb.Done | None, status_pb2.Status | None]:
    """Starts (or attaches to) a run and shows it; returns its `done` and terminal error."""
    if start is not None:
        session = client.orchestration.converse(start=start)
    else:
        session = client.orchestration.converse(attach=attach)
    async with session:
        done = await watch_session(session, view, detach=detach)
        failed = session.error
    if done is not None:
        view.results(done)
        artifacts = await _artifacts(client, view.conversation) if view.conversation else []
        if artifacts and not view.as_json:
            view.console.print()
            view.console.print(Text("Artifacts (download them):", style="bold"))
            for name in artifacts:
                line = view.command("artifacts", "download", name)
                view.console.print(f"  {line}", markup=False, soft_wrap=True)
    return done, failed


def _exit_code(done: pb.Done | None, failed: status_pb2.Status | None) -> int:
    if done is not None:
        return 0 if done.reason == "completed" else 1
    return 1 if failed is not None else 130


def _finish(
    view: WorkflowView, done: pb.Done | None, failed: status_pb2.Status | None, detach: bool
) -> None:
    if view.conversation and not view.as_json:
        view.console.print()
        view.console.print(Text(f"Conversation {view.conversation}", style="bold"), soft_wrap=True)
        watch = view.command("workflow", "watch", view.conversation)
        listing = view.command("approvals", "list", "--conversation", view.conversation)
        view.console.print(f"  watch it:   {watch}", markup=False, soft_wrap=True)
        view.console.print(f"  approvals:  {listing}", markup=False, soft_wrap=True)
    raise typer.Exit(0 if detach else _exit_code(done, failed))


@workflow_app.command("run")
def run(
    plan_file: Annotated[
        Path | None,
        typer.Argument(help="The plan: a YAML (or JSON) file with `steps:`.", show_default=False),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option("--task", help="Instead of a plan file: a task the planner plans."),
    ] = None,
    agent: Annotated[
        list[str] | None,
        typer.Option("--agent", help="With --task: an agent the planner may use (repeatable)."),
    ] = None,
    max_parallel: Annotated[
        int,
        typer.Option("--max-parallel", min=0, max=16, help="Most steps at once (1-16); 0: 4."),
    ] = 0,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=0, help="Token budget of the run; 0: no limit.")
    ] = 0,
    title: Annotated[str, typer.Option("--title", help="Title of the conversation.")] = "",
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Tag the conversation (repeatable).")
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Start it, print the conversation and return.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print every event as one JSON line.")
    ] = False,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    home: HomeOption = None,
    target: TargetOption = None,
) -> None:
    """Run a workflow plan and watch it: steps stream, approvals wait for you."""
    if (plan_file is None) == (task is None):
        raise typer.BadParameter("give a plan file or --task TEXT (one of them)")
    if task is not None and not task.strip():
        raise typer.BadParameter("describe the task", param_hint="--task")
    if agent and task is None:
        raise typer.BadParameter("only with --task", param_hint="--agent")
    plan: pb.WorkflowPlan | None = None
    if plan_file is not None:
        try:
            plan = read_plan(plan_file)
        except PlanFileError as error:
            typer.echo(f"workflow run: {error}", err=True)
            raise typer.Exit(2) from None
    default_title = f"Workflow {plan_file.stem}" if plan_file is not None else "Workflow"
    start = workflow_start(
        task or "",
        plan=plan,
        agents=agent or (),
        max_parallel_steps=max_parallel,
        max_total_tokens=max_tokens,
        title=title or default_title,
        tags=tag or (),
    )
    address, key = target_for(target, home), api_key_for(api_key, tenant, home)
    view = WorkflowView(
        new_console(), flags=connection_flags(target, tenant, home, api_key), as_json=as_json
    )
    if not detach:
        view.note("(Ctrl-C stops watching; the run goes on)")

    async def main() -> tuple[pb.Done | None, status_pb2.Status | None]:
        async with await Client.connect(address, api_key=key) as client:
            return await follow(client, view, start=start, detach=detach)

    try:
        done, failed = asyncio.run(main())
    except CallistoError as error:
        raise _fail("workflow run", error) from error
    if detach and as_json and view.conversation:
        typer.echo(f'{{"conversation": "{view.conversation}"}}')
    _finish(view, done, failed, detach)


@workflow_app.command("watch")
def watch(
    conversation: Annotated[str, typer.Argument(help="conversations/<id> or <id>.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print every event as one JSON line.")
    ] = False,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    home: HomeOption = None,
    target: TargetOption = None,
) -> None:
    """Re-attach to a workflow run and watch it from its first event (Ctrl-C stops watching)."""
    address, key = target_for(target, home), api_key_for(api_key, tenant, home)
    name = conversation_name(conversation)
    view = WorkflowView(
        new_console(),
        conversation=name,
        flags=connection_flags(target, tenant, home, api_key),
        as_json=as_json,
    )

    async def main() -> tuple[pb.Done | None, status_pb2.Status | None]:
        async with await Client.connect(address, api_key=key) as client:
            await client.persistence.get_conversation(name)  # NOT_FOUND before any stream
            return await follow(client, view, attach=name)

    try:
        done, failed = asyncio.run(main())
    except CallistoError as error:
        raise _fail("workflow watch", error) from error
    _finish(view, done, failed, False)


@workflow_app.command("answer")
def answer(
    conversation: Annotated[str, typer.Argument(help="conversations/<id> or <id>.")],
    text: Annotated[str, typer.Argument(help="Your answer to the planner's question.")],
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    home: HomeOption = None,
    target: TargetOption = None,
) -> None:
    """Answer the question a workflow's planner asked (it then plans with your answer)."""
    if not text.strip():
        raise typer.BadParameter("say something", param_hint="TEXT")
    address, key = target_for(target, home), api_key_for(api_key, tenant, home)
    name = conversation_name(conversation)

    async def main() -> int:
        async with await Client.connect(address, api_key=key) as client:
            return await client.orchestration.submit_turn(name, text)

    try:
        event_id = asyncio.run(main())
    except CallistoError as error:
        raise _fail("workflow answer", error) from error
    flags = connection_flags(target, tenant, home, api_key)
    tail = f" {flags}" if flags else ""
    typer.echo(f"answered {name} (event {event_id}); follow it: ", nl=False)
    typer.echo(f"{program()} workflow watch {shlex.quote(name)}{tail}")
