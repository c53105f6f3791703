"""`callisto approvals list|show|approve|reject|modify`: the people's side of workflow steps
that wait for approval.

- `list [--conversation C]` prints the tenant's pending approvals, newest first: the id (what
  the other commands take), step, conversation, when asked, the deadline, and the proposed
  output's start; `--json` one object per approval.
- `show ID` prints one approval, pending or decided: the proposed output whole, the agent's
  reasoning, the output the run went on with, and the audit history (who did what, when).
- `approve ID`, `reject ID` and `modify ID --output TEXT | --output-file FILE` answer it
  (`--comment`, `--reviewer`: kept in the audit history; the reviewer defaults to the local
  user). The run goes on at once; answering an approval already answered or expired fails.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import json_format
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
from callisto.orchestration import approval_name
from callisto.persistence import conversation_name

approvals_app = typer.Typer(
    help="List, inspect and answer the approvals workflow steps wait for.",
    no_args_is_help=True,
)

CommentOption = Annotated[
    str, typer.Option("--comment", "-m", help="Why; kept in the audit history.")
]
ReviewerOption = Annotated[
    str | None,
    typer.Option("--reviewer", help="Who decides (audit history); default: your user name."),
]
MAX_OUTPUT_BYTES = 1024 * 1024


def _state(approval: pb.StepApproval) -> str:
    return pb.ApprovalState.Name(approval.state).removeprefix("APPROVAL_STATE_").lower()


def _when(stamp: Any) -> str:
    return str(stamp.ToDatetime().isoformat(sep=" ", timespec="seconds")) + " UTC"


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _row(approval: pb.StepApproval) -> dict[str, Any]:
    row: dict[str, Any] = json_format.MessageToDict(approval, preserving_proto_field_name=True)
    row["state"] = _state(approval)
    return row


def _fail(what: str, error: CallistoError) -> typer.Exit:
    if isinstance(error, InvalidArgument) and error.field_violations:
        # The violations say it all (the message repeats them).
        typer.echo(f"{what} failed: the service refused it (invalid argument):", err=True)
        for path, description in sorted(error.field_violations.items()):
            typer.echo(f"  {path}: {description}", err=True)
    else:
        typer.echo(f"{what} failed: {error.message or error}", err=True)
    return typer.Exit(2)


def _reviewer(reviewer: str | None) -> str:
    if reviewer is not None:
        return reviewer
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment
        return ""


def _connect(
    api_key: str | None, tenant: str | None, home: Path | None, target: str | None
) -> tuple[str, str]:
    return target_for(target, home), api_key_for(api_key, tenant, home)


def _bare(name: str) -> str:
    return name.removeprefix("approvals/")


@approvals_app.command("list")
def list_approvals(
    conversation: Annotated[
        str | None,
        typer.Option("--conversation", "-c", help="Only this run's: conversations/<id>."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per approval.")] = False,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    home: HomeOption = None,
    target: TargetOption = None,
) -> None:
    """List the pending approvals, newest first."""
    address, key = _connect(api_key, tenant, home, target)
    narrowed = conversation_name(conversation) if conversation else ""

    async def main() -> list[pb.StepApproval]:
        async with await Client.connect(address, api_key=key) as client:
            listing = client.orchestration.list_approvals(conversation=narrowed)
            return [approval async for approval in listing]

    try:
        found = asyncio.run(main())
    except CallistoError as error:
        raise _fail("list", error) from error
    if as_json:
        for approval in found:
            typer.echo(json.dumps(_row(approval), ensure_ascii=False))
        return
    console = new_console()
    if not found:
        console.print("No pending approvals.")
        return
    count = f"{len(found)} pending approval" + ("" if len(found) == 1 else "s")
    console.print(Text(count, style="bold"))
    for approval in found:
        head = Text(_bare(approval.name), style="bold")
        head.append(f"  step {approval.step_id}  ")
        head.append(approval.conversation, style="cyan")
        head.append(f"  asked {_when(approval.create_time)}", style="dim")
        if approval.HasField("deadline"):
            head.append(f"  deadline {_when(approval.deadline)}", style="yellow")
        if approval.escalated:
            head.append(f"  escalated to {approval.escalate_to}", style="bold yellow")
        console.print(head, soft_wrap=True)
        console.print(Text("  " + _clip(approval.proposed_output, 160)), soft_wrap=True)
    flags = connection_flags(target, tenant, home, api_key)
    tail = f" {flags}" if flags else ""
    console.print(
        f"(answer one: {program()} approvals approve|reject|modify ID{tail})",
        markup=False,
        style="dim",
        soft_wrap=True,
    )


def _print_approval(console: Console, approval: pb.StepApproval) -> None:
    head = Text(approval.name, style="bold")
    head.append(f"  {_state(approval)}", style="cyan")
    console.print(head, soft_wrap=True)
    facts = [
        ("conversation", approval.conversation),
        ("step", approval.step_id),
        ("agent", approval.agent),
        ("asked", _when(approval.create_time)),
        ("deadline", _when(approval.deadline) if approval.HasField("deadline") else "none"),
    ]
    if approval.HasField("deadline") or approval.escalated:
        action = pb.ApprovalTimeoutAction.Name(approval.timeout_action)
        facts.append(("on expiry", action.removeprefix("APPROVAL_TIMEOUT_ACTION_").lower()))
    if approval.escalated:
        facts.append(("escalated to", approval.escalate_to))
    for label, value in facts:
        console.print(Text(f"  {label:<13}", style="dim") + Text(value), soft_wrap=True)
    console.print(Text("proposed output:", style="bold"))
    console.print(Text("  " + approval.proposed_output.replace("\n", "\n  ")), soft_wrap=True)
    if approval.reasoning:
        console.print(Text("reasoning:", style="bold"))
        console.print(Text("  " + approval.reasoning), soft_wrap=True)
    if approval.final_output and approval.final_output != approval.proposed_output:
        console.print(Text("output the run went on with:", style="bold"))
        console.print(Text("  " + approval.final_output.replace("\n", "\n  ")), soft_wrap=True)
    console.print(Text("history:", style="bold"))
    for entry in approval.history:
        line = Text(f"  {_when(entry.time)}  ", style="dim")
        line.append(entry.action, style="bold")
        line.append(f" by {entry.actor or 'system'}")
        if entry.comment:
            line.append(f": {entry.comment}")
        console.print(line, soft_wrap=True)
        if entry.modified_output:
            console.print(Text("    new output: " + _clip(entry.modified_output, 300)))


@approvals_app.command("show")
def show(
    approval: Annotated[str, typer.Argument(help="approvals/<id> or <id>.")],
    as_json: Annotated[bool, typer.Option("--json", help="The approval as JSON.")] = False,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    home: HomeOption = None,
    target: TargetOption = None,
) -> None:
    """Show an approval (pending or decided) with its audit history."""
    address, key = _connect(api_key, tenant, home, target)

    async def main() -> pb.StepApproval:
        async with await Client.connect(address, api_key=key) as client:
            return await client.orchestration.get_approval(approval_name(approval))

    try:
        found = asyncio.run(main())
    except CallistoError as error:
        raise _fail("show", error) from error
    if as_json:
        typer.echo(json.dumps(_row(found), ensure_ascii=False, indent=2))
        return
    _print_approval(new_console(), found)


def _answer(
    what: str,
    approval: str,
    decision: pb.ApprovalDecision.ValueType,
    *,
    comment: str,
    reviewer: str | None,
    modified_output: str = "",
    api_key: str | None,
    tenant: str | None,
    home: Path | None,
    target: str | None,
) -> None:
    address, key = _connect(api_key, tenant, home, target)
    name = approval_name(approval)
    who = _reviewer(reviewer)

    async def main() -> tuple[int, pb.StepApproval]:
        async with await Client.connect(address, api_key=key) as client:
            event_id = await client.orchestration.answer_approval(
                name, decision, modified_output=modified_output, comment=comment, reviewer=who
            )
            return event_id, await client.orchestration.get_approval(name)

    try:
        event_id, decided = asyncio.run(main())
    except CallistoError as error:
        raise _fail(what, error) from error
    flags = connection_flags(target, tenant, home, api_key)
    tail = f" {flags}" if flags else ""
    typer.echo(
        f"{_state(decided)} {decided.name} (step {decided.step_id} of {decided.conversation}, "
        f"event {event_id}); the run goes on:"
    )
    typer.echo(f"  {program()} workflow watch {decided.conversation}{tail}")


@approvals_app.command("approve")
def approve(
    approval: Annotated[str, typer.Argument(help="approvals/<id> or <id>.")],
    comment: CommentOption = "",
    reviewer: ReviewerOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    home: HomeOption = None,
    target: TargetOption = None,
) -> None:
    """Accept the step's output as proposed; the run goes on."""
    _answer(
        "approve",
        approval,
        pb.APPROVAL_DECISION_APPROVE,
        comment=comment,
        reviewer=reviewer,
        api_key=api_key,
        tenant=tenant,
        home=home,
        target=target,
    )


