"""Simulations survive their orchestration process: after `kill -9` mid-turn the restarted
process takes the run over from its checkpoint and the log, starts the interrupted turn over
with `turn_started(restarted=true)` and finishes with gap-free turn numbers and no duplicated
message; a run killed while it waits for its human keeps waiting (same turn, same deadline) and
goes on when the human answers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from google.protobuf import duration_pb2
from runs_test_support import assert_consecutive, kind, slow, wait_for_kind, watch
from simulation_test_support import create_agents, ended, metadata_of, simulation, started, stored

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.mesh.processes import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_kill_9_mid_simulation_resumes_without_a_gap_or_a_duplicate(
    orchestration: ServiceProcess,
    persistence: ServiceProcess,
    api_key: str,
    restart_orchestration: Callable[[bool], None],
) -> None:
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
        agents = await create_agents(client, ["Tessa", "Marrow"], prefix="sim-durable")
        stub = client.stub(pb_grpc.OrchestrationServiceStub)
        call = stub.Converse(metadata=slow(60))
        await call.write(
            pb.ConverseRequest(start=simulation(agents, "survive a kill", max_turns=4))
        )
        before = await wait_for_kind(call, "turn_ended")
        before += await wait_for_kind(call, "token")
        call.cancel()
    conversation = before[0].conversation
    restart_orchestration(True)
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
        stub = client.stub(pb_grpc.OrchestrationServiceStub)
        after = await watch(stub, conversation, before[-1].event_id)
        whole = await watch(stub, conversation)
        figures = await stub.GetConversationMetrics(
            pb.GetConversationMetricsRequest(name=conversation)
        )
    assert kind(after[-1]) == "done" and after[-1].done.reason == "max_turns"
    assert after[-1].done.turns == 4
    restarted = started(after)[0]
    assert restarted.turn == 2 and restarted.restarted
    assert [t.turn for t in ended(whole)] == [1, 2, 3, 4]
    assert_consecutive(whole, 0)
    assert whole[: len(before)] == before
    _, messages = await stored(persistence.address, api_key, conversation)
    assert [metadata_of(m)["turn"] for m in messages] == [1, 2, 3, 4]
    ids = [a.removeprefix("agents/") for a in agents]
    assert [m.author for m in messages] == ids * 2
    assert after[-1].done.metrics == figures.metrics
    assert figures.metrics.turns == 4 and figures.metrics.outcome == "max_turns"


async def test_kill_9_while_the_human_is_asked_keeps_waiting_for_the_same_turn(
    orchestration: ServiceProcess,
    api_key: str,
    restart_orchestration: Callable[[bool], None],
) -> None:
    options = pb.SimulationOptions(
        human=pb.HumanParticipant(id="pat"), human_turn_timeout=duration_pb2.Duration(seconds=600)
    )
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
        agents = await create_agents(client, ["Tessa", "Marrow"], prefix="sim-durable")
        stub = client.stub(pb_grpc.OrchestrationServiceStub)
        call = stub.Converse()
        start = simulation(
            agents, "wait for me", max_turns=3, human_in_the_loop=True, options=options
        )
        await call.write(pb.ConverseRequest(start=start))
        before = await wait_for_kind(call, "awaiting_input")
        call.cancel()
    conversation = before[0].conversation
    asked = before[-1].awaiting_input
    restart_orchestration(True)
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
        stub = client.stub(pb_grpc.OrchestrationServiceStub)
        answer = pb.HumanTurn(text="yes, go on", author="pat")
        # The checkpoint says whose turn it is, whether or not the run was taken over yet.
        await stub.SubmitInput(pb.SubmitInputRequest(name=conversation, turn=answer))
        whole = await watch(stub, conversation)
    assert whole[-1].done.reason == "max_turns" and whole[-1].done.turns == 4
    awaited = [e.awaiting_input for e in whole if kind(e) == "awaiting_input"]
    assert awaited == [asked]
    assert [(t.turn, t.human) for t in ended(whole)] == [
        (1, False),
        (2, False),
        (3, True),
        (4, False),
    ]
    assert_consecutive(whole, 0)
