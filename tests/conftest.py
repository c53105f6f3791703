"""Session fixtures that start the real servers the tests need, on free ports, stopped by PID.

Tests reach the services through the SDK (`callisto.Client`): `persistence_client` is one of the
persistence service as tenant `acme`; `client.stub(...)` gives the raw generated stub over the
same authenticated channel for requests the SDK would not build."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

import callisto
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.launcher import PERSISTENCE_SERVICE
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.services.common.auth import create_api_key

# Service processes under test stop without the pause a replica takes for load balancers to
# stop sending (they inherit this environment); the scale-out tests ask for it.
os.environ.setdefault("CALLISTO_DRAIN_SECONDS", "0")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def service_env(redis_server: RedisServer) -> dict[str, str]:
    """Environment for service processes under test: fast health probes, no key cache."""
    return {
        "CALLISTO_REDIS_URL": redis_server.url,
        "CALLISTO_AUTH_CACHE_SECONDS": "0",
        "CALLISTO_HEALTH_INTERVAL_SECONDS": "0.2",
        "CALLISTO_SHUTDOWN_GRACE_SECONDS": "2",
        "CALLISTO_LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="session")
def persistence(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    logs = tmp_path_factory.mktemp("persistence")
    service = ServiceProcess(
        "persistence", free_port(), env=service_env, log_path=logs / "persistence.log"
    )
    service.start()
    service.wait_healthy()
    yield service
    service.stop()


def create_key(redis_url: str, tenant: str) -> str:
    return asyncio.run(create_api_key(redis_url, tenant, label="tests"))


@pytest.fixture(scope="session")
def api_key(redis_server: RedisServer) -> str:
    """A key of tenant `acme`."""
    return create_key(redis_server.url, "acme")


@pytest.fixture(scope="session")
def other_api_key(redis_server: RedisServer) -> str:
    """A key of tenant `globex`, to prove isolation from `acme`."""
    return create_key(redis_server.url, "globex")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def persistence_client(
    persistence: ServiceProcess, api_key: str
) -> AsyncIterator[callisto.Client]:
    """An SDK client of the session's persistence service, as tenant `acme`."""
    async with await callisto.Client.connect(persistence.address, api_key=api_key) as client:
        yield client


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def persistence_gateway(
    persistence: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnvoyGateway]:
    """The real Envoy gateway in front of the real persistence service."""
    gateway = EnvoyGateway.on_free_ports(
        {PERSISTENCE_SERVICE: ("127.0.0.1", persistence.port)}, tmp_path_factory.mktemp("gateway")
    )
    gateway.start()
    yield gateway
    gateway.stop()
