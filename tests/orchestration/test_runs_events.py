"""Run events as log entries: every kind survives the trip to JSON data and back, stored
messages read back as `turn_ended`, and entries that are not run events are skipped."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2

from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2
from callisto.services.common.errors import Unavailable
from callisto.services.orchestration import events

CONVERSATION = "conversations/c1"
WHEN = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5_000_000)


def _arguments() -> struct_pb2.Struct:
    arguments = struct_pb2.Struct()
    arguments.update({"query": "cold chain", "limit": 3, "tags": ["a", "b"], "deep": {"x": None}})
    return arguments


EVENTS = [
    pb.ConversationEvent(
        turn_started=pb.TurnStarted(speaker="a1", turn=2, agent="agents/a1@r3", restarted=True)
    ),
    pb.ConversationEvent(token=pb.TokenChunk(speaker="a1", text="Hello, \u00e9 world ")),
    pb.ConversationEvent(
        tool_call=pb.ToolCall(
            tool="search_documents",
            arguments=_arguments(),
            result="2 passages",
            duration_ms=12.5,
            id="call-1",
            attempts=2,
            cached=False,
        )
    ),
    pb.ConversationEvent(
        citation=common_pb2.Citation(document_id="d1", title="Doc", marker=1, score=0.75)
    ),
    pb.ConversationEvent(
        plan=pb.Plan(
            iteration=1,
            intent="find sessions",
            entities=["cold chain"],
            needs_knowledge=True,
            calls=[pb.PlannedCall(tool="search_documents", arguments=_arguments())],
            source="model",
        )
    ),
    pb.ConversationEvent(reflection=pb.Reflection(iteration=1, sufficient=False, missing="x")),
    pb.ConversationEvent(
        usage=common_pb2.TokenUsage(prompt_tokens=10, completion_tokens=5, total_tokens=15)
    ),
    pb.ConversationEvent(
        done=pb.Done(
            reason="budget",
            usage=common_pb2.TokenUsage(prompt_tokens=1, completion_tokens=2, total_tokens=3),
            turns=4,
            cost=0.000123,
        )
    ),
    pb.ConversationEvent(error=Unavailable("generation is down", retry_after=2).to_status()),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: str(e.WhichOneof("kind")))
def test_every_kind_survives_the_log_as_json(event: pb.ConversationEvent) -> None:
    entry = persistence_pb2.Event(
        sequence=41,
        type=events.event_type(event),
        create_time=WHEN,
        data=events.event_data(event),
    )
    assert entry.type == f"orchestration.{event.WhichOneof('kind')}"
    back = events.from_log(entry, CONVERSATION)
    expected = pb.ConversationEvent()
    expected.CopyFrom(event)
    expected.event_id, expected.conversation = 41, CONVERSATION
    expected.create_time.CopyFrom(WHEN)
    assert back == expected


def test_the_log_fields_are_never_stored_in_the_data() -> None:
    event = pb.ConversationEvent(
        event_id=9, conversation="conversations/other", token=pb.TokenChunk(text="x")
    )
    event.create_time.CopyFrom(WHEN)
    assert set(events.event_data(event).keys()) == {"token"}


def test_a_stored_message_reads_back_as_its_speakers_turn_ended() -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"cost": 0.25, "generation_ms": 40.0, "run": "r1"})
    message = persistence_pb2.Message(
        name=f"{CONVERSATION}/messages/2",
        role=common_pb2.ROLE_ASSISTANT,
        author="a1",
        text="An answer [1].",
        citations=[common_pb2.Citation(document_id="d1", marker=1)],
        usage=common_pb2.TokenUsage(prompt_tokens=3, completion_tokens=4, total_tokens=7),
        metadata=metadata,
    )
    entry = persistence_pb2.Event(sequence=7, type="message.created", message=message)
    event = events.from_log(entry, CONVERSATION)
    assert event is not None and event.event_id == 7
    assert event.turn_ended == pb.TurnEnded(
        speaker="a1",
        text="An answer [1].",
        usage=message.usage,
        message=message.name,
        cost=0.25,
        generation_ms=40.0,
        citations=message.citations,
    )
    human = persistence_pb2.Message(
        name=f"{CONVERSATION}/messages/1", role=common_pb2.ROLE_USER, author="user", text="Hi"
    )
    turn = events.from_log(
        persistence_pb2.Event(sequence=6, type="message.created", message=human), CONVERSATION
    )
    assert turn is not None and turn.turn_ended.speaker == "user" and turn.turn_ended.cost == 0


def test_entries_that_are_not_run_events_are_skipped() -> None:
    data = struct_pb2.Struct()
    data.update({"anything": 1})
    mislabelled = events.event_data(pb.ConversationEvent(token=pb.TokenChunk(text="x")))
    for entry in (
        persistence_pb2.Event(sequence=1, type="agent.note", data=data),
        persistence_pb2.Event(sequence=2, type="orchestration.done", data=mislabelled),
        persistence_pb2.Event(sequence=3, type="message.created"),
    ):
        assert events.from_log(entry, CONVERSATION) is None


def test_an_error_event_keeps_its_details() -> None:
    event = EVENTS[-1]
    entry = persistence_pb2.Event(
        sequence=2, type=events.event_type(event), data=events.event_data(event)
    )
    back = events.from_log(entry, CONVERSATION)
    assert back is not None
    retry = error_details_pb2.RetryInfo()
    assert back.error.details[0].Unpack(retry) and retry.retry_delay.seconds == 2
