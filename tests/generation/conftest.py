"""One real tritonserver (toy_llm and sentiment, plus the real llm when an `llm` test is
selected), the real generation service in front of it, and a real Envoy gateway in front of that:
once per session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from generation_support import generation_env, start_triton

import callisto
from callisto.api.generation.v1 import generation_pb2_grpc
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import ServiceProcess, free_port
from callisto.mesh.triton import TritonServer

GENERATION_SERVICE = "callisto.generation.v1.GenerationService"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llm: needs the real llama.cpp model in tritonserver")


def wants_llm(session: pytest.Session) -> bool:
    """Load the real LLM (building its wheel once if missing) when a selected test needs it."""
    return any(item.get_closest_marker("llm") for item in session.items)


@pytest.fixture(scope="session")
def toy_events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JSON lines toy_llm appends per finished request (tokens produced, finish reason)."""
    return tmp_path_factory.mktemp("toy_llm") / "events.jsonl"


@pytest.fixture(scope="session")
def generation_triton(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, toy_events: Path
) -> Iterator[TritonServer]:
    server = start_triton(tmp_path_factory.mktemp("triton"), toy_events, wants_llm(request.session))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def generation(
    generation_triton: TritonServer,
    service_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    logs = tmp_path_factory.mktemp("generation")
    service = ServiceProcess(
        "generation",
        free_port(),
        env=generation_env(service_env, generation_triton.grpc_url),
        log_path=logs / "generation.log",
    )
    with service.serving(60):
        yield service


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def generation_client(
    generation: ServiceProcess, api_key: str
) -> AsyncIterator[callisto.Client]:
    """An SDK client of the generation service, as tenant `acme`."""
    async with await callisto.Client.connect(generation.address, api_key=api_key) as client:
        yield client


@pytest.fixture(scope="session")
def stub(generation_client: callisto.Client) -> generation_pb2_grpc.GenerationServiceAsyncStub:
    """The raw generated stub over the SDK's authenticated channel (tests send odd requests)."""
    return generation_client.stub(generation_pb2_grpc.GenerationServiceStub)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def anonymous_stub(
    generation: ServiceProcess,
) -> AsyncIterator[generation_pb2_grpc.GenerationServiceAsyncStub]:
    """A stub whose calls carry no API key."""
    async with await callisto.Client.connect(generation.address) as client:
        yield client.stub(generation_pb2_grpc.GenerationServiceStub)


@pytest.fixture(scope="session")
def generation_gateway(
    generation: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnvoyGateway]:
    gateway = EnvoyGateway.on_free_ports(
        {GENERATION_SERVICE: ("127.0.0.1", generation.port)},
        tmp_path_factory.mktemp("generation-gateway"),
    )
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()
