"""The persistence service on Redis behind Sentinel (a primary, a replica, three Sentinels: real
processes) with CALLISTO_REDIS_MIN_REPLICAS=1: killing the primary under write load loses no
acknowledged write, and a write no replica confirmed is refused, then retried without a
duplicate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from persistence_test_support import Metadata, bearer, new_conversation

from callisto.api.common.v1 import common_pb2
from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2_grpc as pb_grpc
from callisto.mesh.processes import ServiceProcess, free_port
from callisto.mesh.redis_ha import RedisHA
from callisto.services.common.auth import create_api_key
from callisto.services.common.redis_client import connect_redis
from callisto.services.common.registry import RegistryReader
from callisto.services.persistence.server import SERVICE_NAME

if TYPE_CHECKING:
    from callisto.api.persistence.v1.persistence_pb2_grpc import PersistenceServiceAsyncStub as Stub

SERVING = health_pb2.HealthCheckResponse.SERVING
WAIT_TIMEOUT_MS = 500
REGISTRY_TTL_S = 2.0
WRITERS = 4


@dataclass
class Mesh:
    ha: RedisHA
    service: ServiceProcess
    stub: Stub
    health: health_pb2_grpc.HealthStub
    auth: Metadata


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisHA]:
    with RedisHA(tmp_path_factory.mktemp("redis-ha")).running() as started:
        yield started


@pytest_asyncio.fixture(scope="module")
async def mesh(ha: RedisHA, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    # Through the Sentinels, as `callisto keys create --redis-url` would.
    key = await create_api_key(ha.sentinel_url, "failover", label="tests")
    env = {
        "CALLISTO_REDIS_URL": ha.sentinel_url,
        "CALLISTO_REDIS_MIN_REPLICAS": "1",
        "CALLISTO_REDIS_WAIT_TIMEOUT_MS": str(WAIT_TIMEOUT_MS),
        "CALLISTO_REGISTRY_TTL_SECONDS": str(REGISTRY_TTL_S),
        "CALLISTO_HEALTH_INTERVAL_SECONDS": "0.2",
        "CALLISTO_SHUTDOWN_GRACE_SECONDS": "2",
    }
    log = Path(tmp_path_factory.mktemp("persistence-ha")) / "persistence.log"
    service = ServiceProcess("persistence", free_port(), env=env, log_path=log)
    service.start()
    await asyncio.to_thread(service.wait_healthy)
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield Mesh(
            ha,
            service,
            pb_grpc.PersistenceServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
            bearer(key),
        )
    service.stop()


@dataclass
class Writer:
    """Appends numbered messages (or events) to its own conversation, each retried with the
    same request id on UNAVAILABLE until acknowledged, as a client honouring RetryInfo does."""

    stub: Stub
    auth: Metadata
    conversation: str
    events: bool
    acknowledged: list[str] = field(default_factory=list)
    retries: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.write(f"{self.conversation.rsplit('/', 1)[-1]}-{len(self.acknowledged)}")

    async def write(self, label: str, within: float = 20.0) -> None:
        async with asyncio.timeout(within):
            while True:
                try:
                    await self._send(label)
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
                    self.retries += 1
                    await asyncio.sleep(0.05)
                    continue
                self.acknowledged.append(label)
                return

    async def _send(self, label: str) -> None:
        if self.events:
            data = pb.Event(type="test.step")
            data.data.update({"label": label})
            await self.stub.CreateEvent(
                pb.CreateEventRequest(parent=self.conversation, event=data, request_id=label),
                metadata=self.auth,
                timeout=5.0,
            )
        else:
            await self.stub.CreateMessage(
                pb.CreateMessageRequest(
                    parent=self.conversation,
                    message=pb.Message(role=common_pb2.ROLE_USER, text=label),
                    request_id=label,
                ),
                metadata=self.auth,
                timeout=5.0,
            )

    async def stored(self) -> list[str]:
        """What the conversation holds, every page of it."""
        labels: list[str] = []
        token = ""
        while True:
            if self.events:
                events = await self.stub.ListEvents(
                    pb.ListEventsRequest(parent=self.conversation, page_token=token),
                    metadata=self.auth,
                )
                labels += [e.data["label"] for e in events.events if e.type == "test.step"]
                token = events.next_page_token
            else:
                messages = await self.stub.ListMessages(
                    pb.ListMessagesRequest(parent=self.conversation, page_token=token),
                    metadata=self.auth,
                )
                labels += [m.text for m in messages.messages]
                token = messages.next_page_token
            if not token:
                return labels


async def wait_serving(mesh: Mesh, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while True:
            reply = await mesh.health.Check(health_pb2.HealthCheckRequest())
            if reply.status == SERVING:
                return
            await asyncio.sleep(0.05)


async def test_killing_the_primary_under_write_load_loses_no_acknowledged_write(
    mesh: Mesh,
) -> None:
    ha = mesh.ha
    writers = [
        Writer(
            mesh.stub,
            mesh.auth,
            (await new_conversation(mesh.stub, mesh.auth, title=f"w{i}")).name,
            events=i % 2 == 1,
        )
        for i in range(WRITERS)
    ]
    stop = asyncio.Event()
    load = [asyncio.create_task(w.run(stop)) for w in writers]
    try:
        await asyncio.sleep(1.0)
        before = sum(len(w.acknowledged) for w in writers)
        old = ha.primary()
        old.kill()  # SIGKILL, mid-load
        await asyncio.to_thread(ha.wait_for_failover, old.port)
        failed_over = time.monotonic()
        # With min replicas 1, writes wait for a replica: the old node rejoins as one (what a
        # restart policy does), taking a full copy of the new primary.
        await asyncio.to_thread(ha.restart_as_replica, old)
        during = sum(len(w.acknowledged) for w in writers)
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*load)
    after = sum(len(w.acknowledged) for w in writers)
    assert before > 0 and after > during, (before, during, after)
    assert sum(w.retries for w in writers) > 0  # the failover was felt, and retried through

    for writer in writers:
        assert await writer.stored() == writer.acknowledged  # in order, none lost or doubled

    await wait_serving(mesh)
    # The registration outlives its TTL only if heartbeats renew it on the new primary.
    await asyncio.sleep(max(0.0, failed_over + REGISTRY_TTL_S + 0.5 - time.monotonic()))
    redis = connect_redis(ha.sentinel_url)
    try:
        replicas = await RegistryReader(redis).replicas(SERVICE_NAME)
    finally:
        await redis.aclose()
    assert [r.port for r in replicas if r.serving] == [mesh.service.port]


async def test_a_write_no_replica_confirms_is_unavailable_then_retried_without_duplicate(
    mesh: Mesh,
) -> None:
    ha = mesh.ha
    conversation = (await new_conversation(mesh.stub, mesh.auth, title="unconfirmed")).name
    request = pb.CreateMessageRequest(
        parent=conversation,
        message=pb.Message(role=common_pb2.ROLE_USER, text="once"),
        request_id="unconfirmed-1",
    )
    replica = ha.replica()
    replica.stop()
    try:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await mesh.stub.CreateMessage(request, metadata=mesh.auth, timeout=10.0)
        elapsed = time.monotonic() - started
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not yet confirmed by a replica" in (refused.value.details() or "")
        assert WAIT_TIMEOUT_MS / 1000 * 0.9 <= elapsed < WAIT_TIMEOUT_MS / 1000 + 1.5
    finally:
        await asyncio.to_thread(ha.restart_as_replica, replica)

    reply = await mesh.stub.CreateMessage(request, metadata=mesh.auth, timeout=10.0)
    assert reply.message.text == "once"
    messages = await mesh.stub.ListMessages(
        pb.ListMessagesRequest(parent=conversation), metadata=mesh.auth
    )
    assert [m.text for m in messages.messages] == ["once"]
