"""The container health probe (`python -m callisto.mesh.healthcheck`) against a real persistence
service: exit 0 only while it reports SERVING, 1 when it is NOT_SERVING (its Redis gone), for an
unknown service, with nothing listening, and within its timeout when the peer never answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callisto.mesh.processes import RedisServer, ServiceProcess, free_port

PERSISTENCE = "callisto.persistence.v1.PersistenceService"


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "callisto.mesh.healthcheck", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def wait_for_exit_code(code: int, *args: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while (result := probe(*args)).returncode != code:
        assert time.monotonic() < deadline, f"probe kept answering {result}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("healthcheck-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def persistence(redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs: Path = tmp_path_factory.mktemp("healthcheck-persistence")
    service = ServiceProcess(
        "persistence",
        free_port(),
        env={
            "CALLISTO_REDIS_URL": redis.url,
            "CALLISTO_HEALTH_INTERVAL_SECONDS": "0.2",
            "CALLISTO_SHUTDOWN_GRACE_SECONDS": "1",
            "CALLISTO_REGISTER": "false",
        },
        log_path=logs / "persistence.log",
    )
    with service.serving():
        yield service.address


def test_serving_server_and_service_exit_zero(persistence: str) -> None:
    whole = probe(persistence)
    assert whole.returncode == 0, whole.stderr
    assert "SERVING" in whole.stdout
    named = probe(persistence, PERSISTENCE)
    assert named.returncode == 0, named.stderr


def test_unknown_service_exits_one(persistence: str) -> None:
    result = probe(persistence, "callisto.nothing.v1.NothingService")
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr


def test_not_serving_exits_one_until_the_dependency_is_back(
    persistence: str, redis: RedisServer
) -> None:
    redis.stop()
    try:
        wait_for_exit_code(1, persistence, PERSISTENCE)
        assert "NOT_SERVING" in probe(persistence, PERSISTENCE).stderr
    finally:
        redis.start()
    wait_for_exit_code(0, persistence, PERSISTENCE)


def test_nothing_listening_exits_one() -> None:
    result = probe(f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr


def test_silent_peer_exits_one_within_the_timeout() -> None:
    # Accepts connections and never speaks HTTP/2: only the probe's timeout ends the wait.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        target = f"127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        result = probe(target, "--timeout", "1")
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "DEADLINE_EXCEEDED" in result.stderr
    assert elapsed < 10
