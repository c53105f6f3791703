"""Where the control plane learns each service's replicas: one interface, two sources.

`RegistrySource` reads the replica registry in Redis (the embedded mesh and compose): only
replicas whose registration says serving, refreshed on every change notice and on a poll that
catches expiries and lost notices. `DnsSource` resolves Kubernetes headless Services, whose
DNS already leaves out pods that fail their readiness probe. Either answers with IPs (Envoy's
EDS takes no names): a registered name is resolved here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Mapping, Sequence
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from callisto.gateway.clusters import EndpointAddress
from callisto.services.common.registry import RegistryReader

log = logging.getLogger(__name__)

Endpoints = Mapping[str, Sequence[EndpointAddress]]


class SourceError(RuntimeError):
    """The source could not be read this time (the last endpoints stay in force)."""


class EndpointSource(Protocol):
    """Serving replicas per service full name."""

    async def endpoints(self) -> Endpoints:
        """What the source holds now; raises `SourceError` when it cannot be read."""
        ...

    async def wait_for_change(self, at_most_s: float) -> None:
        """Returns when the source may have changed, at the latest after `at_most_s`."""
        ...

    async def close(self) -> None: ...


async def resolve(host: str, port: int) -> list[str]:
    """The IPs of `host` (itself when it is one), without blocking the event loop."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class RegistrySource:
    """The serving registrations of the Redis replica registry."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._reader = RegistryReader(redis)
        self._changed = asyncio.Event()
        self._unresolved: set[str] = set()
        self._watcher = asyncio.create_task(self._watch(), name="registry-changes")

    async def endpoints(self) -> Endpoints:
        try:
            snapshot = await self._reader.snapshot()
        except (RedisError, OSError) as error:
            raise SourceError(f"registry unreadable: {error!r}") from error
        found: dict[str, list[EndpointAddress]] = {}
        for service, replicas in snapshot.items():
            for replica in replicas:
                if not replica.serving:
                    continue
                ip = await self._ip(replica.host, replica.port)
                if ip is not None:
                    found.setdefault(service, []).append(
                        EndpointAddress(ip, replica.port, replica.zone, replica.weight)
                    )
        return found

    async def _ip(self, host: str, port: int) -> str | None:
        try:
            ips = await resolve(host, port)
        except OSError as error:
            if host not in self._unresolved:
                log.warning(
                    "registered host does not resolve; its replica is left out",
                    extra={"fields": {"host": host, "error": f"{error!r}"}},
                )
            self._unresolved.add(host)
            return None
        self._unresolved.discard(host)
        return ips[0] if ips else None

    async def wait_for_change(self, at_most_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most_s):
                await self._changed.wait()
        self._changed.clear()

    async def _watch(self) -> None:
        """Wakes the refresh on every change notice; resubscribes after a Redis outage (the
        poll covers the gap)."""
        while True:
            try:
                async for _service in self._reader.changes():
                    self._changed.set()
            except (RedisError, OSError):
                pass
            await asyncio.sleep(0.5)

    async def close(self) -> None:
        self._watcher.cancel()
        await asyncio.gather(self._watcher, return_exceptions=True)
        await self._redis.aclose()


class DnsSource:
    """Every address of each target's name is a replica of its service (headless Services)."""

    def __init__(self, targets: Sequence[tuple[str, str, int]], *, zone: str = "local") -> None:
        self._targets = list(targets)
        self._zone = zone
        self._last: dict[str, list[EndpointAddress]] = {}

    async def endpoints(self) -> Endpoints:
        found: dict[str, list[EndpointAddress]] = {}
        for service, host, port in self._targets:
            try:
                ips = await resolve(host, port)
            except socket.gaierror as error:
                if error.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
                    ips = []  # a headless Service with no ready pod has no records
                else:  # the resolver itself failed: keep what this service had
                    found.setdefault(service, []).extend(self._last.get(service, []))
                    continue
            found.setdefault(service, []).extend(
                EndpointAddress(ip, port, self._zone, 1) for ip in ips
            )
        self._last = found
        return found

    async def wait_for_change(self, at_most_s: float) -> None:
        await asyncio.sleep(at_most_s)

    async def close(self) -> None:
        return None
