"""Workflow runs on the live mesh (toy_llm): ready steps run in parallel with their events
multiplexed by step id, a step sees its dependencies' outputs, transient failures are retried
with growing waits, a step that fails for good fails the run (or, with on_failure: continue,
skips its dependents while the other branches finish), and a cancel stops every running
step."""

from __future__ import annotations

import pytest
from runs_test_support import new_id
from workflow_test_support import (
    agent,
    extras,
    first,
    plan,
    results,
    run,
    states,
    step,
    updates,
)

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.services.orchestration.workflow_steps import StepInput, prompt

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_ready_steps_run_in_parallel_and_their_events_carry_their_step_ids(
    orch_client: callisto.Client,
) -> None:
    a = await agent(orch_client, "wf-par")
    workflow = plan(
        step("left", a), step("right", a), step("join", a, depends_on=["left", "right"])
    )
    events = await run(orch_client, workflow, metadata=extras(delay_ms=25))
    done = events[-1].done
    assert done.reason == "completed", done
    planned = first(events, "workflow_plan").workflow_plan
    assert [list(s.step_ids) for s in planned.stages] == [["left", "right"], ["join"]]
    assert planned.source == "given"
    # Both entry steps were running before either had finished: they overlapped.
    order = [(u.step_id, u.state) for u in updates(events)]
    started = [order.index(("left", "running")), order.index(("right", "running"))]
    ended = [order.index(("left", "succeeded")), order.index(("right", "succeeded"))]
    assert max(started) < min(ended), order
    assert order.index(("join", "running")) > max(ended)
    # Every token and answer of a step names it.
    for event in events:
        if event.WhichOneof("kind") in ("token", "turn_ended"):
            assert event.step_id in ("left", "right", "join"), event
    assert {e.step_id for e in events if e.WhichOneof("kind") == "token"} == {
        "left",
        "right",
        "join",
    }
    for step_id, result in results(done).items():
        assert result.state == "succeeded" and result.attempts == 1, step_id
        assert result.output and result.usage.total_tokens > 0
        assert result.duration.ToTimedelta().total_seconds() > 0
    assert [u.agent for u in done.agent_usage] == [results(done)["left"].agent]
    assert done.usage.total_tokens == sum(r.usage.total_tokens for r in done.steps)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_step_is_shown_its_instruction_and_the_outputs_it_depends_on() -> None:
    spec = pb.WorkflowStep(id="synth", instruction="Weigh both analyses", depends_on=["a", "b"])
    text = prompt(
        StepInput(
            tenant="t",
            conversation="conversations/c",
            run_id="r",
            step=spec,
            attempt=1,
            agent=pb.Agent(),
            speaker="x",
            inputs=[("a", "price is 12% above budget"), ("b", "terms meet the policy")],
        )
    )
    assert text.startswith("Weigh both analyses")
    assert "[a]\nprice is 12% above budget" in text and "[b]\nterms meet the policy" in text


async def test_a_transient_failure_is_retried_after_growing_waits(
    orch_client: callisto.Client,
) -> None:
    a = await agent(orch_client, "wf-retry")
    workflow = plan(step("flaky", a, "Check the FLAKY supplier feed"))
    tag = new_id("retry")
    events = await run(
        orch_client, workflow, metadata=extras(fail_when="FLAKY", fail_times=2, tag=tag)
    )
    assert events[-1].done.reason == "completed", events[-1]
    flaky = updates(events, "flaky")
    assert [(u.state, u.attempt) for u in flaky] == [
        ("running", 1),
        ("retrying", 1),
        ("running", 2),
        ("retrying", 2),
        ("running", 3),
        ("succeeded", 3),
    ]
    waits = [u.retry_delay.ToTimedelta().total_seconds() for u in flaky if u.state == "retrying"]
    # 0.2 s then 0.4 s (the test mesh's base), each plus up to half of it as jitter.
    assert 0.2 <= waits[0] <= 0.3 and 0.4 <= waits[1] <= 0.6, waits
    assert all("unavailable" in u.error for u in flaky if u.state == "retrying")
    assert results(events[-1].done)["flaky"].attempts == 3


