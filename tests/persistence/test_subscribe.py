"""SubscribeEvents: replay then live follow, resume without gap or duplicate, end on completion,
heartbeats, terminal errors on deletion and on shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2
from persistence_test_support import Metadata, new_conversation

from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2_grpc as pb_grpc
from callisto.mesh.processes import ServiceProcess, free_port

if TYPE_CHECKING:
    from callisto.api.persistence.v1.persistence_pb2_grpc import PersistenceServiceAsyncStub as Stub

Responses = grpc.aio.UnaryStreamCall[pb.SubscribeEventsRequest, pb.SubscribeEventsResponse]


@pytest.fixture(scope="module")
def fast_service(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A second persistence process with a short heartbeat (and one a test may shut down)."""
    env = {**service_env, "CALLISTO_PERSISTENCE_HEARTBEAT_SECONDS": "0.3"}
    log = tmp_path_factory.mktemp("persistence-fast") / "persistence.log"
    service = ServiceProcess("persistence", free_port(), env=env, log_path=log)
    service.start()
    service.wait_healthy()
    yield service
    service.stop()


@pytest_asyncio.fixture(scope="module")
async def fast_stub(fast_service: ServiceProcess) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(fast_service.address) as channel:
        yield pb_grpc.PersistenceServiceStub(channel)


async def append(stub: Stub, auth: Metadata, name: str, count: int, kind: str = "tick") -> None:
    for _ in range(count):
        await stub.CreateEvent(
            pb.CreateEventRequest(parent=name, event=pb.Event(type=kind)), metadata=auth
        )


async def finish(stub: Stub, auth: Metadata, name: str) -> None:
    await stub.UpdateConversation(
        pb.UpdateConversationRequest(
            conversation=pb.Conversation(name=name, status=pb.CONVERSATION_STATUS_COMPLETED),
            update_mask=field_mask_pb2.FieldMask(paths=["status"]),
        ),
        metadata=auth,
    )


async def next_response(call: Responses, within: float = 5.0) -> pb.SubscribeEventsResponse:
    response = await asyncio.wait_for(call.read(), within)
    assert isinstance(response, pb.SubscribeEventsResponse), response
    return response


async def test_subscription_replays_then_follows_live(stub: Stub, auth: Metadata) -> None:
    conversation = await new_conversation(stub, auth)
    await append(stub, auth, conversation.name, 3)
    call = stub.SubscribeEvents(pb.SubscribeEventsRequest(parent=conversation.name), metadata=auth)
    replayed = [await next_response(call) for _ in range(3)]
    assert [(r.sequence, r.event.sequence) for r in replayed] == [(1, 1), (2, 2), (3, 3)]
    writer = asyncio.create_task(append(stub, auth, conversation.name, 2, "live.event"))
    live = [await next_response(call) for _ in range(2)]
    await writer
    assert [(r.sequence, r.event.type) for r in live] == [(4, "live.event"), (5, "live.event")]
    call.cancel()


async def test_resumed_subscriptions_see_every_event_once_under_concurrent_appends(
    stub: Stub, auth: Metadata
) -> None:
    conversation = await new_conversation(stub, auth)
    total = 150

    async def writer() -> None:
        for start in range(0, total, 10):
            await asyncio.gather(
                *(append(stub, auth, conversation.name, 1) for _ in range(min(10, total - start)))
            )
            await asyncio.sleep(0.005)
        await finish(stub, auth, conversation.name)

    task = asyncio.create_task(writer())
    received: list[int] = []
    last = 0
    ended: pb.SubscribeEventsResponse | None = None
    while ended is None:
        call = stub.SubscribeEvents(
            pb.SubscribeEventsRequest(parent=conversation.name, after_sequence=last),
            metadata=auth,
        )
        # Drop the connection after a few events, as a flaky network would.
        for _ in range(23):
            response = await next_response(call)
            assert response.WhichOneof("kind") in ("event", "end", "heartbeat")
            if response.HasField("end"):
                ended = response
                break
            if response.HasField("event"):
                received.append(response.event.sequence)
                last = response.sequence
        call.cancel()
    await task
    # `total` ticks and the status change, each exactly once and in order.
    assert received == list(range(1, total + 2))
    assert ended.end.last_sequence == total + 1
    assert ended.end.status == pb.CONVERSATION_STATUS_COMPLETED
    assert ended.sequence == total + 1


