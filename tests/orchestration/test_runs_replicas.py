"""Two orchestration replicas over one mesh: a run owned by one is watched, fed turns and
cancelled through the other (turns merge into the owner's checkpoint; the cancel travels over
Redis to the owner, which stops Triton)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from runs_test_support import (
    assert_consecutive,
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


async def test_a_turn_sent_through_another_replica_joins_the_owners_run(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    orch_client: callisto.Client,
    replica_stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    agent = await create_agent(orch_client, "replica")
    call = orch_stub.Converse(metadata=slow(10))
    await call.write(pb.ConverseRequest(start=start(agent, "owned here")))
    opening = await wait_for_kind(call, "turn_started")
    conversation = opening[0].conversation
    submitted = await replica_stub.SubmitInput(
        pb.SubmitInputRequest(name=conversation, turn=pb.HumanTurn(text="sent over there"))
    )
    events = opening + await read_until(call)
    call.cancel()
    assert kind(events[-1]) == "done" and events[-1].done.turns == 2
    assert submitted.event_id in [e.event_id for e in events]
    # The other replica serves the same log.
    assert await watch(replica_stub, conversation, opening[0].event_id - 1) == events
    assert_consecutive(events, opening[0].event_id - 1)


async def test_a_cancel_through_another_replica_reaches_the_owner_and_stops_triton(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    orch_client: callisto.Client,
    replica_stub: pb_grpc.OrchestrationServiceAsyncStub,
    toy_events_path: Path,
) -> None:
    agent = await create_agent(orch_client, "replica-cancel")
    tag = f"replica-cancel-{uuid.uuid4().hex[:8]}"
    call = orch_stub.Converse(metadata=slow(100, tag))
    await call.write(pb.ConverseRequest(start=start(agent, "cancel me from afar")))
    seen = await wait_for_kind(call, "token")
    cancelled = await asyncio.wait_for(
        replica_stub.CancelConversation(
            pb.CancelConversationRequest(name=seen[0].conversation, reason="from the replica")
        ),
        5,
    )
    rest = await read_until(call)
    call.cancel()
    assert kind(rest[-1]) == "done" and rest[-1].done.reason == "cancelled"
    assert rest[-1].event_id == cancelled.event_id
    assert (await toy_event(toy_events_path, tag, "cancelled"))["cancel_seen_at"] is not None