async def test_a_step_failing_for_good_fails_the_run_and_stops_the_rest(
    orch_client: callisto.Client,
) -> None:
    a = await agent(orch_client, "wf-fail")
    workflow = plan(
        step("broken", a, "Read the BROKEN ledger", max_retries=1),
        step("slow", a, "Summarise the contract slowly"),
        step("after", a, depends_on=["broken"]),
    )
    tag = new_id("fail")
    events = await run(
        orch_client,
        workflow,
        metadata=extras(fail_when="BROKEN", fail_times=100, tag=tag, delay_ms=40),
    )
    done = events[-1].done
    assert done.reason == "failed", done
    assert "broken" in done.detail
    by_step = results(done)
    assert by_step["broken"].state == "failed" and by_step["broken"].attempts == 2
    assert "after 2 attempts" in by_step["broken"].error
    assert by_step["after"].state == "cancelled"
    assert by_step["slow"].state in ("cancelled", "succeeded")
    assert states(events, "broken")[-1] == "failed"


async def test_on_failure_continue_skips_dependents_and_other_branches_finish(
    orch_client: callisto.Client,
) -> None:
    a = await agent(orch_client, "wf-cont")
    workflow = plan(
        step(
            "optional",
            a,
            "Fetch the OPTIONAL benchmark",
            max_retries=0,
            on_failure=pb.STEP_FAILURE_POLICY_CONTINUE,
        ),
        step("core", a, "Analyse the core terms"),
        step("uses-optional", a, depends_on=["optional"]),
        step("uses-core", a, depends_on=["core"]),
    )
    events = await run(
        orch_client,
        workflow,
        metadata=extras(fail_when="OPTIONAL", fail_times=100, tag=new_id("cont")),
    )
    done = events[-1].done
    assert done.reason == "completed", done
    by_step = results(done)
    assert by_step["optional"].state == "failed" and by_step["optional"].attempts == 1
    assert by_step["uses-optional"].state == "skipped"
    assert "optional" in by_step["uses-optional"].error
    assert by_step["core"].state == by_step["uses-core"].state == "succeeded"
    assert states(events, "uses-optional") == ["skipped"]


async def test_a_cancel_stops_the_running_steps_and_ends_the_run(
    orch_client: callisto.Client,
) -> None:
    a = await agent(orch_client, "wf-cancel")
    workflow = plan(step("one", a), step("two", a), step("three", a, depends_on=["one"]))
    start = callisto.orchestration.workflow_start(plan=workflow)
    stream = orch_client.orchestration.run(start, metadata=extras(delay_ms=200))
    seen: list[pb.ConversationEvent] = []
    cancelled = 0
    async for event in stream:
        seen.append(event)
        if event.WhichOneof("kind") == "token" and not cancelled:
            cancelled = await orch_client.orchestration.cancel(event.conversation, "stop it")
    done = seen[-1].done
    assert done.reason == "cancelled", seen[-1]
    by_step = results(done)
    assert by_step["one"].state == by_step["two"].state == by_step["three"].state == "cancelled"
    assert set(states(seen, "one")) == {"running", "cancelled"}
    # The cancel answered with the id of the run's `done`.
    assert cancelled == seen[-1].event_id


async def test_a_bad_plan_is_refused_with_one_violation_per_problem(
    orch_client: callisto.Client,
) -> None:
    a = await agent(orch_client, "wf-bad")
    workflow = plan(step("a", a, depends_on=["ghost"]), step("b", a, depends_on=["b"]))
    start = callisto.orchestration.workflow_start(plan=workflow, max_parallel_steps=17)
    with pytest.raises(callisto.errors.InvalidArgument) as refused:
        [event async for event in orch_client.orchestration.run(start)]
    fields = set(refused.value.field_violations)
    assert fields == {"start.workflow.max_parallel_steps"}, refused.value
    start.workflow.max_parallel_steps = 2
    with pytest.raises(callisto.errors.InvalidArgument) as refused:
        [event async for event in orch_client.orchestration.run(start)]
    fields = set(refused.value.field_violations)
    assert {"start.plan.steps[0].depends_on[0]", "start.plan.steps[1].depends_on[0]"} <= fields
