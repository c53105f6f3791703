"""The replica registry: registrations live while their heartbeat renews them, expire when it
stops, follow the replica's health, are announced as they change, and a record nobody can trust
is never handed to the control plane."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.services.common.registry import (
    CHANGES,
    Registration,
    RegistryReader,
    Replica,
    advertised_host,
)

SERVICE = "callisto.test.v1.Registered"
PERSISTENCE = "callisto.persistence.v1.PersistenceService"


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[Redis]:
    # A Redis of its own: the session's is shared with every service the suite starts.
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = Redis.from_url(server.url)
    yield client
    await client.aclose()
    server.stop()


def _replica(replica_id: str, port: int, **fields: object) -> Replica:
    return Replica(service=SERVICE, replica_id=replica_id, host="127.0.0.1", port=port, **fields)  # type: ignore[arg-type]


async def test_a_registration_lives_while_renewed_and_expires_when_its_heartbeat_stops(
    redis: Redis,
) -> None:
    reader = RegistryReader(redis)
    registration = Registration(redis, [_replica("a", 5001, zone="z1", weight=3)], ttl_s=0.6)
    await registration.start(serving=True)
    try:
        await asyncio.sleep(1.5)  # more than two TTLs: only the heartbeat keeps it
        [replica] = await reader.replicas(SERVICE)
        assert (replica.replica_id, replica.address, replica.zone, replica.weight) == (
            "a",
            "127.0.0.1:5001",
            "z1",
            3,
        )
        assert replica.serving
        assert await reader.services() == [SERVICE]
    finally:
        # What a kill -9 leaves: the heartbeat stops and nothing deregisters.
        assert registration._task is not None
        registration._task.cancel()
    await asyncio.sleep(0.8)
    assert await reader.replicas(SERVICE) == []


async def test_health_changes_and_deregistration_show_at_once_and_are_announced(
    redis: Redis,
) -> None:
    reader = RegistryReader(redis)
    changes: list[str] = []
    subscribed = asyncio.Event()

    async def listen() -> None:
        pubsub = redis.pubsub()
        await pubsub.subscribe(CHANGES)
        subscribed.set()
        async for message in pubsub.listen():
            if message["type"] == "message":
                changes.append(message["data"].decode())

    listener = asyncio.create_task(listen())
    await subscribed.wait()
    registration = Registration(redis, [_replica("b", 5002)], ttl_s=30)
    await registration.start(serving=False)
    [replica] = await reader.replicas(SERVICE)
    assert not replica.serving
    await registration.set_serving(True)
    [replica] = await reader.replicas(SERVICE)
    assert replica.serving
    await registration._renew()  # an unchanged heartbeat announces nothing
    await registration.stop()
    assert await reader.replicas(SERVICE) == []
    await asyncio.sleep(0.2)
    listener.cancel()
    # Registered, turned serving, deregistered.
    assert changes == [SERVICE, SERVICE, SERVICE]


async def test_records_that_are_not_registrations_are_skipped(redis: Redis) -> None:
    registration = Registration(
        redis, [_replica("good", 5003), _replica("bad", 5004), _replica("huge", 5005)], ttl_s=30
    )
    await registration.start(serving=True)
    records = f"callisto:registry:{SERVICE}:records"
    await redis.hset(records, "bad", '{"service": "x", "port": "not a port"}')
    await redis.hset(records, "huge", "{" + " " * 10_000 + "}")
    replicas = await RegistryReader(redis).replicas(SERVICE)
    assert [replica.replica_id for replica in replicas] == ["good"]
    assert Replica.from_json('{"service": "s", "replica_id": "r", "host": "h", "port": 0}') is None
    assert (
        Replica.from_json(
            '{"service": "s", "replica_id": "r", "host": "h", "port": 1, "weight": 1000}'
        )
        is None
    )
    await registration.stop()


async def test_a_replica_bound_to_every_interface_advertises_a_reachable_address() -> None:
    assert await advertised_host("127.0.0.1") == "127.0.0.1"
    assert await advertised_host("0.0.0.0", "10.1.2.3") == "10.1.2.3"
    everywhere = await advertised_host("0.0.0.0")
    assert everywhere not in ("", "0.0.0.0")


async def test_a_service_registers_while_serving_and_deregisters_when_it_drains(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    redis = Redis.from_url(server.url)
    service = ServiceProcess(
        "persistence",
        free_port(),
        env={
            "CALLISTO_REDIS_URL": server.url,
            "CALLISTO_HEALTH_INTERVAL_SECONDS": "0.2",
            "CALLISTO_REGISTRY_TTL_SECONDS": "1",
            "CALLISTO_ZONE": "rack-7",
            "CALLISTO_WEIGHT": "5",
        },
        log_path=tmp_path / "persistence.log",
    )
    reader = RegistryReader(redis)
    try:
        service.start()
        service.wait_healthy()
        [replica] = await reader.replicas(PERSISTENCE)
        assert (replica.address, replica.zone, replica.weight, replica.serving) == (
            service.address,
            "rack-7",
            5,
            True,
        )
        service.send_signal(signal.SIGTERM)
        await asyncio.to_thread(service.wait, 20)
        assert await reader.replicas(PERSISTENCE) == []
    finally:
        service.stop()
        await redis.aclose()
        server.stop()
