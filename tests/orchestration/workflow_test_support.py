"""Helpers the workflow tests share: plans over fresh agents, toy_llm extras, running a
workflow to its end and reading its step updates."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from google.protobuf import duration_pb2
from runs_test_support import EXTRAS, new_id

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb


async def agent(client: callisto.Client, prefix: str = "wf", tools: Sequence[str] = ()) -> str:
    created = await client.orchestration.create_agent(
        agent_id=new_id(prefix),
        display_name=f"{prefix} agent",
        system_prompt="Do the step you are given, briefly.",
        role="analyst",
        tools=list(tools),
    )
    return str(created.name)


def step(
    step_id: str,
    agent: str,
    instruction: str = "",
    depends_on: Sequence[str] = (),
    **fields: Any,
) -> pb.WorkflowStep:
    for name in ("timeout", "approval_timeout"):
        if isinstance(fields.get(name), (int, float)):
            duration = duration_pb2.Duration()
            duration.FromTimedelta(timedelta(seconds=fields.pop(name)))
            fields[name] = duration
    return pb.WorkflowStep(
        id=step_id,
        agent=agent,
        instruction=instruction or f"Write the {step_id} part of the review",
        depends_on=list(depends_on),
        **fields,
    )


def plan(*steps: pb.WorkflowStep) -> pb.WorkflowPlan:
    return pb.WorkflowPlan(steps=list(steps))


def extras(**values: Any) -> tuple[tuple[str, str], ...]:
    """toy_llm extras for every generation of the run (`delay_ms`, `fail_when`, `tag`)."""
    return ((EXTRAS, json.dumps(values)),)


async def run(
    client: callisto.Client,
    workflow: pb.WorkflowPlan | None = None,
    *,
    task: str = "",
    metadata: tuple[tuple[str, str], ...] = (),
    **fields: Any,
) -> list[pb.ConversationEvent]:
    """Every event of a workflow run, to its terminal one."""
    start = callisto.orchestration.workflow_start(task, plan=workflow, **fields)
    return [event async for event in client.orchestration.run(start, metadata=metadata)]


def updates(
    events: Sequence[pb.ConversationEvent], step_id: str | None = None
) -> list[pb.StepUpdate]:
    return [
        e.step
        for e in events
        if e.WhichOneof("kind") == "step" and (step_id is None or e.step.step_id == step_id)
    ]


def states(events: Sequence[pb.ConversationEvent], step_id: str) -> list[str]:
    return [update.state for update in updates(events, step_id)]


def first(events: Sequence[pb.ConversationEvent], kind: str) -> pb.ConversationEvent:
    return next(e for e in events if e.WhichOneof("kind") == kind)


def results(done: pb.Done) -> dict[str, pb.StepResult]:
    return {result.step_id: result for result in done.steps}
