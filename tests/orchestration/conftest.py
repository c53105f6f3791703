"""The whole mesh for the orchestration tests, once per session, on free ports: one real
tritonserver (toy_llm and the embedder, plus the real llm when an `llm` test is selected), the
real persistence (root fixture), generation, retrieval and orchestration services, and a real
Envoy gateway in front of all four. `orchestration` is a fixture of its own so a test can kill
and restart that process (`restart_orchestration`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from orchestration_test_support import (
    GENERATION_SERVICE,
    MODEL_ENV,
    ORCHESTRATION_SERVICE,
    PERSISTENCE_SERVICE,
    RETRIEVAL_SERVICE,
    generation_env,
    new_key,
    orchestration_env,
    retrieval_env,
)

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2_grpc
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.mesh.triton import TritonServer, default_model_repository, ensure_triton_environment


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llm: needs the real llama.cpp model in tritonserver")


def _wants_llm(session: pytest.Session) -> bool:
    return any(
        item.get_closest_marker("llm") and "orchestration" in str(item.path)
        for item in session.items
    )


@pytest.fixture(scope="session")
def orch_triton(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    with_llm = _wants_llm(request.session)
    environment = ensure_triton_environment(with_llm=with_llm, with_embedder=True)
    workdir = tmp_path_factory.mktemp("orch-triton")
    server = TritonServer(environment, log_path=workdir / "tritonserver.log")
    models = ["toy_llm", "embedder", "sentiment", *(["llm"] if with_llm else [])]
    env = {**MODEL_ENV, "CALLISTO_TOY_LLM_EVENTS": str(workdir / "toy_events.jsonl")}
    server.start(default_model_repository(), models, env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def toy_events_path(orch_triton: TritonServer) -> Path:
    """JSON lines toy_llm appends per finished request (tokens produced, finish reason)."""
    return orch_triton.log_path.parent / "toy_events.jsonl"


def _service(
    name: str, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, timeout: float
) -> Iterator[ServiceProcess]:
    logs = tmp_path_factory.mktemp(f"orch-{name}")
    service = ServiceProcess(name, free_port(), env=env, log_path=logs / f"{name}.log")
    service.start()
    try:
        service.wait_healthy(timeout)
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def orch_generation(
    orch_triton: TritonServer,
    service_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    env = generation_env(service_env, orch_triton.grpc_url)
    yield from _service("generation", env, tmp_path_factory, 60)


@pytest.fixture(scope="session")
def orch_retrieval(
    orch_triton: TritonServer,
    service_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    data = tmp_path_factory.mktemp("orch-retrieval-data")
    env = retrieval_env(service_env, orch_triton.grpc_url, data)
    yield from _service("retrieval", env, tmp_path_factory, 120)


@pytest.fixture(scope="session")
def orchestration_service_env(
    service_env: dict[str, str],
    persistence: ServiceProcess,
    orch_generation: ServiceProcess,
    orch_retrieval: ServiceProcess,
) -> dict[str, str]:
    """Environment of the orchestration process (tests may start extra ones with it)."""
    return orchestration_env(
        service_env, persistence.address, orch_generation.address, orch_retrieval.address
    )


@pytest.fixture(scope="session")
def orchestration(
    orchestration_service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    yield from _service("orchestration", orchestration_service_env, tmp_path_factory, 60)


@pytest.fixture
def restart_orchestration(orchestration: ServiceProcess) -> Callable[[bool], None]:
    """Stops the session's orchestration process (SIGKILL when `kill`, else SIGTERM) and
    starts it again on the same port, waiting until it is SERVING."""

    def restart(kill: bool = True) -> None:
        if kill:
            orchestration.kill()
        else:
            orchestration.stop()
        orchestration.start()
        orchestration.wait_healthy(60)

    return restart


@pytest.fixture(scope="session")
def mesh_gateway(
    persistence: ServiceProcess,
    orch_generation: ServiceProcess,
    orch_retrieval: ServiceProcess,
    orchestration: ServiceProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EnvoyGateway]:
    """The real Envoy gateway in front of all four services."""
    gateway = EnvoyGateway.on_free_ports(
        {
            PERSISTENCE_SERVICE: ("127.0.0.1", persistence.port),
            GENERATION_SERVICE: ("127.0.0.1", orch_generation.port),
            RETRIEVAL_SERVICE: ("127.0.0.1", orch_retrieval.port),
            ORCHESTRATION_SERVICE: ("127.0.0.1", orchestration.port),
        },
        tmp_path_factory.mktemp("orch-gateway"),
        # The orchestration process reflects the whole mesh (CALLISTO_REFLECT_MESH).
        reflection_service=ORCHESTRATION_SERVICE,
    )
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="session")
def tenant_key(redis_server: RedisServer) -> Callable[[str], str]:
    """An API key per tenant name, created once per session."""
    created: dict[str, str] = {}

    def key_for(tenant: str) -> str:
        if tenant not in created:
            created[tenant] = new_key(redis_server.url, tenant)
        return created[tenant]

    return key_for


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def orch_client(
    orchestration: ServiceProcess, api_key: str
) -> AsyncIterator[callisto.Client]:
    """An SDK client of the orchestration service, as tenant `acme`."""
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
        yield client


@pytest.fixture(scope="session")
def orch_stub(
    orch_client: callisto.Client,
) -> orchestration_pb2_grpc.OrchestrationServiceAsyncStub:
    """The raw generated stub over the SDK's authenticated channel."""
    return orch_client.stub(orchestration_pb2_grpc.OrchestrationServiceStub)


@pytest.fixture(scope="module")
def replica(
    orchestration: ServiceProcess,
    orchestration_service_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    """A second orchestration process sharing the first one's persistence and Redis."""
    logs = tmp_path_factory.mktemp("orch-replica")
    service = ServiceProcess(
        "orchestration", free_port(), env=orchestration_service_env, log_path=logs / "o.log"
    )
    with service.serving(60):
        yield service


@pytest_asyncio.fixture(loop_scope="session")
async def replica_stub(
    replica: ServiceProcess, api_key: str
) -> AsyncIterator[orchestration_pb2_grpc.OrchestrationServiceAsyncStub]:
    async with await callisto.Client.connect(replica.address, api_key=api_key) as client:
        yield client.stub(orchestration_pb2_grpc.OrchestrationServiceStub)
