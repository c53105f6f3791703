"""A checkpoint write (UpdateSession with an etag) asked to retry rides out a Redis outage as
the service's RetryInfo says, and is applied exactly once; without `retry` it is tried once.

Attempts are counted from what the service answered (its Prometheus counter of RPCs by method
and status), not from how long the call took."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

import callisto
from callisto import errors
from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.persistence import struct
from callisto.retry import RetryPolicy
from callisto.services.common.auth import create_api_key

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Outage:
    """A persistence service on its own Redis (which the tests stop), with its metrics port."""

    redis: RedisServer
    address: str
    metrics_port: int
    key: str

    def _answers(self, method: str) -> dict[str, int]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        counts: dict[str, int] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "callisto_rpc_requests_total" and sample.labels.get(
                    "method", ""
                ).endswith(f"/{method}"):
                    counts[sample.labels["code"]] = int(sample.value)
        return counts

    async def answers(self, method: str) -> dict[str, int]:
        """How many calls of `method` the service answered so far, by status code."""
        return await asyncio.to_thread(self._answers, method)


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    redis = RedisServer(tmp_path_factory.mktemp("retry-redis"), appendfsync="always")
    redis.start()
    key = asyncio.run(create_api_key(redis.url, "checkpoint-retry", label="tests"))
    metrics_port = free_port()
    env = {
        "CALLISTO_REDIS_URL": redis.url,
        "CALLISTO_AUTH_CACHE_SECONDS": "60",
        "CALLISTO_HEALTH_INTERVAL_SECONDS": "0.2",
        "CALLISTO_SHUTDOWN_GRACE_SECONDS": "2",
        "CALLISTO_METRICS_PORT": str(metrics_port),
    }
    log = Path(tmp_path_factory.mktemp("retry-persistence")) / "persistence.log"
    service = ServiceProcess("persistence", free_port(), env=env, log_path=log)
    service.start()
    service.wait_healthy()
    yield Outage(redis, service.address, metrics_port, key)
    service.stop()
    redis.stop()


@pytest_asyncio.fixture
async def sdk(outage: Outage) -> AsyncIterator[callisto.Client]:
    patient = RetryPolicy(max_attempts=20, max_retry_delay=0.5)
    async with await callisto.Client.connect(
        outage.address, api_key=outage.key, retry_policy=patient
    ) as client:
        # The key is read (and cached) before Redis goes away.
        await client.persistence.get_retention_policy()
        yield client


def grew(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {code: n - before.get(code, 0) for code, n in after.items() if n - before.get(code, 0)}


async def test_checkpoint_write_with_retry_survives_an_outage_and_applies_once(
    sdk: callisto.Client, outage: Outage
) -> None:
    session = await sdk.persistence.create_session(kind="checkpoint", state={"step": 0})
    before = await outage.answers("UpdateSession")
    outage.redis.stop()

    async def back_after(seconds: float) -> None:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(outage.redis.start)

    back = asyncio.create_task(back_after(1.5))
    written = await sdk.persistence.update_session(
        pb.Session(name=session.name, etag=session.etag, state=struct({"step": 1})),
        ["state"],
        retry=True,
        timeout=60,
    )
    await back
    answered = grew(await outage.answers("UpdateSession"), before)
    # Refused while Redis was down, then written once it was back.
    assert answered.get("UNAVAILABLE", 0) >= 1
    assert answered.get("OK") == 1
    assert set(answered) == {"UNAVAILABLE", "OK"}
    assert written.state["step"] == 1
    stored = await sdk.persistence.get_session(session.name)
    # One version step over the etag it was written against: applied exactly once.
    assert int(stored.etag.strip('"')) == int(session.etag.strip('"')) + 1


async def test_checkpoint_write_without_retry_is_tried_once(
    sdk: callisto.Client, outage: Outage
) -> None:
    session = await sdk.persistence.create_session(kind="checkpoint", state={"step": 0})
    before = await outage.answers("UpdateSession")
    outage.redis.stop()
    try:
        with pytest.raises(errors.Unavailable):
            await sdk.persistence.update_session(
                pb.Session(name=session.name, etag=session.etag, kind="changed"), ["kind"]
            )
        assert grew(await outage.answers("UpdateSession"), before) == {"UNAVAILABLE": 1}
    finally:
        outage.redis.start()
