"""Fixtures of the retrieval tests. Backend tests: a real Milvus Lite store in a temp dir and a
deterministic word-hashing embedder (storage/search only). Service tests: the real Triton
embedder, the real retrieval service process, the real Envoy gateway in front of it."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from retrieval_test_support import RETRIEVAL_SERVICE, HashingEmbedder, create_key, retrieval_env

from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.services.retrieval.milvus_store import MilvusConfig, MilvusStore


@pytest.fixture(scope="session")
def milvus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("milvus")


@pytest.fixture(scope="session")
async def store(milvus_dir: Path) -> AsyncIterator[MilvusStore]:
    # One store per session: Milvus Lite start-up costs seconds; tests isolate by tenant.
    opened = await MilvusStore.open(MilvusConfig(uri=str(milvus_dir / "callisto.db")))
    yield opened
    await opened.close()


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder()


_tenant_counter = itertools.count()


@pytest.fixture
def tenant(request: pytest.FixtureRequest) -> str:
    """A fresh tenant per test so tests sharing the session store never see each other."""
    name = re.sub(r"[^A-Za-z0-9]", "", request.node.name)[:40]
    return f"t{next(_tenant_counter)}-{name}"


# Service-level fixtures: one real Triton (embedder only) and one retrieval service process per
# session, on free ports, plus keys for the tenants the tests use.


@pytest.fixture(scope="session")
def triton_embedder_url() -> Iterator[str]:
    from callisto.mesh.triton import running_triton

    env = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "CALLISTO_EMBEDDER_THREADS": "1"}
    server: Any
    with running_triton(["embedder"], env=env) as server:
        yield str(server.grpc_url)


@pytest.fixture(scope="session")
def retrieval_service(
    service_env: dict[str, str],
    triton_embedder_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    data_dir = tmp_path_factory.mktemp("retrieval-service")
    service = ServiceProcess(
        "retrieval",
        free_port(),
        env=retrieval_env(service_env, triton_embedder_url, data_dir),
        log_path=data_dir / "retrieval.log",
    )
    service.start()
    service.wait_healthy(timeout=120)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def tenant_keys(redis_server: RedisServer) -> Callable[[str], str]:
    """An API key per tenant name, created once per session."""
    created: dict[str, str] = {}

    def key_for(tenant: str) -> str:
        if tenant not in created:
            created[tenant] = create_key(redis_server.url, tenant)
        return created[tenant]

    return key_for


@pytest_asyncio.fixture(scope="session")
async def retrieval_channel(retrieval_service: ServiceProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(retrieval_service.address) as channel:
        yield channel


@pytest.fixture(scope="session")
def rstub(retrieval_channel: grpc.aio.Channel) -> pb_grpc.RetrievalServiceAsyncStub:
    return pb_grpc.RetrievalServiceStub(retrieval_channel)


@pytest.fixture(scope="session")
def retrieval_gateway(
    retrieval_service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnvoyGateway]:
    gateway = EnvoyGateway.on_free_ports(
        {RETRIEVAL_SERVICE: ("127.0.0.1", retrieval_service.port)},
        tmp_path_factory.mktemp("retrieval-gateway"),
    )
    gateway.start()
    yield gateway
    gateway.stop()
