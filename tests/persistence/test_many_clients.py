"""Many clients at once on the real Redis: more live subscribers and concurrent writers than
redis-py's default pool holds (100 connections) all get their answers, none an UNAVAILABLE;
and a store with fewer connections than callers queues them.

Each subscriber blocks in an XREAD on its own follow connection while the writers' scripts
run, so a pool that refuses callers past its size turns into "storage is unavailable" here."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from persistence_test_support import Metadata, new_conversation

from callisto.api.common.v1 import common_pb2
from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.mesh.processes import RedisServer
from callisto.services.persistence.models import (
    ConversationFields,
    ConversationStatus,
    EndOfLog,
    StoredEvent,
)
from callisto.services.persistence.redis_store import RedisStore

if TYPE_CHECKING:
    from callisto.api.persistence.v1.persistence_pb2_grpc import PersistenceServiceAsyncStub as Stub

pytestmark = pytest.mark.timeout(240)

Responses = grpc.aio.UnaryStreamCall[pb.SubscribeEventsRequest, pb.SubscribeEventsResponse]

# Comfortably past redis-py's default of 100 connections a pool.
CONVERSATIONS = 160
ROUNDS = 4


def state(step: int) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update({"step": step})
    return value


async def run_like_a_conversation(stub: Stub, auth: Metadata, name: str) -> None:
    """What a run writes: events, a message, a checkpoint (etag compare-and-set) per round,
    then the finished status."""
    session = (
        await stub.CreateSession(
            pb.CreateSessionRequest(session=pb.Session(kind="many-clients", state=state(0))),
            metadata=auth,
        )
    ).session
    for step in range(1, ROUNDS + 1):
        await stub.CreateEvent(
            pb.CreateEventRequest(parent=name, event=pb.Event(type="turn.started")), metadata=auth
        )
        await stub.CreateMessage(
            pb.CreateMessageRequest(
                parent=name, message=pb.Message(role=common_pb2.ROLE_ASSISTANT, text=f"{step}")
            ),
            metadata=auth,
        )
        session = (
            await stub.UpdateSession(
                pb.UpdateSessionRequest(
                    session=pb.Session(name=session.name, state=state(step), etag=session.etag),
                    update_mask=field_mask_pb2.FieldMask(paths=["state"]),
                ),
                metadata=auth,
            )
        ).session
    await stub.UpdateConversation(
        pb.UpdateConversationRequest(
            conversation=pb.Conversation(name=name, status=pb.CONVERSATION_STATUS_COMPLETED),
            update_mask=field_mask_pb2.FieldMask(paths=["status"]),
        ),
        metadata=auth,
    )
    assert session.state["step"] == ROUNDS


async def follow_to_the_end(call: Responses) -> tuple[list[int], pb.EndOfStream]:
    """Every event sequence of the stream up to its end marker."""
    sequences: list[int] = []
    while True:
        response = await call.read()
        if not isinstance(response, pb.SubscribeEventsResponse):  # the end of the stream
            break
        if response.HasField("event"):
            sequences.append(response.event.sequence)
        elif response.HasField("end"):
            return sequences, response.end
    raise AssertionError(f"the stream ended without its end marker after {sequences}")


async def test_subscribers_and_writers_past_the_pool_size_all_succeed(
    stub: Stub, auth: Metadata
) -> None:
    names = [
        (await new_conversation(stub, auth, title=f"many-{i}")).name for i in range(CONVERSATIONS)
    ]
    for name in names:
        await stub.CreateEvent(
            pb.CreateEventRequest(parent=name, event=pb.Event(type="ready")), metadata=auth
        )
    calls = [
        stub.SubscribeEvents(pb.SubscribeEventsRequest(parent=name), metadata=auth)
        for name in names
    ]
    # Each subscriber has replayed its log and is following it live before anyone writes.
    for call in calls:
        first = await asyncio.wait_for(call.read(), 60)
        assert isinstance(first, pb.SubscribeEventsResponse)
        assert first.event.type == "ready"
    followers = [asyncio.create_task(follow_to_the_end(call)) for call in calls]
    writers = await asyncio.gather(
        *(run_like_a_conversation(stub, auth, name) for name in names), return_exceptions=True
    )
    failed = [repr(outcome) for outcome in writers if isinstance(outcome, BaseException)]
    assert failed == []
    followed = await asyncio.gather(*followers, return_exceptions=True)
    broken = [repr(outcome) for outcome in followed if isinstance(outcome, BaseException)]
    assert broken == []
    # ready, then per round an event and a message.created, then the status change.
    last = 1 + 2 * ROUNDS + 1
    for outcome in followed:
        assert not isinstance(outcome, BaseException)
        sequences, end = outcome
        assert [1, *sequences] == list(range(1, last + 1))
        assert end.last_sequence == last
        assert end.status == pb.CONVERSATION_STATUS_COMPLETED


async def test_a_store_with_fewer_connections_than_callers_queues_them(
    redis_server: RedisServer,
) -> None:
    """Past its pool sizes the store makes callers wait for a connection (writes) or poll
    their log (followers) instead of refusing them: 2 connections, 1 follow connection,
    6 followers and 24 writers at once."""
    store = RedisStore(redis_server.url, connections=2, follow_connections=1)
    tenant = f"queued-{uuid.uuid4().hex[:8]}"
    fields = ConversationFields("q", (), (), ConversationStatus.ACTIVE, "", 0)
    ids = [f"c{i}" for i in range(6)]
    stopping = asyncio.Event()
    try:
        for conversation_id in ids:
            await store.create_conversation(tenant, conversation_id, fields, "")

        async def follow(conversation_id: str) -> list[int]:
            got: list[int] = []
            async for item in store.follow_events(tenant, conversation_id, 0, 60.0, stopping):
                if isinstance(item, StoredEvent):
                    got.append(item.sequence)
                elif isinstance(item, EndOfLog):
                    return got
            raise AssertionError(f"{conversation_id}: the follow ended without EndOfLog")

        async def write(conversation_id: str, n: int) -> None:
            await store.create_event(
                tenant, conversation_id, "tick", "{}", f"{conversation_id}-{n}"
            )

        followers = [asyncio.create_task(follow(c)) for c in ids]
        await asyncio.gather(*(write(c, n) for c in ids for n in range(4)))
        for conversation_id in ids:
            await store.update_conversation(
                tenant,
                conversation_id,
                {"status": str(int(ConversationStatus.COMPLETED))},
                None,
                "{}",
            )
        followed = await asyncio.wait_for(asyncio.gather(*followers), 60)
        # Four ticks and the status change each, in order, none twice.
        assert followed == [[1, 2, 3, 4, 5]] * len(ids)
    finally:
        stopping.set()
        await store.close()
