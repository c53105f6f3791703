"""The human participant of a simulation: asked every round with `awaiting_input`, answers with
SubmitInput (stored once, marked human, with its sentiment), is refused out of turn, may end
the conversation at any point, and when it does not answer in time the turn is skipped (no
message, no number) or the run ends, as configured."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2
from runs_test_support import kind, kinds, read_until, slow, wait_for_kind
from simulation_test_support import create_agents, ended, metadata_of, simulation, started, stored

import callisto
from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.mesh.processes import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")

HUMAN = pb.HumanParticipant(id="pat", display_name="Pat", role="buyer", company="Marrowick")


def _with_human(
    agents: list[str], *, timeout_s: float = 120, end_on_timeout: bool = False, max_turns: int = 3
) -> pb.StartConversation:
    options = pb.SimulationOptions(
        human=HUMAN,
        human_turn_timeout=duration_pb2.Duration(
            seconds=int(timeout_s), nanos=int((timeout_s % 1) * 1e9)
        ),
        on_human_timeout=pb.HUMAN_TIMEOUT_ACTION_END
        if end_on_timeout
        else pb.HUMAN_TIMEOUT_ACTION_SKIP,
    )
    return simulation(
        agents,
        "servers for the plant",
        max_turns=max_turns,
        human_in_the_loop=True,
        options=options,
    )


async def test_the_human_is_asked_each_round_and_its_turn_is_stored_marked_human(
    orch_client: callisto.Client,
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    persistence: ServiceProcess,
    api_key: str,
) -> None:
    agents = await create_agents(orch_client, ["Tessa", "Marrow"], prefix="sim-human")
    call = orch_stub.Converse()
    await call.write(pb.ConverseRequest(start=_with_human(agents)))
    first = await wait_for_kind(call, "turn_started")
    conversation = first[0].conversation
    # Out of turn: it is the first agent's turn.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await orch_stub.SubmitInput(
            pb.SubmitInputRequest(name=conversation, turn=pb.HumanTurn(text="me first"))
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "turn 1" in (error.value.details() or "")
    asked = await wait_for_kind(call, "awaiting_input")
    awaiting = asked[-1].awaiting_input
    assert (awaiting.speaker, awaiting.turn) == ("pat", 3) and awaiting.HasField("deadline")
    human_start = asked[-2].turn_started
    assert (human_start.speaker, human_start.turn, human_start.human) == ("pat", 3, True)
    turn = pb.HumanTurn(text="I love this, wonderful offer", author="pat")
    answered = await orch_stub.SubmitInput(pb.SubmitInputRequest(name=conversation, turn=turn))
    # A retried submit stores it once; the next one is out of turn.
    again = await orch_stub.SubmitInput(pb.SubmitInputRequest(name=conversation, turn=turn))
    assert again.event_id == answered.event_id
    rest = await read_until(call)
    events = first + asked + rest
    assert events[-1].done.reason == "max_turns" and events[-1].done.turns == 4
    assert [(t.speaker, t.turn, t.human) for t in ended(events)] == [
        (agents[0].removeprefix("agents/"), 1, False),
        (agents[1].removeprefix("agents/"), 2, False),
        ("pat", 3, True),
        (agents[0].removeprefix("agents/"), 4, False),
    ]
    human_turn = ended(events)[2]
    assert human_turn.text == turn.text and human_turn.sentiment.score > 0.3
    assert human_turn.usage.total_tokens == 0
    found, messages = await stored(persistence.address, api_key, conversation)
    assert [p.id for p in found.participants][-1] == "pat"
    assert metadata_of(found)["human"]["id"] == "pat"
    message = messages[2]
    assert message.role == common_pb2.ROLE_USER and message.author == "pat"
    assert metadata_of(message)["human"] is True and metadata_of(message)["turn"] == 3
    assert message.sentiment == human_turn.sentiment
    assert len(messages) == 4


async def test_the_human_ends_the_conversation_with_a_last_line(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agents = await create_agents(orch_client, ["Tessa", "Marrow"], prefix="sim-human")
    call = orch_stub.Converse()
    await call.write(pb.ConverseRequest(start=_with_human(agents, max_turns=10)))
    asked = await wait_for_kind(call, "awaiting_input")
    await call.write(
        pb.ConverseRequest(turn=pb.HumanTurn(text="No thanks, goodbye", end_conversation=True))
    )
    rest = await read_until(call)
    events = asked + rest
    assert events[-1].done.reason == "human_ended" and events[-1].done.turns == 3
    assert ended(events)[-1].human and ended(events)[-1].text == "No thanks, goodbye"


async def test_the_human_ends_the_conversation_during_an_agent_turn(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agents = await create_agents(orch_client, ["Tessa", "Marrow"], prefix="sim-human")
    call = orch_stub.Converse(metadata=slow(200))
    start = _with_human(agents, max_turns=10)
    start.simulation.max_turn_tokens = 64
    await call.write(pb.ConverseRequest(start=start))
    before = await wait_for_kind(call, "token")
    ending = await orch_stub.SubmitInput(
        pb.SubmitInputRequest(name=before[0].conversation, turn=pb.HumanTurn(end_conversation=True))
    )
    after = await read_until(call)
    assert kind(after[-1]) == "done" and after[-1].done.reason == "human_ended"
    assert ending.event_id == after[-1].event_id
    assert set(kinds(after[:-1])) <= {"token"} and after[-1].done.turns == 0


async def test_a_human_timeout_skips_the_turn_without_a_number(
    orch_client: callisto.Client,
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    persistence: ServiceProcess,
    api_key: str,
) -> None:
    agents = await create_agents(orch_client, ["Tessa", "Marrow"], prefix="sim-human")
    call = orch_stub.RunConversation(
        pb.RunConversationRequest(start=_with_human(agents, timeout_s=0.3, max_turns=3))
    )
    events = await read_until(call)
    assert events[-1].done.reason == "max_turns" and events[-1].done.turns == 3
    a, b = (x.removeprefix("agents/") for x in agents)
    assert [(t.speaker, t.turn) for t in started(events)] == [(a, 1), (b, 2), ("pat", 3), (a, 3)]
    assert [t.turn for t in ended(events)] == [1, 2, 3]
    _, messages = await stored(persistence.address, api_key, events[0].conversation)
    assert [m.author for m in messages] == [a, b, a]
    assert [metadata_of(m)["turn"] for m in messages] == [1, 2, 3]


async def test_a_human_timeout_can_end_the_run(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agents = await create_agents(orch_client, ["Tessa", "Marrow"], prefix="sim-human")
    start = _with_human(agents, timeout_s=0.3, end_on_timeout=True, max_turns=5)
    events = await read_until(orch_stub.RunConversation(pb.RunConversationRequest(start=start)))
    assert events[-1].done.reason == "human_timeout" and events[-1].done.turns == 2
    assert kinds(events)[-3:] == ["turn_started", "awaiting_input", "done"]


async def test_a_cancel_ends_the_wait_for_the_human(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agents = await create_agents(orch_client, ["Tessa", "Marrow"], prefix="sim-human")
    call = orch_stub.Converse()
    await call.write(pb.ConverseRequest(start=_with_human(agents, max_turns=10)))
    asked = await wait_for_kind(call, "awaiting_input")
    cancelled = await orch_stub.CancelConversation(
        pb.CancelConversationRequest(name=asked[0].conversation, reason="no time")
    )
    rest = await read_until(call)
    assert kinds(rest) == ["done"] and rest[0].done.reason == "cancelled"
    assert cancelled.event_id == rest[0].event_id and rest[0].done.turns == 2
