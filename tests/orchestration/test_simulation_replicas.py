"""Two orchestration replicas over one mesh: a simulation owned by one takes its human's turn,
its human's end and a cancel sent through the other (the turn through the log, the end through
the checkpoint, the cancel over Redis)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import duration_pb2
from runs_test_support import assert_consecutive, kind, kinds, read_until, wait_for_kind
from simulation_test_support import create_agents, ended, simulation

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _start(agents: list[str], max_turns: int) -> pb.StartConversation:
    options = pb.SimulationOptions(
        human=pb.HumanParticipant(id="pat"), human_turn_timeout=duration_pb2.Duration(seconds=120)
    )
    return simulation(
        agents, "owned here", max_turns=max_turns, human_in_the_loop=True, options=options
    )


async def _asked(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub, turns: int
) -> tuple[Any, list[pb.ConversationEvent]]:
    agents = await create_agents(orch_client, ["Tessa", "Marrow"], prefix="sim-replica")
    call = orch_stub.Converse()
    await call.write(pb.ConverseRequest(start=_start(agents, turns)))
    return call, await wait_for_kind(call, "awaiting_input")


async def test_a_human_turn_sent_through_another_replica_joins_the_owners_simulation(
    orch_client: callisto.Client,
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    replica_stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    call, asked = await _asked(orch_client, orch_stub, 3)
    conversation = asked[0].conversation
    submitted = await replica_stub.SubmitInput(
        pb.SubmitInputRequest(name=conversation, turn=pb.HumanTurn(text="from the other side"))
    )
    events = asked + await read_until(call)
    assert events[-1].done.reason == "max_turns" and events[-1].done.turns == 4
    human = [t for t in ended(events) if t.human]
    assert [(t.turn, t.text) for t in human] == [(3, "from the other side")]
    assert submitted.event_id in [e.event_id for e in events]
    assert_consecutive(events, 0)


async def test_the_human_ends_the_simulation_through_another_replica(
    orch_client: callisto.Client,
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    replica_stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    call, asked = await _asked(orch_client, orch_stub, 10)
    ending = await replica_stub.SubmitInput(
        pb.SubmitInputRequest(name=asked[0].conversation, turn=pb.HumanTurn(end_conversation=True))
    )
    rest = await read_until(call)
    assert kinds(rest) == ["done"] and rest[0].done.reason == "human_ended"
    assert ending.event_id == rest[0].event_id


async def test_a_cancel_through_another_replica_ends_the_wait(
    orch_client: callisto.Client,
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    replica_stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    call, asked = await _asked(orch_client, orch_stub, 10)
    cancelled = await replica_stub.CancelConversation(
        pb.CancelConversationRequest(name=asked[0].conversation, reason="elsewhere")
    )
    rest = await read_until(call)
    assert kind(rest[-1]) == "done" and rest[-1].done.reason == "cancelled"
    assert cancelled.event_id == rest[-1].event_id
