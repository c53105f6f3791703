"""Messages, events and export over gRPC: atomic message + event, request-id idempotency,
validation, pagination."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from persistence_test_support import (
    Metadata,
    error_reason,
    field_violations,
    new_conversation,
    precondition_violations,
)

from callisto.api.common.v1 import common_pb2
from callisto.api.persistence.v1 import persistence_pb2 as pb

if TYPE_CHECKING:
    from callisto.api.persistence.v1.persistence_pb2_grpc import PersistenceServiceAsyncStub as Stub


def assistant(text: str) -> pb.Message:
    return pb.Message(
        role=common_pb2.ROLE_ASSISTANT,
        author="agent-1",
        text=text,
        citations=[common_pb2.Citation(document_id="doc", chunk_id="c1", score=0.5)],
        usage=common_pb2.TokenUsage(prompt_tokens=3, completion_tokens=4, total_tokens=7),
        sentiment=common_pb2.Sentiment(label=common_pb2.SENTIMENT_LABEL_POSITIVE, score=0.8),
    )


async def test_message_and_its_event_are_appended_together(stub: Stub, auth: Metadata) -> None:
    conversation = await new_conversation(stub, auth)
    data = struct_pb2.Struct()
    data.update({"agent": "agent-1"})
    started = await stub.CreateEvent(
        pb.CreateEventRequest(
            parent=conversation.name, event=pb.Event(type="agent.turn_started", data=data)
        ),
        metadata=auth,
    )
    assert started.event.sequence == 1
    stored = (
        await stub.CreateMessage(
            pb.CreateMessageRequest(parent=conversation.name, message=assistant("hello")),
            metadata=auth,
        )
    ).message
    assert stored.name == f"{conversation.name}/messages/1"
    assert stored.position == 1
    assert stored.event_sequence == 2
    assert stored.citations[0].chunk_id == "c1"
    assert stored.usage.total_tokens == 7

    got = await stub.GetMessage(pb.GetMessageRequest(name=stored.name), metadata=auth)
    assert got.message == stored
    events = (
        await stub.ListEvents(pb.ListEventsRequest(parent=conversation.name), metadata=auth)
    ).events
    assert [(e.sequence, e.type) for e in events] == [
        (1, "agent.turn_started"),
        (2, "message.created"),
    ]
    assert events[0].data == data
    assert events[1].message == stored
    after = await stub.GetConversation(
        pb.GetConversationRequest(name=conversation.name), metadata=auth
    )
    assert after.conversation.message_count == 1
    assert after.conversation.last_sequence == 2
    assert after.conversation.update_time.ToMilliseconds() >= stored.create_time.ToMilliseconds()

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.GetMessage(
            pb.GetMessageRequest(name=f"{conversation.name}/messages/2"), metadata=auth
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_same_request_id_appends_once(stub: Stub, auth: Metadata) -> None:
    conversation = await new_conversation(stub, auth)
    request = pb.CreateMessageRequest(
        parent=conversation.name, message=assistant("once"), request_id=str(uuid.uuid4())
    )
    replies = await asyncio.gather(*(stub.CreateMessage(request, metadata=auth) for _ in range(5)))
    assert {r.message.name for r in replies} == {f"{conversation.name}/messages/1"}
    event_request = pb.CreateEventRequest(
        parent=conversation.name, event=pb.Event(type="tool.called"), request_id="retry-1"
    )
    first = await stub.CreateEvent(event_request, metadata=auth)
    again = await stub.CreateEvent(event_request, metadata=auth)
    assert again.event == first.event
    listed = await stub.ListEvents(pb.ListEventsRequest(parent=conversation.name), metadata=auth)
    assert [e.sequence for e in listed.events] == [1, 2]


async def test_concurrent_appends_get_gap_free_sequences(stub: Stub, auth: Metadata) -> None:
    conversation = await new_conversation(stub, auth)
    await asyncio.gather(
        *(
            stub.CreateMessage(
                pb.CreateMessageRequest(parent=conversation.name, message=assistant(str(i))),
                metadata=auth,
            )
            for i in range(40)
        ),
        *(
            stub.CreateEvent(
                pb.CreateEventRequest(parent=conversation.name, event=pb.Event(type="tick")),
                metadata=auth,
            )
            for _ in range(40)
        ),
    )
    events: list[pb.Event] = []
    token = ""
    while True:
        page = await stub.ListEvents(
            pb.ListEventsRequest(parent=conversation.name, page_size=7, page_token=token),
            metadata=auth,
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            break
    assert [e.sequence for e in events] == list(range(1, 81))
    messages: list[pb.Message] = []
    token = ""
    while True:
        listed = await stub.ListMessages(
            pb.ListMessagesRequest(parent=conversation.name, page_size=9, page_token=token),
            metadata=auth,
        )
        messages.extend(listed.messages)
        token = listed.next_page_token
        if not token:
            break
    assert [m.position for m in messages] == list(range(1, 41))
    by_sequence = {e.sequence: e for e in events}
    for m in messages:
        assert by_sequence[m.event_sequence].message == m


async def test_invalid_messages_and_events_list_every_violation(stub: Stub, auth: Metadata) -> None:
    conversation = await new_conversation(stub, auth)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.CreateMessage(
            pb.CreateMessageRequest(
                parent=conversation.name,
                message=pb.Message(
                    text="x" * (64 * 1024 + 1),
                    sentiment=common_pb2.Sentiment(score=2.0),
                    usage=common_pb2.TokenUsage(prompt_tokens=-1),
                ),
                request_id="has space",
            ),
            metadata=auth,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error.value)) == {
        "message.role",
        "message.text",
        "message.sentiment.score",
        "message.usage.prompt_tokens",
        "request_id",
    }
    big = struct_pb2.Struct()
    big.update({"blob": "y" * (256 * 1024)})
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.CreateEvent(
            pb.CreateEventRequest(
                parent="conversations/", event=pb.Event(type="Bad Type", data=big)
            ),
            metadata=auth,
        )
    assert set(field_violations(error.value)) == {"parent", "event.type", "event.data"}
    for reserved in ("message.created", "conversation.status_changed"):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.CreateEvent(
                pb.CreateEventRequest(parent=conversation.name, event=pb.Event(type=reserved)),
                metadata=auth,
            )
        assert "event.type" in field_violations(error.value)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.GetMessage(
            pb.GetMessageRequest(name=f"{conversation.name}/messages/zero"), metadata=auth
        )
    assert "name" in field_violations(error.value)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.ListEvents(
            pb.ListEventsRequest(parent=conversation.name, after_sequence=-1, page_size=-1),
            metadata=auth,
        )
    assert set(field_violations(error.value)) == {"after_sequence", "page_size"}


async def test_export_holds_conversation_messages_and_events_as_json(
    stub: Stub, auth: Metadata
) -> None:
    conversation = await new_conversation(stub, auth, title="export me")
    for text in ("one", "two"):
        await stub.CreateMessage(
            pb.CreateMessageRequest(parent=conversation.name, message=assistant(text)),
            metadata=auth,
        )
    await stub.CreateEvent(
        pb.CreateEventRequest(parent=conversation.name, event=pb.Event(type="simulation.ended")),
        metadata=auth,
    )
    without = await stub.ExportConversation(
        pb.ExportConversationRequest(name=conversation.name), metadata=auth
    )
    assert [m.text for m in without.messages] == ["one", "two"]
    assert list(without.events) == []
    full = await stub.ExportConversation(
        pb.ExportConversationRequest(name=conversation.name, include_events=True), metadata=auth
    )
    document = json.loads(json_format.MessageToJson(full))
    assert document["conversation"]["title"] == "export me"
    assert document["conversation"]["messageCount"] == "2"
    assert [e["type"] for e in document["events"]] == [
        "message.created",
        "message.created",
        "simulation.ended",
    ]
    assert full.export_time.seconds > 0


@pytest.mark.parametrize(
    "position", ["²", "\u0661", "\U0001d7d9", "1\n", "+1", " 1", "0", "1" * 19]
)
async def test_message_ids_other_than_ascii_digits_are_invalid(
    stub: Stub, auth: Metadata, position: str
) -> None:
    conversation = await new_conversation(stub, auth)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetMessage(
            pb.GetMessageRequest(name=f"{conversation.name}/messages/{position}"), metadata=auth
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in field_violations(raised.value)


@pytest.mark.parametrize(
    "status",
    [
        pb.CONVERSATION_STATUS_COMPLETED,
        pb.CONVERSATION_STATUS_CANCELLED,
        pb.CONVERSATION_STATUS_FAILED,
    ],
)
async def test_a_finished_conversation_takes_no_more_messages_or_events(
    stub: Stub, auth: Metadata, status: pb.ConversationStatus.ValueType
) -> None:
    conversation = await new_conversation(stub, auth)
    accepted = await stub.CreateMessage(
        pb.CreateMessageRequest(
            parent=conversation.name, message=assistant("before"), request_id="before-end"
        ),
        metadata=auth,
    )
    finished = await stub.UpdateConversation(
        pb.UpdateConversationRequest(
            conversation=pb.Conversation(name=conversation.name, status=status),
            update_mask=field_mask_pb2.FieldMask(paths=["status"]),
        ),
        metadata=auth,
    )
    writes = [
        stub.CreateMessage(
            pb.CreateMessageRequest(parent=conversation.name, message=assistant("after")),
            metadata=auth,
        ),
        stub.CreateEvent(
            pb.CreateEventRequest(parent=conversation.name, event=pb.Event(type="agent.late")),
            metadata=auth,
        ),
        # Reopening would log a status change after the end a subscriber already received.
        stub.UpdateConversation(
            pb.UpdateConversationRequest(
                conversation=pb.Conversation(
                    name=conversation.name, status=pb.CONVERSATION_STATUS_ACTIVE
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["status"]),
            ),
            metadata=auth,
        ),
    ]
    for write in writes:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await write  # type: ignore[misc]
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(raised.value) == "CONVERSATION_FINISHED"
        assert precondition_violations(raised.value) == [("STATUS", conversation.name)]
    # A retry of a write accepted before the end still gets its result.
    retried = await stub.CreateMessage(
        pb.CreateMessageRequest(
            parent=conversation.name, message=assistant("before"), request_id="before-end"
        ),
        metadata=auth,
    )
    assert retried.message == accepted.message
    # Metadata other than the status stays editable; the log is unchanged.
    retitled = await stub.UpdateConversation(
        pb.UpdateConversationRequest(
            conversation=pb.Conversation(name=conversation.name, title="archived"),
            update_mask=field_mask_pb2.FieldMask(paths=["title"]),
        ),
        metadata=auth,
    )
    assert retitled.conversation.title == "archived"
    assert retitled.conversation.last_sequence == finished.conversation.last_sequence
    assert retitled.conversation.message_count == 1
