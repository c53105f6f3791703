"""A real Envoy gateway in front of the gateway test backend, started once per session."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from callisto.gateway.config import GatewaySpec
from callisto.gateway.descriptors import all_service_names
from callisto.gateway.process import EnvoyGateway
from gateway_test_backend import SERVICE, GatewayTestBackend, start_gateway_test_backend


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def gateway_for(backend_port: int, directory: Path, **overrides: int | float) -> EnvoyGateway:
    """Generation routed to the backend; the other services to a closed port (never called)."""
    unused = free_port()
    upstreams = {name: ("127.0.0.1", unused) for name in all_service_names()}
    upstreams[SERVICE] = ("127.0.0.1", backend_port)
    spec = GatewaySpec(
        upstreams=upstreams,
        descriptor_path=(directory / "callisto_descriptors.pb").absolute(),
        listen_port=free_port(),
        admin_port=free_port(),
        reflection_service=SERVICE,
        **overrides,  # type: ignore[arg-type]
    )
    return EnvoyGateway(spec, directory, log_flush_interval_ms=100)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def backend() -> AsyncIterator[GatewayTestBackend]:
    started = await start_gateway_test_backend()
    yield started
    await started.server.stop(grace=1)


@pytest.fixture(scope="session")
def backend_port(backend: GatewayTestBackend) -> int:
    return backend.port


@pytest.fixture(scope="session")
def gateway(backend_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyGateway]:
    with gateway_for(backend_port, tmp_path_factory.mktemp("gateway")) as running:
        yield running


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def gateway_channel(gateway: EnvoyGateway) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
        yield channel