async def test_finished_conversation_ends_after_the_last_event(stub: Stub, auth: Metadata) -> None:
    conversation = await new_conversation(stub, auth)
    await append(stub, auth, conversation.name, 2)
    await finish(stub, auth, conversation.name)
    call = stub.SubscribeEvents(pb.SubscribeEventsRequest(parent=conversation.name), metadata=auth)
    kinds = [(await next_response(call)) for _ in range(4)]
    assert [r.WhichOneof("kind") for r in kinds] == ["event", "event", "event", "end"]
    assert kinds[2].event.type == "conversation.status_changed"
    assert kinds[2].event.data["status"] == "CONVERSATION_STATUS_COMPLETED"
    assert kinds[3].end.last_sequence == 3
    assert await asyncio.wait_for(call.read(), 5) == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_after_sequence_beyond_the_log_waits_for_new_events(
    stub: Stub, auth: Metadata
) -> None:
    conversation = await new_conversation(stub, auth)
    await append(stub, auth, conversation.name, 1)
    call = stub.SubscribeEvents(
        pb.SubscribeEventsRequest(parent=conversation.name, after_sequence=3), metadata=auth
    )
    await append(stub, auth, conversation.name, 3)
    response = await next_response(call)
    assert response.event.sequence == 4
    call.cancel()


async def test_deleting_the_conversation_ends_followers_with_not_found(
    stub: Stub, auth: Metadata
) -> None:
    conversation = await new_conversation(stub, auth)
    await append(stub, auth, conversation.name, 1)
    call = stub.SubscribeEvents(pb.SubscribeEventsRequest(parent=conversation.name), metadata=auth)
    assert (await next_response(call)).event.sequence == 1
    await stub.DeleteConversation(
        pb.DeleteConversationRequest(name=conversation.name), metadata=auth
    )
    response = await next_response(call)
    assert response.HasField("error")
    assert response.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert response.sequence == 1


async def test_idle_subscription_gets_heartbeats(fast_stub: Stub, auth: Metadata) -> None:
    conversation = await new_conversation(fast_stub, auth)
    await append(fast_stub, auth, conversation.name, 2)
    call = fast_stub.SubscribeEvents(
        pb.SubscribeEventsRequest(parent=conversation.name, after_sequence=1), metadata=auth
    )
    assert (await next_response(call)).event.sequence == 2
    beats = [await next_response(call, within=2.0) for _ in range(2)]
    for beat in beats:
        assert beat.HasField("heartbeat")
        assert beat.sequence == beat.heartbeat.last_sequence == 2
    call.cancel()


async def test_shutdown_ends_followers_with_unavailable_and_a_resume_point(
    fast_service: ServiceProcess, fast_stub: Stub, auth: Metadata
) -> None:
    conversation = await new_conversation(fast_stub, auth)
    await append(fast_stub, auth, conversation.name, 2)
    call = fast_stub.SubscribeEvents(
        pb.SubscribeEventsRequest(parent=conversation.name), metadata=auth
    )
    for _ in range(2):
        await next_response(call)
    fast_service.send_signal(signal.SIGTERM)
    while True:
        response = await next_response(call)
        if not response.HasField("heartbeat"):
            break
    assert response.HasField("error")
    assert response.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "resume from sequence 2" in response.error.message
    assert response.sequence == 2
    assert await asyncio.to_thread(fast_service.wait, 10) == 0
