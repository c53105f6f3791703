"""One real tritonserver per test session, serving the models of deploy/triton."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from callisto.mesh.triton import (
    TritonServer,
    default_model_repository,
    ensure_triton_environment,
    llama_wheel_available,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "llm: needs the real llama.cpp model in tritonserver")


@pytest.fixture(scope="session")
def toy_events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """JSON lines toy_llm appends per finished request (tokens produced, finish reason)."""
    return tmp_path_factory.mktemp("toy_llm") / "events.jsonl"


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory, toy_events: Path) -> Iterator[TritonServer]:
    # The llama.cpp wheel takes 10-14 minutes to compile: the real LLM joins only when cached.
    with_llm = llama_wheel_available()
    environment = ensure_triton_environment(with_llm=with_llm, with_embedder=True)
    workdir = tmp_path_factory.mktemp("triton")
    models = ["toy_llm", "embedder", *(["llm"] if with_llm else [])]
    server = TritonServer(environment, log_path=workdir / "tritonserver.log")
    env = {
        "CALLISTO_TOY_LLM_EVENTS": str(toy_events),
        # Two cores shared by llama.cpp and torch: one thread each, no spinning.
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "1",
        "CALLISTO_LLM_N_THREADS": "1",
        "CALLISTO_EMBEDDER_THREADS": "1",
    }
    server.start(default_model_repository(), models, env)
    try:
        yield server
    finally:
        server.stop()
        if os.environ.get("CALLISTO_KEEP_TRITON_LOG"):
            print(server.log_tail(200))
