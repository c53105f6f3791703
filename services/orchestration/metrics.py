"""A conversation's figures (`ConversationMetrics`), computed from its stored messages and its
metadata only, so a live run's `done`, GetConversationMetrics and a replay always agree.

What is read (the simulation's storage contract): a message with role USER or ASSISTANT is a
turn. Its `metadata` may say `turn` (1-based), `speaker`, `human`, `generation_ms`, `cost`,
`keyword_hits`, `passages` and `started` (RFC 3339); where it does not (a conversation that is
not a simulation), the turn is numbered in stored order, the speaker is the author, the human is
the USER role, passages are the citations and the turn starts when it was stored. Malformed
metadata values are read as absent, never raised on."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2
from callisto.persistence import PersistenceClient

FLAT_SLOPE = 0.02
"""A sentiment slope within ±FLAT_SLOPE per turn is a "flat" trend."""

TURN_ROLES = (common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT)
MAX_MESSAGES = 5_000
"""Most messages a conversation's figures are computed from (past it GetConversationMetrics and
downloads are FAILED_PRECONDITION, and a simulation's `done` carries none)."""
PAGE_SIZE = 200
"""Messages read from persistence per page."""


class TooManyMessages(Exception):
    """The conversation holds more than MAX_MESSAGES messages (`count` seen so far)."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} messages")
        self.count = count


async def bounded_messages(
    persistence: PersistenceClient, conversation: persistence_pb2.Conversation
) -> AsyncIterator[persistence_pb2.Message]:
    """The conversation's messages, oldest first; TooManyMessages past MAX_MESSAGES (told by
    its message count before anything is read, or by the listing)."""
    if conversation.message_count > MAX_MESSAGES:
        raise TooManyMessages(conversation.message_count)
    seen = 0
    async for message in persistence.list_messages(conversation.name, page_size=PAGE_SIZE):
        seen += 1
        if seen > MAX_MESSAGES:
            raise TooManyMessages(seen)
        yield message


MAX_KEYWORD_HITS_PER_TURN = 64
"""At most this many keyword hits are read from one turn's metadata."""


def conversation_metrics(
    conversation: persistence_pb2.Conversation,
    messages: Sequence[persistence_pb2.Message],
) -> pb.ConversationMetrics:
    """The figures of `conversation` from its messages, oldest first."""
    result = pb.ConversationMetrics(
        conversation=conversation.name,
        outcome=_string(_fields(conversation.metadata).get("outcome")),
    )
    scored: list[tuple[int, float]] = []
    prompt = completion = total = 0
    costs: list[float] = []
    generation: list[float] = []
    first_start: timestamp_pb2.Timestamp | None = None
    last_end: timestamp_pb2.Timestamp | None = None
    simulation = _string(_fields(conversation.metadata).get("mode")) == "simulation"
    order = 0
    for message in messages:
        if message.role not in TURN_ROLES:
            continue
        order += 1
        turn = _turn(message, order, simulation)
        result.turn_metrics.append(turn.figures)
        if turn.figures.human:
            result.human_turns += 1
        else:
            result.agent_turns += 1
        if turn.scored:
            scored.append((turn.figures.turn, turn.figures.sentiment.score))
        usage = message.usage
        prompt += usage.prompt_tokens
        completion += usage.completion_tokens
        total += usage.total_tokens
        costs.append(turn.cost)
        generation.append(turn.figures.generation_ms)
        for keyword in turn.keywords:
            result.keyword_hits.append(
                pb.KeywordHit(keyword=keyword, turn=turn.figures.turn, speaker=turn.figures.speaker)
            )
        if turn.figures.passages > 0:
            result.retrieval_turns += 1
            result.passages_retrieved += turn.figures.passages
        if first_start is None:
            first_start = turn.started
        last_end = message.create_time
    result.turns = len(result.turn_metrics)
    result.usage.CopyFrom(
        common_pb2.TokenUsage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=total
        )
    )
    result.cost = math.fsum(costs)
    result.generation_ms = math.fsum(generation)
    _sentiment_figures(result, scored)
    result.duration.CopyFrom(_duration(first_start, last_end))
    return result


