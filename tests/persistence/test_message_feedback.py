"""UpdateMessage: a message's feedback is set (and replaced) with the message, validated, kept
by Redis across a service restart, isolated per tenant; the `message.created` log entry and the
rest of the message stay as written."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2
from persistence_test_support import Metadata, field_violations, new_conversation

import callisto
from callisto.api.common.v1 import common_pb2
from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2_grpc as pb_grpc
from callisto.mesh.processes import ServiceProcess, free_port

if TYPE_CHECKING:
    from callisto.api.persistence.v1.persistence_pb2_grpc import PersistenceServiceAsyncStub as Stub

UP, DOWN = pb.FEEDBACK_RATING_UP, pb.FEEDBACK_RATING_DOWN


async def answered(stub: Stub, auth: Metadata) -> pb.Message:
    conversation = await new_conversation(stub, auth)
    await stub.CreateMessage(
        pb.CreateMessageRequest(
            parent=conversation.name, message=pb.Message(role=common_pb2.ROLE_USER, text="q")
        ),
        metadata=auth,
    )
    reply = await stub.CreateMessage(
        pb.CreateMessageRequest(
            parent=conversation.name,
            message=pb.Message(
                role=common_pb2.ROLE_ASSISTANT,
                author="agent-1",
                text="the answer [1]",
                citations=[common_pb2.Citation(document_id="d", chunk_id="c", score=0.5)],
            ),
        ),
        metadata=auth,
    )
    return reply.message


def rating(
    name: str, value: int, comment: str = "", paths: tuple[str, ...] = ("feedback",)
) -> pb.UpdateMessageRequest:
    return pb.UpdateMessageRequest(
        message=pb.Message(
            name=name,
            feedback=pb.Feedback(
                rating=pb.FeedbackRating.ValueType(value), comment=comment, author="reader-1"
            ),
        ),
        update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
    )


async def test_feedback_is_stored_with_the_message_and_the_rest_of_it_is_unchanged(
    stub: Stub, auth: Metadata
) -> None:
    message = await answered(stub, auth)
    updated = (await stub.UpdateMessage(rating(message.name, UP, "clear"), metadata=auth)).message
    assert (updated.feedback.rating, updated.feedback.comment) == (UP, "clear")
    assert updated.feedback.author == "reader-1"
    assert updated.feedback.HasField("update_time")
    without_feedback = pb.Message()
    without_feedback.CopyFrom(updated)
    without_feedback.ClearField("feedback")
    assert without_feedback == message

    got = (await stub.GetMessage(pb.GetMessageRequest(name=message.name), metadata=auth)).message
    assert got == updated
    parent = message.name.rsplit("/messages/", 1)[0]
    listed = await stub.ListMessages(pb.ListMessagesRequest(parent=parent), metadata=auth)
    assert listed.messages[1] == updated
    assert not listed.messages[0].HasField("feedback")


async def test_a_second_rating_replaces_the_first_and_moves_its_time(
    stub: Stub, auth: Metadata
) -> None:
    message = await answered(stub, auth)
    first = (await stub.UpdateMessage(rating(message.name, UP, "ok"), metadata=auth)).message
    # An empty mask means `feedback`.
    second = (
        await stub.UpdateMessage(rating(message.name, DOWN, "", paths=()), metadata=auth)
    ).message
    assert (second.feedback.rating, second.feedback.comment) == (DOWN, "")
    assert second.feedback.update_time.ToNanoseconds() > first.feedback.update_time.ToNanoseconds()
    got = (await stub.GetMessage(pb.GetMessageRequest(name=message.name), metadata=auth)).message
    assert got.feedback.rating == DOWN


async def test_concurrent_ratings_all_apply_and_the_log_entry_keeps_the_original(
    stub: Stub, auth: Metadata
) -> None:
    message = await answered(stub, auth)
    comments = [f"c{i}" for i in range(8)]
    replies = await asyncio.gather(
        *(stub.UpdateMessage(rating(message.name, UP, c), metadata=auth) for c in comments)
    )
    assert sorted(r.message.feedback.comment for r in replies) == comments
    got = (await stub.GetMessage(pb.GetMessageRequest(name=message.name), metadata=auth)).message
    assert got.feedback.comment in comments
    parent = message.name.rsplit("/messages/", 1)[0]
    exported = await stub.ExportConversation(
        pb.ExportConversationRequest(name=parent, include_events=True), metadata=auth
    )
    assert [e.type for e in exported.events] == ["message.created", "message.created"]
    assert exported.events[1].message == message
    conversation = (
        await stub.GetConversation(pb.GetConversationRequest(name=parent), metadata=auth)
    ).conversation
    assert (conversation.message_count, conversation.last_sequence) == (2, 2)


async def test_a_finished_conversation_still_takes_feedback(stub: Stub, auth: Metadata) -> None:
    message = await answered(stub, auth)
    parent = message.name.rsplit("/messages/", 1)[0]
    await stub.UpdateConversation(
        pb.UpdateConversationRequest(
            conversation=pb.Conversation(name=parent, status=pb.CONVERSATION_STATUS_COMPLETED),
            update_mask=field_mask_pb2.FieldMask(paths=["status"]),
        ),
        metadata=auth,
    )
    updated = (await stub.UpdateMessage(rating(message.name, DOWN), metadata=auth)).message
    assert updated.feedback.rating == DOWN


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.UpdateMessageRequest(), "message"),
        (rating("conversations/c/messages/0", UP), "message.name"),
        (rating("conversations/c/messages/x", UP), "message.name"),
        (rating("sessions/c/messages/1", UP), "message.name"),
        (rating("", UP), "message.name"),
        (rating("conversations/c/messages/1", 0), "message.feedback.rating"),
        (rating("conversations/c/messages/1", 7), "message.feedback.rating"),
        (rating("conversations/c/messages/1", UP, "x" * 4097), "message.feedback.comment"),
        (rating("conversations/c/messages/1", UP, paths=("text",)), "update_mask"),
        (rating("conversations/c/messages/1", UP, paths=("feedback", "role")), "update_mask"),
        (
            pb.UpdateMessageRequest(message=pb.Message(name="conversations/c/messages/1")),
            "message.feedback",
        ),
    ],
)
async def test_invalid_updates_name_the_field(
    stub: Stub, auth: Metadata, request_: pb.UpdateMessageRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.UpdateMessage(request_, metadata=auth)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(error.value)


async def test_a_comment_of_exactly_4096_characters_is_accepted(stub: Stub, auth: Metadata) -> None:
    message = await answered(stub, auth)
    updated = (
        await stub.UpdateMessage(rating(message.name, UP, "é" * 4096), metadata=auth)
    ).message
    assert len(updated.feedback.comment) == 4096


async def test_missing_messages_and_other_tenants_messages_are_not_found(
    stub: Stub, auth: Metadata, other_auth: Metadata
) -> None:
    message = await answered(stub, auth)
    parent = message.name.rsplit("/messages/", 1)[0]
    for name, metadata in [
        (message.name, other_auth),
        (f"{parent}/messages/3", auth),
        ("conversations/no-such-conversation/messages/1", auth),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.UpdateMessage(rating(name, DOWN), metadata=metadata)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    got = (await stub.GetMessage(pb.GetMessageRequest(name=message.name), metadata=auth)).message
    assert not got.HasField("feedback")


async def test_the_sdk_sets_feedback(
    persistence_client: callisto.Client, stub: Stub, auth: Metadata
) -> None:
    message = await answered(stub, auth)
    updated = await persistence_client.persistence.update_message_feedback(
        message.name, DOWN, "wrong figure", author="reader-2"
    )
    assert (updated.feedback.rating, updated.feedback.comment) == (DOWN, "wrong figure")
    assert updated.feedback.author == "reader-2"
    with pytest.raises(callisto.errors.InvalidArgument) as error:
        await persistence_client.persistence.update_message_feedback(message.name, UP, "x" * 5000)
    assert "message.feedback.comment" in error.value.field_violations


@pytest_asyncio.fixture
async def restartable(service_env: dict[str, str], tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    """A second persistence process over the session's Redis, which the test may restart."""
    service = ServiceProcess(
        "persistence", free_port(), env=service_env, log_path=tmp_path / "persistence.log"
    )
    service.start()
    await asyncio.to_thread(service.wait_healthy)
    yield service
    service.stop()


async def test_feedback_survives_a_service_restart(
    restartable: ServiceProcess, auth: Metadata
) -> None:
    async with grpc.aio.insecure_channel(restartable.address) as channel:
        stub = pb_grpc.PersistenceServiceStub(channel)
        message = await answered(stub, auth)
        updated = (
            await stub.UpdateMessage(rating(message.name, UP, "kept"), metadata=auth)
        ).message
    await asyncio.to_thread(restartable.stop)
    await asyncio.to_thread(restartable.start)
    await asyncio.to_thread(restartable.wait_healthy)
    async with grpc.aio.insecure_channel(restartable.address) as channel:
        stub = pb_grpc.PersistenceServiceStub(channel)
        got = (
            await stub.GetMessage(pb.GetMessageRequest(name=message.name), metadata=auth)
        ).message
    assert got == updated
