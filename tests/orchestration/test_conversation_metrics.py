"""Conversation metrics: `metrics.conversation_metrics` on built messages (a pure function), and
GetConversationMetrics over conversations stored through the real persistence service, as a
simulation stores them, for the caller's tenant only."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2

import callisto
from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc
from callisto.api.persistence.v1 import persistence_pb2
from callisto.mesh.processes import ServiceProcess
from callisto.persistence import PersistenceClient
from callisto.services.orchestration.metrics import conversation_metrics

POSITIVE = common_pb2.SENTIMENT_LABEL_POSITIVE
NEGATIVE = common_pb2.SENTIMENT_LABEL_NEGATIVE
NEUTRAL = common_pb2.SENTIMENT_LABEL_NEUTRAL


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


def _time(seconds: float) -> timestamp_pb2.Timestamp:
    result = timestamp_pb2.Timestamp()
    result.FromNanoseconds(int(seconds * 1e9))
    return result


def _rfc3339(seconds: float) -> str:
    return _time(seconds).ToJsonString()


def sim_conversation(outcome: str = "keyword") -> persistence_pb2.Conversation:
    return persistence_pb2.Conversation(
        name="conversations/sim-1",
        title="Tessaline sells edge servers",
        participants=[
            persistence_pb2.Participant(
                id="tessa-sales", kind=persistence_pb2.PARTICIPANT_KIND_AGENT, company="Tessaline"
            ),
            persistence_pb2.Participant(
                id="marrow-buyer", kind=persistence_pb2.PARTICIPANT_KIND_AGENT, company="Marrowick"
            ),
            persistence_pb2.Participant(id="user", kind=persistence_pb2.PARTICIPANT_KIND_HUMAN),
        ],
        metadata=_struct({"mode": "simulation", "run": "r1", "outcome": outcome}),
    )


def sim_message(
    turn: int,
    speaker: str,
    *,
    human: bool = False,
    score: float | None = None,
    label: common_pb2.SentimentLabel.ValueType = NEUTRAL,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    generation_ms: float = 0.0,
    cost: float = 0.0,
    keyword_hits: Sequence[str] = (),
    passages: int = 0,
    started: float | None = None,
    stored: float = 0.0,
) -> persistence_pb2.Message:
    meta: dict[str, Any] = {
        "mode": "simulation",
        "run": "r1",
        "turn": turn,
        "speaker": speaker,
        "human": human,
        "agent": "" if human else f"agents/{speaker}",
        "model": "" if human else "models/toy_llm",
        "generation_ms": generation_ms,
        "cost": cost,
        "keyword_hits": list(keyword_hits),
        "passages": passages,
        "tool_calls": [],
    }
    if started is not None:
        meta["started"] = _rfc3339(started)
    message = persistence_pb2.Message(
        name=f"conversations/sim-1/messages/{turn}",
        role=common_pb2.ROLE_USER if human else common_pb2.ROLE_ASSISTANT,
        author=speaker,
        text=f"turn {turn} by {speaker}",
        usage=common_pb2.TokenUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
        metadata=_struct(meta),
        create_time=_time(stored),
    )
    if score is not None:
        message.sentiment.CopyFrom(common_pb2.Sentiment(label=label, score=score))
    return message


def four_turns() -> list[persistence_pb2.Message]:
    return [
        sim_message(
            1,
            "tessa-sales",
            score=0.5,
            label=POSITIVE,
            prompt_tokens=100,
            completion_tokens=20,
            generation_ms=120.5,
            cost=0.001,
            passages=3,
            started=1000.0,
            stored=1002.0,
        ),
        sim_message(
            2,
            "marrow-buyer",
            score=-0.25,
            label=NEGATIVE,
            prompt_tokens=150,
            completion_tokens=30,
            generation_ms=200.0,
            cost=0.002,
            keyword_hits=["price"],
            started=1002.5,
            stored=1004.0,
        ),
        sim_message(3, "user", human=True, score=0.0, started=1004.5, stored=1010.0),
        sim_message(
            4,
            "tessa-sales",
            score=0.75,
            label=POSITIVE,
            prompt_tokens=200,
            completion_tokens=40,
            generation_ms=300.0,
            cost=0.003,
            keyword_hits=["deal", "signed"],
            passages=2,
            started=1010.5,
            stored=1012.25,
        ),
    ]


def test_every_figure_of_a_simulation_comes_from_its_stored_turns() -> None:
    messages = four_turns()
    metrics = conversation_metrics(sim_conversation(), messages)

    assert metrics.conversation == "conversations/sim-1"
    assert (metrics.turns, metrics.agent_turns, metrics.human_turns) == (4, 3, 1)
    assert metrics.mean_sentiment == pytest.approx((0.5 - 0.25 + 0.0 + 0.75) / 4)
    assert metrics.min_sentiment == -0.25
    assert metrics.last_sentiment == 0.75
    # Least squares over (1, .5), (2, -.25), (3, 0), (4, .75): x̄ = 2.5, ȳ = .25.
    expected_slope = ((-1.5 * 0.25) + (-0.5 * -0.5) + (0.5 * -0.25) + (1.5 * 0.5)) / (
        2.25 + 0.25 + 0.25 + 2.25
    )
    assert metrics.sentiment_slope == pytest.approx(expected_slope)
    assert expected_slope > 0.02 and metrics.sentiment_trend == "rising"
    assert metrics.usage == common_pb2.TokenUsage(
        prompt_tokens=450, completion_tokens=90, total_tokens=540
    )
    assert metrics.cost == pytest.approx(0.006)
    assert metrics.generation_ms == pytest.approx(620.5)
    assert [(h.keyword, h.turn, h.speaker) for h in metrics.keyword_hits] == [
        ("price", 2, "marrow-buyer"),
        ("deal", 4, "tessa-sales"),
        ("signed", 4, "tessa-sales"),
    ]
    assert (metrics.retrieval_turns, metrics.passages_retrieved) == (2, 5)
    assert metrics.outcome == "keyword"
    # From the first turn's start (1000.0) to the last turn's store (1012.25).
    assert metrics.duration.ToNanoseconds() == 12_250_000_000

    assert [t.turn for t in metrics.turn_metrics] == [1, 2, 3, 4]
    assert [t.speaker for t in metrics.turn_metrics] == [
        "tessa-sales",
        "marrow-buyer",
        "user",
        "tessa-sales",
    ]
    assert [t.human for t in metrics.turn_metrics] == [False, False, True, False]
    first, _, human, last = metrics.turn_metrics
    assert first.sentiment == common_pb2.Sentiment(label=POSITIVE, score=0.5)
    assert first.usage.total_tokens == 120 and first.generation_ms == 120.5
    assert first.passages == 3 and last.passages == 2 and human.passages == 0
    assert first.message == "conversations/sim-1/messages/1"
    assert last.create_time == messages[3].create_time
    assert human.usage.total_tokens == 0


@pytest.mark.parametrize(
    ("scores", "trend"),
    [
        ([-0.5, -0.2, 0.1, 0.4], "rising"),
        ([0.6, 0.3, 0.0, -0.3], "falling"),
        ([0.2, 0.21, 0.19, 0.2], "flat"),
        # Exactly 0.02 per turn is still flat; 0.03 is not.
        ([0.0, 0.02, 0.04, 0.06], "flat"),
        ([0.0, 0.03, 0.06, 0.09], "rising"),
        ([0.0, -0.03, -0.06, -0.09], "falling"),
    ],
)
def test_sentiment_trend_follows_the_least_squares_slope(scores: list[float], trend: str) -> None:
    messages = [
        sim_message(i + 1, "a" if i % 2 else "b", score=s, stored=float(i))
        for i, s in enumerate(scores)
    ]
    metrics = conversation_metrics(sim_conversation(), messages)
    assert metrics.sentiment_trend == trend
    n = len(scores)
    mean_x = (n + 1) / 2
    mean_y = sum(scores) / n
    slope = sum((i + 1 - mean_x) * (s - mean_y) for i, s in enumerate(scores)) / sum(
        (i + 1 - mean_x) ** 2 for i in range(n)
    )
    assert metrics.sentiment_slope == pytest.approx(slope)


def test_trend_is_empty_under_two_scored_turns() -> None:
    one = conversation_metrics(sim_conversation(), [sim_message(1, "a", score=0.4)])
    assert one.sentiment_trend == "" and one.sentiment_slope == 0.0
    assert (one.mean_sentiment, one.min_sentiment, one.last_sentiment) == (0.4, 0.4, 0.4)
    # A second turn without a sentiment does not make a trend.
    two = conversation_metrics(
        sim_conversation(), [sim_message(1, "a", score=0.4), sim_message(2, "b")]
    )
    assert two.turns == 2 and two.sentiment_trend == ""


def test_sentiment_figures_use_only_turns_that_have_a_sentiment() -> None:
    messages = [
        sim_message(1, "a", score=-0.5, label=NEGATIVE),
        sim_message(2, "b"),
        sim_message(3, "a", score=0.5, label=POSITIVE),
        sim_message(4, "b"),
    ]
    # A sentiment whose label is unassessed counts as none.
    messages[3].sentiment.CopyFrom(common_pb2.Sentiment(score=-1.0))
    metrics = conversation_metrics(sim_conversation(), messages)
    assert metrics.mean_sentiment == 0.0
    assert metrics.min_sentiment == -0.5
    assert metrics.last_sentiment == 0.5
    # Slope over turns 1 and 3 only: +1.0 over 2 turns.
    assert metrics.sentiment_slope == pytest.approx(0.5)
    assert not metrics.turn_metrics[1].HasField("sentiment")
    assert not metrics.turn_metrics[3].HasField("sentiment")


def test_a_conversation_without_turns_has_zero_figures() -> None:
    conversation = sim_conversation(outcome="")
    system = persistence_pb2.Message(role=common_pb2.ROLE_SYSTEM, text="frame")
    metrics = conversation_metrics(conversation, [system])
    assert metrics == pb.ConversationMetrics(
        conversation="conversations/sim-1",
        usage=common_pb2.TokenUsage(),
        duration=metrics.duration,
    )
    assert metrics.duration.ToNanoseconds() == 0 and metrics.outcome == ""


def test_other_conversations_number_turns_in_order_and_count_citations() -> None:
    conversation = persistence_pb2.Conversation(name="conversations/chat")
    messages = [
        persistence_pb2.Message(
            role=common_pb2.ROLE_USER, author="ann", text="hi", create_time=_time(10)
        ),
        persistence_pb2.Message(role=common_pb2.ROLE_TOOL, text="tool output"),
        persistence_pb2.Message(
            role=common_pb2.ROLE_ASSISTANT,
            author="agents/helper",
            text="answer [1] [2]",
            citations=[common_pb2.Citation(marker=1), common_pb2.Citation(marker=2)],
            usage=common_pb2.TokenUsage(prompt_tokens=5, completion_tokens=3, total_tokens=8),
            # An assistant run numbers its own answers: turn 1 here is the second turn.
            metadata=_struct({"run": "r", "turn": 1, "generation_ms": 40.0, "cost": 0.5}),
            sentiment=common_pb2.Sentiment(label=POSITIVE, score=0.3),
            create_time=_time(12.5),
        ),
    ]
    metrics = conversation_metrics(conversation, messages)
    assert [(t.turn, t.speaker, t.human) for t in metrics.turn_metrics] == [
        (1, "ann", True),
        (2, "agents/helper", False),
    ]
    assert (metrics.turns, metrics.agent_turns, metrics.human_turns) == (2, 1, 1)
    assert (metrics.retrieval_turns, metrics.passages_retrieved) == (1, 2)
    assert metrics.usage.total_tokens == 8 and metrics.cost == 0.5
    assert metrics.generation_ms == 40.0
    assert metrics.duration.ToNanoseconds() == 2_500_000_000
    assert metrics.outcome == "" and metrics.sentiment_trend == ""


def test_malformed_metadata_is_read_as_absent() -> None:
    message = persistence_pb2.Message(
        role=common_pb2.ROLE_ASSISTANT,
        author="x",
        metadata=_struct(
            {
                "mode": "simulation",
                "turn": "three",
                "speaker": 7,
                "human": "yes",
                "generation_ms": "fast",
                "cost": -4.0,
                "keyword_hits": "deal",
                "passages": 2.5,
                "started": "yesterday",
            }
        ),
        create_time=_time(5),
    )
    conversation = persistence_pb2.Conversation(
        name="conversations/odd", metadata=_struct({"mode": "simulation", "outcome": 12})
    )
    metrics = conversation_metrics(conversation, [message])
    (turn,) = metrics.turn_metrics
    assert (turn.turn, turn.speaker, turn.human) == (1, "x", False)
    assert turn.generation_ms == 0.0 and metrics.cost == 0.0
    assert list(metrics.keyword_hits) == [] and turn.passages == 0
    assert metrics.outcome == "" and metrics.duration.ToNanoseconds() == 0


def test_the_same_turns_always_give_the_same_figures() -> None:
    first = conversation_metrics(sim_conversation(), four_turns())
    again = conversation_metrics(sim_conversation(), four_turns())
    assert first.SerializeToString(deterministic=True) == again.SerializeToString(
        deterministic=True
    )
    assert math.isfinite(first.sentiment_slope)


# Through the real services.


async def store_simulation(
    persistence: PersistenceClient, messages: Sequence[persistence_pb2.Message]
) -> persistence_pb2.Conversation:
    """A conversation written as a simulation run writes it, then its outcome."""
    conversation = await persistence.create_conversation(
        persistence_pb2.Conversation(
            title="Tessaline sells edge servers",
            participants=sim_conversation().participants,
            tags=["simulation"],
            metadata=_struct({"mode": "simulation", "run": "r1", "scenario": "edge servers"}),
        )
    )
    for message in messages:
        stored = persistence_pb2.Message()
        stored.CopyFrom(message)
        stored.ClearField("name")
        stored.ClearField("create_time")
        await persistence.create_message(conversation.name, stored)
    conversation.metadata.update({"outcome": "keyword", "end_time": _rfc3339(2000)})
    conversation.status = persistence_pb2.CONVERSATION_STATUS_COMPLETED
    conversation.tags.append("outcome:keyword")
    return await persistence.update_conversation(conversation, ["status", "tags", "metadata"])


async def test_get_conversation_metrics_answers_the_figures_of_the_stored_turns(
    persistence_client: callisto.Client, orch_client: callisto.Client
) -> None:
    persistence = persistence_client.persistence
    conversation = await store_simulation(persistence, four_turns())
    stored = [m async for m in persistence.list_messages(conversation.name)]

    metrics = await orch_client.orchestration.get_conversation_metrics(conversation.name)

    assert metrics == conversation_metrics(conversation, stored)
    assert metrics.conversation == conversation.name
    assert (metrics.turns, metrics.agent_turns, metrics.human_turns) == (4, 3, 1)
    assert metrics.outcome == "keyword" and metrics.sentiment_trend == "rising"
    assert [h.keyword for h in metrics.keyword_hits] == ["price", "deal", "signed"]
    assert metrics.usage.total_tokens == 540 and metrics.passages_retrieved == 5
    assert [t.message for t in metrics.turn_metrics] == [m.name for m in stored]
    # The duration runs from the first turn's recorded start to the last turn's storing.
    start = _time(1000.0).ToNanoseconds()
    assert metrics.duration.ToNanoseconds() == stored[-1].create_time.ToNanoseconds() - start


async def test_metrics_read_every_page_of_a_long_conversation(
    persistence_client: callisto.Client, orch_client: callisto.Client
) -> None:
    persistence = persistence_client.persistence
    # More turns than one persistence page (100).
    turns = [
        sim_message(i, "a" if i % 2 else "b", score=(i % 5) / 10, prompt_tokens=1)
        for i in range(1, 131)
    ]
    conversation = await store_simulation(persistence, turns)
    metrics = await orch_client.orchestration.get_conversation_metrics(conversation.name)
    assert metrics.turns == 130 and metrics.usage.prompt_tokens == 130
    assert [t.turn for t in metrics.turn_metrics] == list(range(1, 131))


async def test_metrics_of_another_tenants_conversation_are_not_found(
    persistence_client: callisto.Client,
    orchestration: ServiceProcess,
    tenant_key: Callable[[str], str],
) -> None:
    conversation = await store_simulation(persistence_client.persistence, four_turns()[:1])
    async with await callisto.Client.connect(
        orchestration.address, api_key=tenant_key("initech")
    ) as other:
        with pytest.raises(callisto.errors.NotFound):
            await other.orchestration.get_conversation_metrics(conversation.name)
        with pytest.raises(callisto.errors.NotFound):
            await other.orchestration.get_conversation_metrics("conversations/no-such-one")


@pytest.mark.parametrize(
    "name", ["", "sim-1", "conversations/", "conversations/UPPER", "agents/x", "conversations/a/b"]
)
async def test_metrics_refuse_a_malformed_name_with_a_field_violation(
    orch_stub: orchestration_pb2_grpc.OrchestrationServiceAsyncStub, name: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orch_stub.GetConversationMetrics(pb.GetConversationMetricsRequest(name=name))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(callisto.errors.from_rpc_error(caught.value).field_violations) == {"name"}
