"""The replica registry: where each service's replicas listen, in the mesh's Redis.

Every replica registers itself (address, zone, weight, health) under the full names of the
gRPC services it serves, and renews that registration with a heartbeat three times per TTL; a
graceful shutdown deregisters it, a `kill -9` lets it expire. The gateway's control plane reads
the live registrations and sends Envoy the serving ones.

Per service, a sorted set holds each replica's expiry and a hash its record. Expiries are on
Redis's own clock (`TIME` inside the scripts), so replicas on hosts whose clocks disagree still
expire on time. Every change (a replica new, changed, gone or expired) is published on one
channel, so a reader can refresh at once instead of waiting for its next poll.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PREFIX = "callisto:registry"
# Names of the services that have (or had) registrations.
SERVICES = f"{PREFIX}:services"
# Carries a service name whenever one of its registrations changes.
CHANGES = f"{PREFIX}:changes"
# A record larger than this is not a registration (a reader never parses one).
MAX_RECORD_BYTES = 4096
MAX_WEIGHT = 128

# KEYS: expiries, records, services. ARGV: replica, record, ttl ms, channel, service.
_REGISTER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
local previous = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[5])
if previous ~= ARGV[2] or not expiry or tonumber(expiry) < now then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return now
"""

# KEYS: expiries, records. ARGV: replica, channel, service.
_DEREGISTER = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if removed > 0 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return removed
"""

# KEYS: expiries, records. ARGV: channel, service. Drops the expired registrations (telling
# other readers) and returns the records of the live ones.
_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  for _, replica in ipairs(expired) do redis.call('HDEL', KEYS[2], replica) end
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
if #live == 0 then return {} end
return redis.call('HMGET', KEYS[2], unpack(live))
"""


def _expiries(service: str) -> str:
    return f"{PREFIX}:{service}:expiries"


def _records(service: str) -> str:
    return f"{PREFIX}:{service}:records"


@dataclass(frozen=True)
class Replica:
    """One replica of one gRPC service."""

    service: str
    replica_id: str
    host: str
    port: int
    zone: str = "local"
    weight: int = 1
    serving: bool = False

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Replica | None:
        """The record, or None when it is not one (a reader skips what it cannot trust)."""
        if len(raw) > MAX_RECORD_BYTES:
            return None
        try:
            data: Any = json.loads(raw)
            replica = cls(
                service=str(data["service"]),
                replica_id=str(data["replica_id"]),
                host=str(data["host"]),
                port=int(data["port"]),
                zone=str(data.get("zone", "local")),
                weight=int(data.get("weight", 1)),
                serving=data.get("serving") is True,
            )
        except (ValueError, TypeError, KeyError):
            return None
        if not (0 < replica.port < 65536 and 1 <= replica.weight <= MAX_WEIGHT and replica.host):
            return None
        return replica


def new_replica_id() -> str:
    """Unique per process: the host, the PID and a random suffix (PIDs repeat across hosts and
    restarts)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


async def advertised_host(bind_host: str, configured: str = "") -> str:
    """The address other processes reach a server at: the configured one, else the bind
    address, else (bound to every interface) this host's own address."""
    if configured:
        return configured
    if bind_host not in ("", "0.0.0.0", "::", "[::]"):
        return bind_host
    return await asyncio.to_thread(lambda: socket.gethostbyname(socket.gethostname()))


class Registration:
    """This process's registrations (one per service it serves), kept alive by a heartbeat."""

    def __init__(self, redis: Redis, replicas: list[Replica], ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError("the registry TTL must be positive")
        self._redis = redis
        self._replicas = list(replicas)
        self._ttl_ms = max(100, int(ttl_s * 1000))
        self._register = redis.register_script(_REGISTER)
        self._deregister = redis.register_script(_DEREGISTER)
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def replicas(self) -> list[Replica]:
        return list(self._replicas)

    async def start(self, serving: bool) -> None:
        """Registers now (a Redis outage is logged, not raised) and starts the heartbeat."""
        await self.set_serving(serving)
        self._task = asyncio.create_task(self._heartbeat(), name="registry-heartbeat")

    async def set_serving(self, serving: bool) -> None:
        """Records a health change at once, rather than at the next heartbeat."""
        self._replicas = [replace(replica, serving=serving) for replica in self._replicas]
        await self._renew()

    async def stop(self) -> None:
        """Stops the heartbeat and deregisters (best effort: otherwise the TTL expires it)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for replica in self._replicas:
            try:
                await self._deregister(
                    keys=[_expiries(replica.service), _records(replica.service)],
                    args=[replica.replica_id, CHANGES, replica.service],
                )
            except (RedisError, OSError):
                log.warning("could not deregister; the registration expires on its own")
                return

    async def _heartbeat(self) -> None:
        interval = self._ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            await self._renew()

    async def _renew(self) -> None:
        try:
            for replica in self._replicas:
                await self._register(
                    keys=[_expiries(replica.service), _records(replica.service), SERVICES],
                    args=[
                        replica.replica_id,
                        replica.to_json(),
                        self._ttl_ms,
                        CHANGES,
                        replica.service,
                    ],
                )
        except (RedisError, OSError) as error:
            if not self._failing:
                log.warning("registry heartbeat failed", extra={"fields": {"error": f"{error!r}"}})
            self._failing = True
            return
        if self._failing:
            log.info("registry heartbeat renewed again")
        self._failing = False


class RegistryReader:
    """What the registry holds now, for the control plane (and tests)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._live = redis.register_script(_LIVE)

    async def services(self) -> list[str]:
        names = await self._redis.smembers(SERVICES)
        return sorted(n.decode() if isinstance(n, bytes) else str(n) for n in names)

    async def replicas(self, service: str) -> list[Replica]:
        """The live registrations of `service` (serving or not), sorted by replica id."""
        raws = await self._live(
            keys=[_expiries(service), _records(service)], args=[CHANGES, service]
        )
        replicas = [
            replica
            for raw in raws
            if raw is not None
            and (replica := Replica.from_json(raw)) is not None
            and replica.service == service
        ]
        return sorted(replicas, key=lambda replica: replica.replica_id)

    async def snapshot(self) -> dict[str, list[Replica]]:
        """Every service's live registrations."""
        services = await self.services()
        found = await asyncio.gather(*(self.replicas(service) for service in services))
        return dict(zip(services, found, strict=True))

    async def changes(self) -> AsyncIterator[str]:
        """Names of services as their registrations change (runs until cancelled)."""
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(CHANGES)
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                data = message.get("data")
                yield data.decode() if isinstance(data, bytes) else str(data)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
