"""Fixtures of the SDK tests: SDK clients of the session's persistence service, a private
Redis + persistence pair that tests may kill and restart, and, for the generation and retrieval
helpers, one tritonserver (toy_llm and the embedder) with both services in front of it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sdk_test_support import Restartable

import callisto
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.mesh.triton import TritonServer, running_triton
from callisto.services.common.auth import create_api_key

# Two cores shared with the model processes: no spinning OpenMP threads, one thread per model.
MODEL_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "CALLISTO_EMBEDDER_THREADS": "1"}


@pytest.fixture(scope="session")
def client(persistence_client: callisto.Client) -> callisto.Client:
    """The session's SDK client of the persistence service (tests/conftest.py)."""
    return persistence_client


@pytest.fixture(scope="module")
def restartable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restartable]:
    redis = RedisServer(tmp_path_factory.mktemp("sdk-redis"), appendfsync="always")
    redis.start()
    key = asyncio.run(create_api_key(redis.url, "sdk-restart", label="tests"))
    env = {
        "CALLISTO_REDIS_URL": redis.url,
        "CALLISTO_AUTH_CACHE_SECONDS": "0",
        "CALLISTO_HEALTH_INTERVAL_SECONDS": "0.2",
        "CALLISTO_SHUTDOWN_GRACE_SECONDS": "2",
    }
    log = Path(tmp_path_factory.mktemp("sdk-persistence")) / "persistence.log"
    service = ServiceProcess("persistence", free_port(), env=env, log_path=log)
    service.start()
    service.wait_healthy()
    yield Restartable(redis, service, key)
    service.stop()
    redis.stop()


@pytest.fixture(scope="session")
def sdk_triton() -> Iterator[TritonServer]:
    with running_triton(["toy_llm", "embedder"], env=MODEL_ENV) as server:
        yield server


@pytest.fixture(scope="session")
def sdk_generation(
    sdk_triton: TritonServer, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    env = {
        **service_env,
        "CALLISTO_TRITON_URL": sdk_triton.grpc_url,
        "CALLISTO_GENERATION_DEFAULT_MODEL": "models/toy_llm",
        "CALLISTO_GENERATION_MODEL_EXTRAS": "1",
    }
    logs = tmp_path_factory.mktemp("sdk-generation")
    service = ServiceProcess("generation", free_port(), env=env, log_path=logs / "generation.log")
    with service.serving(60):
        yield service


@pytest.fixture(scope="session")
def sdk_retrieval(
    sdk_triton: TritonServer, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    data_dir = tmp_path_factory.mktemp("sdk-retrieval")
    env = {
        **service_env,
        **MODEL_ENV,
        "CALLISTO_TRITON_URL": sdk_triton.grpc_url,
        "CALLISTO_RETRIEVAL_DATA_DIR": str(data_dir),
    }
    service = ServiceProcess("retrieval", free_port(), env=env, log_path=data_dir / "retrieval.log")
    with service.serving(120):
        yield service


@pytest.fixture(scope="session")
def sdk_orchestration(
    persistence: ServiceProcess,
    sdk_generation: ServiceProcess,
    sdk_retrieval: ServiceProcess,
    service_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    """The orchestration service over the session's persistence and the SDK tests' generation
    and retrieval (toy_llm answers)."""
    env = {
        **service_env,
        "CALLISTO_PERSISTENCE_TARGET": persistence.address,
        "CALLISTO_GENERATION_TARGET": sdk_generation.address,
        "CALLISTO_RETRIEVAL_TARGET": sdk_retrieval.address,
        "CALLISTO_ORCHESTRATION_DEFAULT_MODEL": "models/toy_llm",
    }
    logs = tmp_path_factory.mktemp("sdk-orchestration")
    service = ServiceProcess(
        "orchestration", free_port(), env=env, log_path=logs / "orchestration.log"
    )
    with service.serving(60):
        yield service
