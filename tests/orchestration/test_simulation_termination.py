"""Every way a simulation ends by itself or by a cancel, reported in `done.reason` and in the
stored conversation: a stop keyword, a sentiment below the minimum or at the maximum, the wall
time (interrupting the turn in progress), the token budget, and a cancel (which reaches `done`
right after the tokens already streamed, with no turn_ended in between). toy_llm echoes the
words of the last user message, so the scenario steers what the first turn says."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2
from runs_test_support import kind, kinds, read_until, slow, wait_for_kind
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


async def _agents(client: callisto.Client) -> list[str]:
    return await create_agents(client, ["Tessa", "Marrow"], prefix="sim-end")


async def test_a_stop_keyword_ends_the_turn_that_says_it(
    orch_client: callisto.Client,
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    persistence: ServiceProcess,
    api_key: str,
) -> None:
    agents = await _agents(orch_client)
    termination = pb.TerminationPolicy(max_turns=6, stop_keywords=["DEAL", "never said"])
    start = simulation(agents, "so we have a deal now", termination=termination)
    events = await run(orch_stub, start)
    assert events[-1].done.reason == "keyword" and events[-1].done.turns == 1
    assert ended(events)[0].keyword_hits == ["DEAL"]
    conversation, messages = await stored(persistence.address, api_key, events[0].conversation)
    assert metadata_of(messages[0])["keyword_hits"] == ["DEAL"]
    assert metadata_of(conversation)["outcome"] == "keyword"
    assert "outcome:keyword" in conversation.tags


async def test_a_turn_below_the_minimum_sentiment_ends_the_run(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agents = await _agents(orch_client)
    termination = pb.TerminationPolicy(max_turns=6, min_sentiment=-0.3)
    start = simulation(
        agents, "this is terrible awful horrible and a disaster", termination=termination
    )
    events = await run(orch_stub, start)
    assert events[-1].done.reason == "sentiment" and events[-1].done.turns == 1
    turn = ended(events)[0]
    assert turn.sentiment.score < -0.3
    assert turn.sentiment.label == common_pb2.SENTIMENT_LABEL_NEGATIVE


async def test_a_turn_at_the_maximum_sentiment_ends_the_run(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agents = await _agents(orch_client)
    termination = pb.TerminationPolicy(max_turns=6, max_sentiment=0.5)
    start = simulation(agents, "wonderful excellent great love it", termination=termination)
    events = await run(orch_stub, start)
    assert events[-1].done.reason == "sentiment" and events[-1].done.turns == 1
    assert ended(events)[0].sentiment.score >= 0.5


async def test_a_neutral_conversation_runs_past_the_sentiment_bounds(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agents = await _agents(orch_client)
    termination = pb.TerminationPolicy(max_turns=2, min_sentiment=-0.3, max_sentiment=0.5)
    events = await run(
        orch_stub, simulation(agents, "the table is in the room", termination=termination)
    )
    assert events[-1].done.reason == "max_turns" and events[-1].done.turns == 2


async def test_the_wall_time_limit_interrupts_the_turn_in_progress(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agents = await _agents(orch_client)
    termination = pb.TerminationPolicy(max_turns=6, timeout=duration_pb2.Duration(seconds=1))
    start = simulation(agents, "a long slow talk", termination=termination, max_turn_tokens=64)
    events = await run(orch_stub, start, metadata=slow(100))
    assert kind(events[-1]) == "done" and events[-1].done.reason == "timeout"
    # The turn in progress was cut: it started, streamed, and never ended.
    last_start = max(i for i, e in enumerate(events) if kind(e) == "turn_started")
    assert "turn_ended" not in kinds(events[last_start:])
    assert events[-1].done.turns == len(ended(events))


async def test_the_token_budget_ends_the_run(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agents = await _agents(orch_client)
    start = simulation(
        agents, "talk about budgets", max_turns=20, budget=pb.Budget(max_total_tokens=400)
    )
    events = await run(orch_stub, start)
    done = events[-1].done
    assert done.reason == "budget"
    assert 0 < done.usage.total_tokens <= 400
    assert done.turns == len(ended(events)) < 20


async def test_a_cancel_ends_the_run_right_after_what_was_streamed(
    orch_client: callisto.Client,
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    persistence: ServiceProcess,
    api_key: str,
) -> None:
    agents = await _agents(orch_client)
    call = orch_stub.Converse(metadata=slow(200))
    await call.write(pb.ConverseRequest(start=simulation(agents, "slow talk", max_turn_tokens=64)))
    before = await wait_for_kind(call, "token")
    await call.write(pb.ConverseRequest(cancel=pb.Cancel(reason="enough")))
    after = await read_until(call)
    events = before + after
    assert kind(events[-1]) == "done" and events[-1].done.reason == "cancelled"
    # Nothing but the tokens already under way comes between the cancel and `done`.
    assert set(kinds(after[:-1])) <= {"token"}
    assert [t.turn for t in started(events)] == [1] and not ended(events)
    conversation, messages = await stored(persistence.address, api_key, events[0].conversation)
    assert conversation.status == persistence_pb2.CONVERSATION_STATUS_CANCELLED
    assert metadata_of(conversation)["outcome"] == "cancelled" and messages == []
