"""Cancelling runs and running out of budget: CancelConversation, a `cancel` on Converse and
the client's own cancel of RunConversation end the run with `done(cancelled)` and stop the
generation inside Triton; a finished run cannot be cancelled; a run whose token budget runs
out ends with `done(budget)` without exceeding it."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from runs_test_support import (
    create_agent,
    kind,
    read_until,
    slow,
    start,
    toy_event,
    wait_for_kind,
    watch,
)

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def agent(orch_client: callisto.Client) -> str:
    return await create_agent(orch_client, "cancel")


def _tag() -> str:
    return f"run-cancel-{uuid.uuid4().hex[:8]}"


async def test_cancel_conversation_ends_the_run_with_done_cancelled_and_stops_triton(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub, agent: str, toy_events_path: Path
) -> None:
    tag = _tag()
    call = orch_stub.Converse(metadata=slow(100, tag))
    await call.write(pb.ConverseRequest(start=start(agent, "a long slow answer please")))
    seen = await wait_for_kind(call, "token")
    conversation = seen[0].conversation
    began = time.perf_counter()
    cancelled = await orch_stub.CancelConversation(
        pb.CancelConversationRequest(name=conversation, reason="enough")
    )
    elapsed = time.perf_counter() - began
    rest = await read_until(call)
    call.cancel()
    assert kind(rest[-1]) == "done" and rest[-1].done.reason == "cancelled"
    assert rest[-1].event_id == cancelled.event_id
    assert elapsed < 0.5, f"cancel took {elapsed:.3f} s"  # about 20 ms when the CPU is free
    record = await toy_event(toy_events_path, tag, "cancelled")
    assert record["cancel_seen_at"] is not None
    # A finished run cannot be cancelled again.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await orch_stub.CancelConversation(pb.CancelConversationRequest(name=conversation))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_cancel_on_converse_ends_the_run_with_done_cancelled(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub, agent: str, toy_events_path: Path
) -> None:
    tag = _tag()
    call = orch_stub.Converse(metadata=slow(100, tag))
    await call.write(pb.ConverseRequest(start=start(agent, "cancel me from the stream")))
    await wait_for_kind(call, "token")
    await call.write(pb.ConverseRequest(cancel=pb.Cancel(reason="stop")))
    rest = await read_until(call)
    call.cancel()
    assert kind(rest[-1]) == "done" and rest[-1].done.reason == "cancelled"
    assert (await toy_event(toy_events_path, tag, "cancelled"))["cancel_seen_at"] is not None


async def test_cancelling_the_run_conversation_call_cancels_the_run(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub, agent: str, toy_events_path: Path
) -> None:
    tag = _tag()
    call = orch_stub.RunConversation(
        pb.RunConversationRequest(start=start(agent, "cancel the whole call")),
        metadata=slow(100, tag),
    )
    seen = await wait_for_kind(call, "token")
    call.cancel()
    events = await watch(orch_stub, seen[0].conversation, seen[-1].event_id)
    assert kind(events[-1]) == "done" and events[-1].done.reason == "cancelled"
    assert (await toy_event(toy_events_path, tag, "cancelled"))["cancel_seen_at"] is not None


async def test_closing_the_call_of_a_detached_run_leaves_it_running_to_done(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub, agent: str
) -> None:
    detached = start(agent, "keep going without me")
    detached.detached = True
    call = orch_stub.RunConversation(pb.RunConversationRequest(start=detached))
    seen = await wait_for_kind(call, "token")
    call.cancel()
    events = await watch(orch_stub, seen[0].conversation, seen[-1].event_id)
    assert kind(events[-1]) == "done" and events[-1].done.reason != "cancelled", events[-1]


async def test_a_budget_too_small_for_any_call_ends_the_run_before_it_spends(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub, agent: str
) -> None:
    events = await read_until(
        orch_stub.RunConversation(
            pb.RunConversationRequest(
                start=start(agent, "spend nothing", budget=pb.Budget(max_total_tokens=20))
            )
        )
    )
    assert [kind(e) for e in events] == ["turn_started", "done"]
    done = events[-1].done
    assert done.reason == "budget" and done.usage.total_tokens == 0 and done.turns == 0


async def test_a_turn_the_budget_cannot_pay_for_ends_the_run_with_done_budget(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub, agent: str
) -> None:
    # A first run measures what one turn costs; the next has room for one turn, not two
    # (the second costs more: it carries the first as history).
    probe = await read_until(
        orch_stub.RunConversation(pb.RunConversationRequest(start=start(agent, "measure")))
    )
    one_turn = probe[-1].done.usage.total_tokens
    budget = int(one_turn * 1.9)
    call = orch_stub.Converse()
    await call.write(
        pb.ConverseRequest(start=start(agent, "measure", budget=pb.Budget(max_total_tokens=budget)))
    )
    await wait_for_kind(call, "turn_started")
    await call.write(pb.ConverseRequest(turn=pb.HumanTurn(text="measure")))
    events = await read_until(call)
    call.cancel()
    done = events[-1].done
    assert done.reason == "budget" and done.turns == 1
    assert one_turn <= done.usage.total_tokens <= budget
    ended = [e.turn_ended for e in events if kind(e) == "turn_ended"]
    answers = [turn for turn in ended if turn.speaker != "user"]
    assert len(answers) == 1 and answers[0].usage.total_tokens == one_turn
