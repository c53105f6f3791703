"""A checkpoint write (UpdateSession with an etag) asked to retry rides out a Redis outage as
the service's RetryInfo says, and is applied exactly once; without `retry` it is tried once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

import callisto
from callisto import errors
from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.persistence import struct
from callisto.retry import RetryPolicy
from callisto.services.common.auth import create_api_key

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, str, str]]:
    """Its own Redis (which the tests stop) and persistence service: (redis, address, key)."""
    redis = RedisServer(tmp_path_factory.mktemp("retry-redis"), appendfsync="always")
    redis.start()
    key = asyncio.run(create_api_key(redis.url, "checkpoint-retry", label="tests"))
    env = {
        "CALLISTO_REDIS_URL": redis.url,
        "CALLISTO_AUTH_CACHE_SECONDS": "60",
        "CALLISTO_HEALTH_INTERVAL_SECONDS": "0.2",
        "CALLISTO_SHUTDOWN_GRACE_SECONDS": "2",
    }
    log = Path(tmp_path_factory.mktemp("retry-persistence")) / "persistence.log"
    service = ServiceProcess("persistence", free_port(), env=env, log_path=log)
    service.start()
    service.wait_healthy()
    yield redis, service.address, key
    service.stop()
    redis.stop()


@pytest_asyncio.fixture
async def sdk(outage: tuple[RedisServer, str, str]) -> AsyncIterator[callisto.Client]:
    _, address, key = outage
    patient = RetryPolicy(max_attempts=20, max_retry_delay=0.5)
    async with await callisto.Client.connect(address, api_key=key, retry_policy=patient) as c:
        # The key is read (and cached) before Redis goes away.
        await c.persistence.get_retention_policy()
        yield c


async def test_checkpoint_write_with_retry_survives_an_outage_and_applies_once(
    sdk: callisto.Client, outage: tuple[RedisServer, str, str]
) -> None:
    redis = outage[0]
    session = await sdk.persistence.create_session(kind="checkpoint", state={"step": 0})
    redis.stop()

    async def back_after(seconds: float) -> None:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(redis.start)

    back = asyncio.create_task(back_after(1.5))
    started = time.monotonic()
    written = await sdk.persistence.update_session(
        pb.Session(name=session.name, etag=session.etag, state=struct({"step": 1})),
        ["state"],
        retry=True,
        timeout=60,
    )
    await back
    # It was retried until Redis came back, not lucky.
    assert time.monotonic() - started >= 1.4
    assert written.state["step"] == 1
    stored = await sdk.persistence.get_session(session.name)
    # One version step over the etag it was written against: applied exactly once.
    assert int(stored.etag.strip('"')) == int(session.etag.strip('"')) + 1


async def test_checkpoint_write_without_retry_is_tried_once(
    sdk: callisto.Client, outage: tuple[RedisServer, str, str]
) -> None:
    redis = outage[0]
    session = await sdk.persistence.create_session(kind="checkpoint", state={"step": 0})
    redis.stop()
    try:
        started = time.monotonic()
        with pytest.raises(errors.Unavailable):
            await sdk.persistence.update_session(
                pb.Session(name=session.name, etag=session.etag, kind="changed"), ["kind"]
            )
        # One attempt: no RetryInfo wait was spent.
        assert time.monotonic() - started < 0.9
    finally:
        redis.start()
