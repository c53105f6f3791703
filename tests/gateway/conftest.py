"""A real Envoy gateway in front of the gateway test backend, started once per session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import pytest_asyncio
from gateway_test_backend import (
    GatewayTestBackend,
    HealthOnlyBackend,
    start_gateway_test_backend,
    start_health_only_backend,
)
from gateway_test_support import HEALTH_ONLY_SERVICE, gateway_for
from grpc_health.v1 import health_pb2

from callisto.mesh.gateway import EnvoyGateway


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def backend() -> AsyncIterator[GatewayTestBackend]:
    started = await start_gateway_test_backend()
    yield started
    await started.server.stop(grace=1)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def health_backend() -> AsyncIterator[HealthOnlyBackend]:
    started = await start_health_only_backend(
        HEALTH_ONLY_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING
    )
    yield started
    await started.server.stop(grace=1)


@pytest.fixture(scope="session")
def backend_port(backend: GatewayTestBackend) -> int:
    return backend.port


@pytest.fixture(scope="session")
def gateway(
    backend_port: int,
    health_backend: HealthOnlyBackend,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EnvoyGateway]:
    with gateway_for(
        backend_port,
        tmp_path_factory.mktemp("gateway"),
        upstream_ports={HEALTH_ONLY_SERVICE: health_backend.port},
    ) as running:
        yield running


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gateway_channel(gateway: EnvoyGateway) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        yield channel
