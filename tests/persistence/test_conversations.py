"""Conversations over gRPC: CRUD, validation, auth, tenant isolation, etags, idempotency,
listing with filters and pagination."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from persistence_test_support import (
    Metadata,
    bearer,
    error_reason,
    field_violations,
    new_conversation,
)

from callisto.api.persistence.v1 import persistence_pb2 as pb

if TYPE_CHECKING:
    from callisto.api.persistence.v1.persistence_pb2_grpc import PersistenceServiceAsyncStub as Stub


async def test_conversation_crud_round_trip(stub: Stub, auth: Metadata) -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"scenario": "procurement", "turns": 4})
    created = (
        await stub.CreateConversation(
            pb.CreateConversationRequest(
                conversation=pb.Conversation(
                    title="Pricing talk",
                    participants=[
                        pb.Participant(
                            id="buyer",
                            display_name="Ann",
                            kind=pb.PARTICIPANT_KIND_HUMAN,
                            role="procurement lead",
                            company="acme",
                        )
                    ],
                    tags=["client:acme", "demo"],
                    metadata=metadata,
                ),
                conversation_id=f"crud-{uuid.uuid4().hex[:8]}",
            ),
            metadata=auth,
        )
    ).conversation
    assert created.status == pb.CONVERSATION_STATUS_ACTIVE
    assert created.etag == '"1"'
    assert created.metadata == metadata
    assert created.participants[0].company == "acme"
    assert not created.HasField("expire_time")

    got = await stub.GetConversation(pb.GetConversationRequest(name=created.name), metadata=auth)
    assert got.conversation == created

    updated = (
        await stub.UpdateConversation(
            pb.UpdateConversationRequest(
                conversation=pb.Conversation(
                    name=created.name, title="Renamed", status=pb.CONVERSATION_STATUS_PAUSED
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["title", "status"]),
            ),
            metadata=auth,
        )
    ).conversation
    assert updated.title == "Renamed"
    assert updated.status == pb.CONVERSATION_STATUS_PAUSED
    assert list(updated.tags) == ["client:acme", "demo"]
    assert updated.etag == '"2"'
    assert updated.last_sequence == 1  # the status change was logged

    await stub.DeleteConversation(pb.DeleteConversationRequest(name=created.name), metadata=auth)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetConversation(pb.GetConversationRequest(name=created.name), metadata=auth)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_create_conversation_lists_every_invalid_field(stub: Stub, auth: Metadata) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.CreateConversation(
            pb.CreateConversationRequest(
                conversation=pb.Conversation(
                    title="x" * 257,
                    tags=["ok", ""],
                    status=99,  # type: ignore[arg-type]
                    participants=[pb.Participant(id=""), pb.Participant(id="a", kind=7)],  # type: ignore[arg-type]
                ),
                conversation_id="Bad_Id",
            ),
            metadata=auth,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error.value)) == {
        "conversation_id",
        "conversation.title",
        "conversation.tags[1]",
        "conversation.status",
        "conversation.participants[0].id",
        "conversation.participants[1].kind",
    }


async def test_requests_without_conversation_or_with_bad_names_are_invalid(
    stub: Stub, auth: Metadata
) -> None:
    cases = [
        (stub.CreateConversation(pb.CreateConversationRequest(), metadata=auth), "conversation"),
        (stub.GetConversation(pb.GetConversationRequest(name="conv/x"), metadata=auth), "name"),
        (stub.GetConversation(pb.GetConversationRequest(), metadata=auth), "name"),
        (
            stub.DeleteConversation(
                pb.DeleteConversationRequest(name="conversations/a", etag="v1"), metadata=auth
            ),
            "etag",
        ),
        (
            stub.UpdateConversation(
                pb.UpdateConversationRequest(
                    conversation=pb.Conversation(name="conversations/a"),
                    update_mask=field_mask_pb2.FieldMask(paths=["create_time"]),
                ),
                metadata=auth,
            ),
            "update_mask",
        ),
        (
            stub.ListConversations(pb.ListConversationsRequest(order_by="title"), metadata=auth),
            "order_by",
        ),
        (
            stub.ListConversations(pb.ListConversationsRequest(page_size=1001), metadata=auth),
            "page_size",
        ),
        (
            stub.ListConversations(pb.ListConversationsRequest(page_token="zz"), metadata=auth),
            "page_token",
        ),
    ]
    for call, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in field_violations(error.value)


async def test_missing_or_invalid_api_key_is_unauthenticated(stub: Stub) -> None:
    request = pb.ListConversationsRequest()
    for metadata in ((), bearer("cal_0000000000000000_" + "a" * 43), (("authorization", "x"),)):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.ListConversations(request, metadata=metadata)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_another_tenants_conversation_is_not_found_and_not_listed(
    stub: Stub, auth: Metadata, other_auth: Metadata
) -> None:
    tag = f"iso-{uuid.uuid4().hex[:8]}"
    mine = await new_conversation(stub, auth, tags=[tag])
    calls = [
        stub.GetConversation(pb.GetConversationRequest(name=mine.name), metadata=other_auth),
        stub.DeleteConversation(pb.DeleteConversationRequest(name=mine.name), metadata=other_auth),
        stub.UpdateConversation(
            pb.UpdateConversationRequest(conversation=pb.Conversation(name=mine.name, title="x")),
            metadata=other_auth,
        ),
        stub.CreateMessage(
            pb.CreateMessageRequest(parent=mine.name, message=pb.Message(role=2, text="hi")),
            metadata=other_auth,
        ),
        stub.ListMessages(pb.ListMessagesRequest(parent=mine.name), metadata=other_auth),
        stub.ListEvents(pb.ListEventsRequest(parent=mine.name), metadata=other_auth),
        stub.ExportConversation(pb.ExportConversationRequest(name=mine.name), metadata=other_auth),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    stream = stub.SubscribeEvents(pb.SubscribeEventsRequest(parent=mine.name), metadata=other_auth)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stream.read()
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    theirs = await stub.ListConversations(
        pb.ListConversationsRequest(tags=[tag]), metadata=other_auth
    )
    assert list(theirs.conversations) == []
    # The owner still sees it: the other tenant's delete did nothing.
    ours = await stub.ListConversations(pb.ListConversationsRequest(tags=[tag]), metadata=auth)
    assert [c.name for c in ours.conversations] == [mine.name]


async def test_stale_etag_is_rejected_with_aborted(stub: Stub, auth: Metadata) -> None:
    created = await new_conversation(stub, auth)
    first = await stub.UpdateConversation(
        pb.UpdateConversationRequest(
            conversation=pb.Conversation(name=created.name, title="a", etag=created.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["title"]),
        ),
        metadata=auth,
    )
    assert first.conversation.etag == '"2"'
    for call in (
        stub.UpdateConversation(
            pb.UpdateConversationRequest(
                conversation=pb.Conversation(name=created.name, title="b", etag=created.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
            ),
            metadata=auth,
        ),
        stub.DeleteConversation(
            pb.DeleteConversationRequest(name=created.name, etag=created.etag), metadata=auth
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.ABORTED
        assert error_reason(error.value) == "ETAG_MISMATCH"
    got = await stub.GetConversation(pb.GetConversationRequest(name=created.name), metadata=auth)
    assert got.conversation.title == "a"
    await stub.DeleteConversation(
        pb.DeleteConversationRequest(name=created.name, etag=first.conversation.etag),
        metadata=auth,
    )


async def test_concurrent_conditional_updates_let_exactly_one_win(
    stub: Stub, auth: Metadata
) -> None:
    created = await new_conversation(stub, auth)

    async def attempt(title: str) -> bool:
        try:
            await stub.UpdateConversation(
                pb.UpdateConversationRequest(
                    conversation=pb.Conversation(name=created.name, title=title, etag=created.etag),
                    update_mask=field_mask_pb2.FieldMask(paths=["title"]),
                ),
                metadata=auth,
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.ABORTED
            return False
        return True

    results = await asyncio.gather(*(attempt(f"t{i}") for i in range(10)))
    assert sum(results) == 1


async def test_create_with_same_request_id_returns_first_conversation(
    stub: Stub, auth: Metadata
) -> None:
    request = pb.CreateConversationRequest(
        conversation=pb.Conversation(title="once"), request_id=f"req-{uuid.uuid4()}"
    )
    first = await stub.CreateConversation(request, metadata=auth)
    again = await stub.CreateConversation(request, metadata=auth)
    assert again.conversation.name == first.conversation.name
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.CreateConversation(
            pb.CreateConversationRequest(
                conversation=pb.Conversation(),
                conversation_id=first.conversation.name.split("/")[1],
            ),
            metadata=auth,
        )
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_listing_pages_through_120_conversations_without_duplicates_or_gaps(
    stub: Stub, auth: Metadata
) -> None:
    tag = f"page-{uuid.uuid4().hex[:8]}"
    created = await asyncio.gather(
        *(
            new_conversation(stub, auth, tags=[tag, "even" if i % 2 == 0 else "odd"])
            for i in range(125)
        )
    )
    names = {c.name for c in created}
    for order in ("", "create_time"):
        seen: list[pb.Conversation] = []
        token = ""
        while True:
            page = await stub.ListConversations(
                pb.ListConversationsRequest(
                    tags=[tag], page_size=17, page_token=token, order_by=order
                ),
                metadata=auth,
            )
            seen.extend(page.conversations)
            # Inserts while paging land outside the remaining range and never shift a page.
            await new_conversation(stub, auth, tags=[tag, "late"])
            token = page.next_page_token
            if not token:
                break
        assert len(seen) == len({c.name for c in seen})
        assert names <= {c.name for c in seen}
        keys = [(c.create_time.ToMilliseconds(), c.name) for c in seen]
        assert keys == sorted(keys, reverse=order == "")
    even = await stub.ListConversations(
        pb.ListConversationsRequest(tags=[tag, "even"], page_size=1000), metadata=auth
    )
    assert len(even.conversations) == 63
    # A token only works with the query that issued it.
    first = await stub.ListConversations(
        pb.ListConversationsRequest(tags=[tag], page_size=5), metadata=auth
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.ListConversations(
            pb.ListConversationsRequest(tags=["other"], page_token=first.next_page_token),
            metadata=auth,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_listing_filters_by_status_participant_and_time_range(
    stub: Stub, auth: Metadata
) -> None:
    tag = f"filter-{uuid.uuid4().hex[:8]}"
    early = await new_conversation(
        stub, auth, tags=[tag], participants=[pb.Participant(id="buyer", company="initech")]
    )
    await asyncio.sleep(0.01)
    late = await new_conversation(
        stub, auth, tags=[tag], participants=[pb.Participant(id="seller")]
    )
    await stub.UpdateConversation(
        pb.UpdateConversationRequest(
            conversation=pb.Conversation(name=late.name, status=pb.CONVERSATION_STATUS_COMPLETED),
            update_mask=field_mask_pb2.FieldMask(paths=["status"]),
        ),
        metadata=auth,
    )

    async def names(**query: object) -> list[str]:
        reply = await stub.ListConversations(
            pb.ListConversationsRequest(tags=[tag], **query),  # type: ignore[arg-type]
            metadata=auth,
        )
        return [c.name for c in reply.conversations]

    assert await names(status=pb.CONVERSATION_STATUS_COMPLETED) == [late.name]
    assert await names(participant="initech") == [early.name]
    assert await names(participant="seller") == [late.name]
    assert await names(create_time_end=late.create_time) == [early.name]
    assert await names(create_time_start=late.create_time) == [late.name]
    assert await names() == [late.name, early.name]
