"""Retention: the tenant policy, per-resource ttl overrides, expire_time and real expiry."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from persistence_test_support import Metadata, field_violations

from callisto.api.common.v1 import common_pb2
from callisto.api.persistence.v1 import persistence_pb2 as pb

if TYPE_CHECKING:
    from callisto.api.persistence.v1.persistence_pb2_grpc import PersistenceServiceAsyncStub as Stub


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromMilliseconds(int(value * 1000))
    return duration


async def test_conversation_ttl_sets_expire_time_and_the_data_expires(
    stub: Stub, auth: Metadata
) -> None:
    tag = f"ttl-{uuid.uuid4().hex[:8]}"
    created = (
        await stub.CreateConversation(
            pb.CreateConversationRequest(
                conversation=pb.Conversation(tags=[tag], ttl=seconds(1.5))
            ),
            metadata=auth,
        )
    ).conversation
    now_ms = time.time() * 1000
    assert created.HasField("expire_time")
    assert 1000 < created.expire_time.ToMilliseconds() - now_ms <= 1600
    message = await stub.CreateMessage(
        pb.CreateMessageRequest(
            parent=created.name, message=pb.Message(role=common_pb2.ROLE_USER, text="bye")
        ),
        metadata=auth,
    )
    kept = await stub.CreateConversation(
        pb.CreateConversationRequest(conversation=pb.Conversation(tags=[tag])), metadata=auth
    )
    assert not kept.conversation.HasField("expire_time")
    await asyncio.sleep(1.8)
    for call in (
        stub.GetConversation(pb.GetConversationRequest(name=created.name), metadata=auth),
        stub.GetMessage(pb.GetMessageRequest(name=message.message.name), metadata=auth),
        stub.ListEvents(pb.ListEventsRequest(parent=created.name), metadata=auth),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListConversations(pb.ListConversationsRequest(tags=[tag]), metadata=auth)
    assert [c.name for c in listed.conversations] == [kept.conversation.name]


async def test_tenant_policy_applies_to_sessions_without_their_own_ttl(
    stub: Stub, other_auth: Metadata
) -> None:
    policy = (
        await stub.UpdateRetentionPolicy(
            pb.UpdateRetentionPolicyRequest(
                retention_policy=pb.RetentionPolicy(
                    name="retentionPolicy", session_ttl=seconds(1.0)
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["session_ttl"]),
            ),
            metadata=other_auth,
        )
    ).retention_policy
    try:
        assert policy.session_ttl.ToMilliseconds() == 1000
        assert policy.conversation_ttl.ToMilliseconds() == 0
        assert policy.update_time.seconds > 0
        got = await stub.GetRetentionPolicy(
            pb.GetRetentionPolicyRequest(name="retentionPolicy"), metadata=other_auth
        )
        assert got.retention_policy == policy
        short = (
            await stub.CreateSession(
                pb.CreateSessionRequest(session=pb.Session()), metadata=other_auth
            )
        ).session
        forever = (
            await stub.CreateSession(
                pb.CreateSessionRequest(session=pb.Session(ttl=seconds(0))), metadata=other_auth
            )
        ).session
        assert short.HasField("expire_time")
        assert not forever.HasField("expire_time")
        # A write refreshes the ttl from that moment.
        await asyncio.sleep(0.6)
        refreshed = (
            await stub.UpdateSession(
                pb.UpdateSessionRequest(session=pb.Session(name=short.name, kind="touched")),
                metadata=other_auth,
            )
        ).session
        assert refreshed.expire_time.ToMilliseconds() > short.expire_time.ToMilliseconds()
        await asyncio.sleep(0.7)
        await stub.GetSession(pb.GetSessionRequest(name=short.name), metadata=other_auth)
        await asyncio.sleep(0.6)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GetSession(pb.GetSessionRequest(name=short.name), metadata=other_auth)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        await stub.GetSession(pb.GetSessionRequest(name=forever.name), metadata=other_auth)
    finally:
        await stub.UpdateRetentionPolicy(
            pb.UpdateRetentionPolicyRequest(
                retention_policy=pb.RetentionPolicy(name="retentionPolicy"),
                update_mask=field_mask_pb2.FieldMask(paths=["conversation_ttl", "session_ttl"]),
            ),
            metadata=other_auth,
        )


async def test_retention_requests_are_validated(stub: Stub, auth: Metadata) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.GetRetentionPolicy(pb.GetRetentionPolicyRequest(name="policy"), metadata=auth)
    assert set(field_violations(error.value)) == {"name"}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.UpdateRetentionPolicy(
            pb.UpdateRetentionPolicyRequest(
                retention_policy=pb.RetentionPolicy(
                    name="other", conversation_ttl=duration_pb2.Duration(seconds=-5)
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["conversation_ttl", "ttl"]),
            ),
            metadata=auth,
        )
    assert set(field_violations(error.value)) == {
        "retention_policy.name",
        "retention_policy.conversation_ttl",
        "update_mask",
    }
