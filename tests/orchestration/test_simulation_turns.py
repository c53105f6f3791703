"""Simulation runs take turns: round robin over the agents in the order given (2 and 4 agents),
each turn streamed, scored and stored once as the storage contract says, until max_turns; the
model may pick the next speaker; inline agents take part without being stored."""

from __future__ import annotations

import pytest
from runs_test_support import assert_consecutive, kind, kinds, watch
from simulation_test_support import (
    create_agents,
    ended,
    metadata_of,
    run,
    simulation,
    started,
    stored,
)

import callisto
from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.api.persistence.v1 import persistence_pb2
from callisto.mesh.processes import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _participant(agent: str) -> str:
    return agent.removeprefix("agents/")


async def test_two_agents_alternate_until_max_turns_and_every_turn_is_stored(
    orch_client: callisto.Client,
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    persistence: ServiceProcess,
    api_key: str,
) -> None:
    agents = await create_agents(orch_client, ["Tessa Seller", "Marrow Buyer"])
    start = simulation(
        agents,
        "Tessaline sells edge servers to Marrowick Motors",
        max_turns=4,
        title="Edge servers",
        tags=["deal-room"],
    )
    events = await run(orch_stub, start)
    assert kind(events[-1]) == "done", kinds(events)
    done = events[-1].done
    assert done.reason == "max_turns" and done.turns == 4
    ids = [_participant(a) for a in agents]
    assert [(t.speaker, t.turn, t.human) for t in started(events)] == [
        (ids[0], 1, False),
        (ids[1], 2, False),
        (ids[0], 3, False),
        (ids[1], 4, False),
    ]
    for turn, agent in zip(started(events), agents * 2, strict=True):
        assert turn.agent.startswith(agent + "@")
    turns = ended(events)
    assert [(t.speaker, t.turn, t.human) for t in turns] == [
        (ids[0], 1, False),
        (ids[1], 2, False),
        (ids[0], 3, False),
        (ids[1], 4, False),
    ]
    assert all(t.text and t.usage.total_tokens > 0 and t.HasField("sentiment") for t in turns)
    # Each turn is turn_started, its tokens, turn_ended, usage.
    for number in range(1, 5):
        begin = next(
            i
            for i, e in enumerate(events)
            if kind(e) == "turn_started" and e.turn_started.turn == number
        )
        end = next(
            i
            for i, e in enumerate(events)
            if kind(e) == "turn_ended" and e.turn_ended.turn == number
        )
        assert set(kinds(events[begin + 1 : end])) == {"token"}
        assert kind(events[end + 1]) == "usage"
    assert_consecutive(events, 0)
    # What was stored is what the storage contract says.
    conversation, messages = await stored(persistence.address, api_key, events[0].conversation)
    assert conversation.title == "Edge servers"
    assert set(conversation.tags) == {"deal-room", "simulation", "outcome:max_turns"}
    assert conversation.status == persistence_pb2.CONVERSATION_STATUS_COMPLETED
    assert [(p.id, p.kind, p.display_name) for p in conversation.participants] == [
        (ids[0], persistence_pb2.PARTICIPANT_KIND_AGENT, "Tessa Seller"),
        (ids[1], persistence_pb2.PARTICIPANT_KIND_AGENT, "Marrow Buyer"),
    ]
    info = metadata_of(conversation)
    assert info["mode"] == "simulation" and info["outcome"] == "max_turns"
    assert info["scenario"] == start.prompt and info["end_time"]
    assert [a["participant"] for a in info["agents"]] == ids
    assert info["termination"]["max_turns"] == 4
    assert [m.role for m in messages] == [common_pb2.ROLE_ASSISTANT] * 4
    for number, (message, turn) in enumerate(zip(messages, turns, strict=True), start=1):
        data = metadata_of(message)
        assert data["turn"] == number and data["speaker"] == message.author
        assert data["human"] is False and data["run"] == info["run"]
        assert data["agent"].startswith(agents[(number - 1) % 2] + "@")
        assert message.text == turn.text and message.name == turn.message
        assert message.sentiment == turn.sentiment and message.usage == turn.usage
        assert data["started"]
    assert done.usage.total_tokens == sum(t.usage.total_tokens for t in turns)
    # A replay from the start is exactly what the live stream delivered, and the figures of
    # `done` are what GetConversationMetrics says.
    assert await watch(orch_stub, events[0].conversation) == events
    figures = await orch_stub.GetConversationMetrics(
        pb.GetConversationMetricsRequest(name=events[0].conversation)
    )
    assert done.metrics == figures.metrics
    assert done.metrics.turns == 4 and done.metrics.outcome == "max_turns"
    assert [t.turn for t in done.metrics.turn_metrics] == [1, 2, 3, 4]


async def test_four_agents_speak_in_the_order_given(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agents = await create_agents(orch_client, ["Ann", "Bob", "Cid", "Dee"])
    events = await run(orch_stub, simulation(agents, "four people plan a launch", max_turns=6))
    assert kind(events[-1]) == "done", events[-1]
    assert events[-1].done.reason == "max_turns" and events[-1].done.turns == 6
    order = [_participant(a) for a in agents]
    assert [t.speaker for t in started(events)] == [*order, *order[:2]]
    assert [t.turn for t in ended(events)] == [1, 2, 3, 4, 5, 6]


async def test_model_selection_picks_among_the_other_agents(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agents = await create_agents(orch_client, ["Ann", "Bob", "Cid"])
    options = pb.SimulationOptions(speaker_selection=pb.SPEAKER_SELECTION_MODEL)
    events = await run(
        orch_stub, simulation(agents, "three people talk", max_turns=4, options=options)
    )
    a, b, _ = (_participant(x) for x in agents)
    # toy_llm answers the first of the allowed ids: never the last speaker itself.
    assert [t.speaker for t in started(events)] == [a, b, a, b]


async def test_inline_agents_run_without_being_stored(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    stored_agent = (await create_agents(orch_client, ["Stored Sam"]))[0]
    inline = pb.Agent(
        display_name="Inline Ivy",
        role="buyer",
        company="Marrowick Motors",
        system_prompt="You buy servers.",
    )
    start = simulation([stored_agent], "Ivy buys servers", max_turns=2, inline_agents=[inline])
    events = await run(orch_stub, start)
    assert events[-1].done.reason == "max_turns"
    assert [(t.speaker, t.agent) for t in started(events)][1] == ("inline-ivy", "")
    names = {a.display_name async for a in orch_client.orchestration.list_agents()}
    assert "Inline Ivy" not in names
