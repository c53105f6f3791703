"""`grpc.health.v1` that tells the truth: NOT_SERVING until every dependency answers, and back to
NOT_SERVING as soon as one stops answering."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from callisto.services.common.telemetry import DEPENDENCY_UP

log = logging.getLogger(__name__)

# How an unreachable dependency fails; anything else a probe raises is a bug worth a traceback.
_UNREACHABLE = (TimeoutError, OSError, RedisConnectionError, RedisTimeoutError)
_UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class DependencyCheck:
    """A named probe; it answers True when the dependency is usable."""

    name: str
    probe: Callable[[], Awaitable[bool]]
    timeout: float = 2.0


class HealthMonitor:
    """Probes dependencies on an interval and publishes the result for every service name."""

    def __init__(
        self, service_names: Sequence[str], checks: Sequence[DependencyCheck], interval: float
    ) -> None:
        self.servicer = health_aio.HealthServicer()
        self._names = ["", *service_names]
        self._checks = list(checks)
        self._interval = interval
        self._healthy: bool | None = None
        self._draining = False
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        # Per dependency: "" while it answers, else how it last failed (None before a probe);
        # a failure is logged when it starts or changes, not on every probe.
        self._failures: dict[str, str | None] = {check.name: None for check in self._checks}
        self._listeners: list[Callable[[bool], Awaitable[None]]] = []

    def on_change(self, listener: Callable[[bool], Awaitable[None]]) -> None:
        """Calls `listener(serving)` on every later change (drain included)."""
        self._listeners.append(listener)

    @property
    def healthy(self) -> bool:
        return bool(self._healthy) and not self._draining

    async def start(self) -> None:
        await self._publish(False)
        await self.probe_once()
        self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def probe_once(self) -> bool:
        results = await asyncio.gather(*(self._probe(check) for check in self._checks))
        healthy = all(results)
        await self._publish(healthy)
        return healthy

    async def wait_healthy(self, within: float) -> bool:
        try:
            async with asyncio.timeout(within):
                while not self.healthy:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    async def drain(self) -> None:
        """Reports NOT_SERVING for good, so load balancers stop sending new calls."""
        self._draining = True
        for name in self._names:
            await self.servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._notify(False)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.probe_once()
            except Exception:  # the monitor must outlive any one round
                log.exception("health monitor round failed")

    async def _probe(self, check: DependencyCheck) -> bool:
        error: Exception | None = None
        try:
            async with asyncio.timeout(check.timeout):
                ok = await check.probe()
        except Exception as raised:  # a probe failing in any way means "not usable"
            ok, error = False, raised
        DEPENDENCY_UP.labels(check.name).set(1 if ok else 0)
        self._report(check, ok, error)
        return ok

    def _report(self, check: DependencyCheck, ok: bool, error: Exception | None) -> None:
        """Logs a dependency's transitions: down (WARNING, or ERROR with the traceback when the
        probe raised something other than unreachability), a changed failure, and back up."""
        previous = self._failures.get(check.name)
        fields: dict[str, object] = {"dependency": check.name}
        if ok:
            self._failures[check.name] = ""
            if previous:
                log.info("dependency available again", extra={"fields": fields})
            return
        if error is None:
            failure = "the probe reported it unusable"
        elif isinstance(error, TimeoutError) and not str(error):
            failure = f"no answer within {check.timeout:g} s"
        else:
            failure = f"{type(error).__name__}: {error}"
        self._failures[check.name] = failure
        if failure == previous:
            return
        fields["error"] = failure
        if error is None or _unreachable(error):
            log.warning("dependency unavailable", extra={"fields": fields})
        else:
            log.error("dependency probe raised", exc_info=error, extra={"fields": fields})

    async def _publish(self, healthy: bool) -> None:
        if self._draining or healthy == self._healthy:
            return
        if self._healthy is not None:
            level = logging.INFO if healthy else logging.WARNING
            log.log(level, "health changed", extra={"fields": {"serving": healthy}})
        self._healthy = healthy
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if healthy
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._names:
            await self.servicer.set(name, status)
        self._changed.set()
        await self._notify(healthy)

    async def _notify(self, serving: bool) -> None:
        for listener in self._listeners:
            try:
                await listener(serving)
            except Exception:  # a listener must not break health reporting
                log.exception("health listener failed")


def _unreachable(error: Exception) -> bool:
    if isinstance(error, _UNREACHABLE):
        return True
    code = getattr(error, "code", None)
    return isinstance(error, grpc.RpcError) and callable(code) and code() in _UNREACHABLE_CODES
