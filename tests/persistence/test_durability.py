"""Durability and health against a private redis-server this module may kill: acknowledged
writes survive a SIGKILL with `appendfsync always`, and health follows Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from persistence_test_support import Metadata, bearer, new_conversation

from callisto.api.common.v1 import common_pb2
from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2_grpc as pb_grpc
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.services.common.auth import create_api_key

if TYPE_CHECKING:
    from callisto.api.persistence.v1.persistence_pb2_grpc import PersistenceServiceAsyncStub as Stub

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
T = TypeVar("T")


@dataclass
class Mesh:
    redis: RedisServer
    service: ServiceProcess
    stub: Stub
    health: health_pb2_grpc.HealthStub
    auth: Metadata


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-always"), appendfsync="always")
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="module")
async def mesh(
    private_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    key = await create_api_key(private_redis.url, "durable", label="tests")
    env = {
        "CALLISTO_REDIS_URL": private_redis.url,
        "CALLISTO_AUTH_CACHE_SECONDS": "0",
        "CALLISTO_HEALTH_INTERVAL_SECONDS": "0.2",
        "CALLISTO_SHUTDOWN_GRACE_SECONDS": "2",
    }
    log = Path(tmp_path_factory.mktemp("persistence-durable")) / "persistence.log"
    service = ServiceProcess("persistence", free_port(), env=env, log_path=log)
    service.start()
    await asyncio.to_thread(service.wait_healthy)
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield Mesh(
            private_redis,
            service,
            pb_grpc.PersistenceServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
            bearer(key),
        )
    service.stop()


async def eventually(make: Callable[[], Awaitable[T]], within: float = 5.0) -> T:
    """Retries UNAVAILABLE as a client honouring RetryInfo does: right after Redis comes back
    the service may still be reconnecting."""
    async with asyncio.timeout(within):
        while True:
            try:
                return await make()
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
            await asyncio.sleep(0.05)


async def wait_health(mesh: Mesh, wanted: int, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while True:
            reply = await mesh.health.Check(health_pb2.HealthCheckRequest(service=""))
            if reply.status == wanted:
                return
            await asyncio.sleep(0.05)


async def test_acknowledged_writes_survive_a_redis_sigkill_with_appendfsync_always(
    mesh: Mesh,
) -> None:
    stub, auth = mesh.stub, mesh.auth
    conversations = [await new_conversation(stub, auth, title=f"c{i}") for i in range(5)]
    for conversation in conversations:
        await asyncio.gather(
            *(
                stub.CreateMessage(
                    pb.CreateMessageRequest(
                        parent=conversation.name,
                        message=pb.Message(role=common_pb2.ROLE_USER, text=f"m{i}"),
                    ),
                    metadata=auth,
                )
                for i in range(10)
            )
        )
    document = struct_pb2.Struct()
    document.update({"step": 7})
    session = (
        await stub.CreateSession(
            pb.CreateSessionRequest(session=pb.Session(kind="workflow", state=document)),
            metadata=auth,
        )
    ).session
    # Killed right after the last acknowledgement: only what was fsynced can come back.
    mesh.redis.kill()
    await wait_health(mesh, NOT_SERVING)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.GetSession(pb.GetSessionRequest(name=session.name), metadata=auth)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    await asyncio.to_thread(mesh.redis.start)
    await wait_health(mesh, SERVING)

    for conversation in conversations:
        got = (
            await eventually(
                lambda name=conversation.name: stub.GetConversation(
                    pb.GetConversationRequest(name=name), metadata=auth
                )
            )
        ).conversation
        assert (got.message_count, got.last_sequence) == (10, 10)
        exported = await eventually(
            lambda name=conversation.name: stub.ExportConversation(
                pb.ExportConversationRequest(name=name, include_events=True), metadata=auth
            )
        )
        assert sorted(m.text for m in exported.messages) == [f"m{i}" for i in range(10)]
        assert [e.sequence for e in exported.events] == list(range(1, 11))
    back = (
        await eventually(
            lambda: stub.GetSession(pb.GetSessionRequest(name=session.name), metadata=auth)
        )
    ).session
    assert back == session


async def test_health_follows_redis_and_followers_get_a_resume_point(mesh: Mesh) -> None:
    stub, auth = mesh.stub, mesh.auth
    await wait_health(mesh, SERVING)
    conversation = await new_conversation(stub, auth)
    await stub.CreateEvent(
        pb.CreateEventRequest(parent=conversation.name, event=pb.Event(type="tick")),
        metadata=auth,
    )
    call = stub.SubscribeEvents(pb.SubscribeEventsRequest(parent=conversation.name), metadata=auth)
    first = await asyncio.wait_for(call.read(), 5)
    assert isinstance(first, pb.SubscribeEventsResponse) and first.sequence == 1

    mesh.redis.stop()
    await wait_health(mesh, NOT_SERVING)
    terminal = await asyncio.wait_for(call.read(), 10)
    assert isinstance(terminal, pb.SubscribeEventsResponse)
    assert terminal.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "resume from sequence 1" in terminal.error.message
    assert terminal.sequence == 1

    await asyncio.to_thread(mesh.redis.start)
    await wait_health(mesh, SERVING)
    await eventually(
        lambda: stub.CreateEvent(
            pb.CreateEventRequest(parent=conversation.name, event=pb.Event(type="tock")),
            metadata=auth,
        )
    )

    async def resume() -> pb.SubscribeEventsResponse:
        resumed = stub.SubscribeEvents(
            pb.SubscribeEventsRequest(parent=conversation.name, after_sequence=terminal.sequence),
            metadata=auth,
        )
        response = await asyncio.wait_for(resumed.read(), 5)
        resumed.cancel()
        assert isinstance(response, pb.SubscribeEventsResponse)
        return response

    after = await eventually(resume)
    assert (after.sequence, after.event.type) == (2, "tock")
