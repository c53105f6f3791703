"""The workflow planner on the live mesh (toy_llm picks the answer kind whose name is a word of
the task): a task becomes a validated plan over the tenant's agents that then runs; a task it
cannot plan gets a clarifying question as awaiting_input, answered with SubmitInput; a task no
agent can do ends with done(unsupported) that says what is missing, never a made-up plan."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from workflow_test_support import agent, first, results

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _until_awaiting(
    stream: AsyncIterator[pb.ConversationEvent], seen: list[pb.ConversationEvent]
) -> pb.ConversationEvent | None:
    async for event in stream:
        seen.append(event)
        if event.WhichOneof("kind") == "awaiting_input":
            return event
    return None


async def test_a_task_is_planned_over_the_given_agents_and_run(
    orch_client: callisto.Client,
) -> None:
    analyst = await agent(orch_client, "plan-a")
    start = callisto.orchestration.workflow_start(
        "Compare the two supplier offers", agents=[analyst]
    )
    events = [e async for e in orch_client.orchestration.run(start)]
    done = events[-1].done
    assert done.reason == "completed", events[-1]
    planned = first(events, "workflow_plan").workflow_plan
    assert planned.source == "planner" and planned.attempts == 1
    assert [s.agent for s in planned.plan.steps] == [analyst]
    assert planned.plan.steps[0].instruction.startswith("Compare the two supplier offers")
    assert [r.state for r in done.steps] == ["succeeded"]
    assert results(done)[planned.plan.steps[0].id].agent.startswith(f"{analyst}@")


async def test_an_unclear_task_asks_for_clarification_and_plans_with_the_answer(
    orch_client: callisto.Client,
) -> None:
    analyst = await agent(orch_client, "plan-q")
    orchestration = orch_client.orchestration
    start = callisto.orchestration.workflow_start("Please clarify the review", agents=[analyst])
    stream = orchestration.run(start)
    seen: list[pb.ConversationEvent] = []
    asked = await _until_awaiting(stream, seen)
    assert asked is not None and not asked.awaiting_input.approval_id
    assert asked.awaiting_input.prompt and asked.awaiting_input.HasField("deadline")
    assert not [e for e in seen if e.WhichOneof("kind") == "workflow_plan"]
    # An approval answer is not what it waits for.
    with pytest.raises(callisto.errors.NotFound):
        await orchestration.submit_approval(
            asked.conversation,
            pb.Approval(approval_id="ap-" + "1" * 24, decision=pb.APPROVAL_DECISION_APPROVE),
        )
    event_id = await orchestration.submit_turn(asked.conversation, "Make a plan for price only")
    # The same answer again is the same turn; another one is refused.
    assert await orchestration.submit_turn(asked.conversation, "Make a plan for price only") == (
        event_id
    )
    async for event in stream:
        seen.append(event)
    done = seen[-1].done
    assert done.reason == "completed", seen[-1]
    planned = first(seen, "workflow_plan").workflow_plan
    assert planned.attempts == 2 and planned.source == "planner"
    with pytest.raises(callisto.errors.FailedPrecondition):
        await orchestration.submit_turn(asked.conversation, "too late")


async def test_a_task_that_stays_unclear_ends_unsupported_after_two_questions(
    orch_client: callisto.Client,
) -> None:
    analyst = await agent(orch_client, "plan-qq")
    orchestration = orch_client.orchestration
    stream = orchestration.run(
        callisto.orchestration.workflow_start("Just clarify things", agents=[analyst])
    )
    seen: list[pb.ConversationEvent] = []
    for answer in ("it is about suppliers", "the usual ones"):
        asked = await _until_awaiting(stream, seen)
        assert asked is not None
        await orchestration.submit_turn(asked.conversation, answer)
    async for event in stream:
        seen.append(event)
    done = seen[-1].done
    assert done.reason == "unsupported", seen[-1]
    assert "unclear" in done.detail and not done.steps


async def test_a_task_no_agent_can_do_ends_with_what_is_missing(
    orch_client: callisto.Client,
) -> None:
    analyst = await agent(orch_client, "plan-no")
    start = callisto.orchestration.workflow_start(
        "Wire the payment: unsupported by anyone here", agents=[analyst]
    )
    events = [e async for e in orch_client.orchestration.run(start)]
    done = events[-1].done
    assert done.reason == "unsupported", events[-1]
    assert done.detail and not done.steps
    assert not [e for e in events if e.WhichOneof("kind") in ("workflow_plan", "step")]


async def test_a_task_needs_agents_that_exist(orch_client: callisto.Client) -> None:
    start = callisto.orchestration.workflow_start("Plan it", agents=["agents/nobody-here"])
    with pytest.raises(callisto.errors.InvalidArgument) as refused:
        [e async for e in orch_client.orchestration.run(start)]
    assert "start.agents[0]" in refused.value.field_violations
    with pytest.raises(callisto.errors.InvalidArgument) as refused:
        [e async for e in orch_client.orchestration.run(callisto.orchestration.workflow_start())]
    assert "start.prompt" in refused.value.field_violations