@dataclass(frozen=True)
class _Turn:
    figures: pb.TurnMetrics
    scored: bool
    cost: float
    keywords: list[str]
    started: timestamp_pb2.Timestamp


def _turn(message: persistence_pb2.Message, order: int, simulation: bool) -> _Turn:
    meta = _fields(message.metadata)
    # Other runs number only their own answers; a simulation numbers every turn.
    simulation = simulation or _string(meta.get("mode")) == "simulation"
    number = _whole(meta.get("turn")) if simulation else None
    speaker = _string(meta.get("speaker"))
    human = meta.get("human")
    passages = _whole(meta.get("passages"))
    scored = message.HasField("sentiment") and (
        message.sentiment.label != common_pb2.SENTIMENT_LABEL_UNSPECIFIED
    )
    figures = pb.TurnMetrics(
        turn=number if number is not None and number > 0 else order,
        speaker=speaker or message.author,
        human=human if isinstance(human, bool) else message.role == common_pb2.ROLE_USER,
        usage=message.usage,
        generation_ms=max(_number(meta.get("generation_ms")), 0.0),
        message=message.name,
        create_time=message.create_time,
        passages=max(passages, 0) if passages is not None else len(message.citations),
    )
    if scored:
        figures.sentiment.CopyFrom(message.sentiment)
    started = _timestamp(meta.get("started"))
    return _Turn(
        figures=figures,
        scored=scored,
        cost=max(_number(meta.get("cost")), 0.0),
        keywords=_keywords(meta.get("keyword_hits")),
        started=started if started is not None else message.create_time,
    )


def _sentiment_figures(result: pb.ConversationMetrics, scored: list[tuple[int, float]]) -> None:
    if not scored:
        return
    scores = [score for _, score in scored]
    result.mean_sentiment = math.fsum(scores) / len(scores)
    result.min_sentiment = min(scores)
    result.last_sentiment = scores[-1]
    if len(scored) < 2:
        return
    result.sentiment_slope = _slope(scored)
    if result.sentiment_slope > FLAT_SLOPE:
        result.sentiment_trend = "rising"
    elif result.sentiment_slope < -FLAT_SLOPE:
        result.sentiment_trend = "falling"
    else:
        result.sentiment_trend = "flat"


def _slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of score over turn number (0 when every turn has one number)."""
    mean_x = math.fsum(x for x, _ in points) / len(points)
    mean_y = math.fsum(y for _, y in points) / len(points)
    spread = math.fsum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return 0.0
    return math.fsum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def _duration(
    start: timestamp_pb2.Timestamp | None, end: timestamp_pb2.Timestamp | None
) -> duration_pb2.Duration:
    if start is None or end is None:
        return duration_pb2.Duration()
    nanos = max(end.ToNanoseconds() - start.ToNanoseconds(), 0)
    result = duration_pb2.Duration()
    result.FromNanoseconds(nanos)
    return result


# Reading metadata values, tolerant of what a client may have stored.


def _fields(struct: struct_pb2.Struct) -> Mapping[str, object]:
    """The top-level values of a Struct as Python values (numbers are floats)."""
    values: dict[str, object] = {}
    for key, value in struct.fields.items():
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            values[key] = value.string_value
        elif kind == "number_value":
            values[key] = value.number_value
        elif kind == "bool_value":
            values[key] = value.bool_value
        elif kind == "list_value":
            values[key] = value.list_value
    return values


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _number(value: object) -> float:
    if isinstance(value, float) and math.isfinite(value):
        return value
    return 0.0


def _whole(value: object) -> int | None:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        if abs(value) < 2**31:
            return int(value)
    return None


def _keywords(value: object) -> list[str]:
    if not isinstance(value, struct_pb2.ListValue):
        return []
    return [
        item.string_value
        for item in value.values[:MAX_KEYWORD_HITS_PER_TURN]
        if item.WhichOneof("kind") == "string_value" and item.string_value
    ]


def _timestamp(value: object) -> timestamp_pb2.Timestamp | None:
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    result = timestamp_pb2.Timestamp()
    try:
        result.FromJsonString(value)
    except ValueError:
        return None
    return result
