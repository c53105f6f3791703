"""The health monitor logs what its probes find: a dependency going down (and why), a probe
that raises something other than unreachability (with its traceback), and recovery."""

from __future__ import annotations

import json
import logging

import pytest
from redis.asyncio import Redis

from callisto.mesh.processes import RedisServer, free_port
from callisto.services.common.health import DependencyCheck, HealthMonitor


def _records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.endswith("health") and r.getMessage() == message]


async def test_dependency_failures_and_recovery_are_logged(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    target = {"url": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens there yet

    async def redis_probe() -> bool:
        client = Redis.from_url(target["url"], socket_connect_timeout=0.5)
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()

    async def broken_probe() -> bool:
        return bool(json.loads("{"))  # a probe with a bug, not an unreachable dependency

    monitor = HealthMonitor(
        ["callisto.test.v1.Test"],
        [DependencyCheck("redis", redis_probe), DependencyCheck("broken", broken_probe)],
        interval=60,
    )
    assert not await monitor.probe_once()
    assert not await monitor.probe_once()  # the same failures again: logged once

    down = _records(caplog, "dependency unavailable")
    assert [r.levelno for r in down] == [logging.WARNING]
    assert down[0].fields["dependency"] == "redis"  # type: ignore[attr-defined]
    assert "ConnectionError" in down[0].fields["error"]  # type: ignore[attr-defined]
    raised = _records(caplog, "dependency probe raised")
    assert [r.levelno for r in raised] == [logging.ERROR]
    assert raised[0].fields["dependency"] == "broken"  # type: ignore[attr-defined]
    assert raised[0].exc_info is not None and raised[0].exc_info[0] is json.JSONDecodeError

    target["url"] = redis_server.url
    await monitor.probe_once()
    back = _records(caplog, "dependency available again")
    assert [r.fields["dependency"] for r in back] == ["redis"]  # type: ignore[attr-defined]