@approvals_app.command("reject")
def reject(
    approval: Annotated[str, typer.Argument(help="approvals/<id> or <id>.")],
    comment: CommentOption = "",
    reviewer: ReviewerOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    home: HomeOption = None,
    target: TargetOption = None,
) -> None:
    """Reject the step's output: the step fails and the run follows its on_failure."""
    _answer(
        "reject",
        approval,
        pb.APPROVAL_DECISION_REJECT,
        comment=comment,
        reviewer=reviewer,
        api_key=api_key,
        tenant=tenant,
        home=home,
        target=target,
    )


@approvals_app.command("modify")
def modify(
    approval: Annotated[str, typer.Argument(help="approvals/<id> or <id>.")],
    output: Annotated[
        str | None, typer.Option("--output", help="The output that replaces the step's.")
    ] = None,
    output_file: Annotated[
        Path | None,
        typer.Option("--output-file", help="Read the new output from a file ('-': stdin)."),
    ] = None,
    comment: CommentOption = "",
    reviewer: ReviewerOption = None,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    home: HomeOption = None,
    target: TargetOption = None,
) -> None:
    """Replace the step's output with yours; its dependents see yours."""
    if (output is None) == (output_file is None):
        raise typer.BadParameter("give the new output: --output TEXT or --output-file FILE")
    if output_file is not None:
        try:
            if str(output_file) == "-":
                output = sys.stdin.read(MAX_OUTPUT_BYTES + 1)
            else:
                output = output_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise typer.BadParameter(
                f"cannot read {output_file}: {error}", param_hint="--output-file"
            ) from None
    assert output is not None
    if not output.strip():
        raise typer.BadParameter("the new output is empty", param_hint="--output")
    _answer(
        "modify",
        approval,
        pb.APPROVAL_DECISION_MODIFY,
        comment=comment,
        reviewer=reviewer,
        modified_output=output,
        api_key=api_key,
        tenant=tenant,
        home=home,
        target=target,
    )
