"""Helpers the orchestration tests share: environments of the service processes, keys."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from redis.asyncio import Redis

from callisto.services.common.auth import ApiKeyStore, create_api_key
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.settings import OrchestrationSettings

ORCHESTRATION_SERVICE = "callisto.orchestration.v1.OrchestrationService"
PERSISTENCE_SERVICE = "callisto.persistence.v1.PersistenceService"
GENERATION_SERVICE = "callisto.generation.v1.GenerationService"
RETRIEVAL_SERVICE = "callisto.retrieval.v1.RetrievalService"

# Two cores shared by every model: no spinning OpenMP threads, one thread per model.
MODEL_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "OMP_NUM_THREADS": "1",
    "CALLISTO_LLM_N_THREADS": "1",
    "CALLISTO_EMBEDDER_THREADS": "1",
}


def generation_env(service_env: dict[str, str], triton_url: str) -> dict[str, str]:
    return {
        **service_env,
        "CALLISTO_TRITON_URL": triton_url,
        "CALLISTO_GENERATION_DEFAULT_MODEL": "models/toy_llm",
        "CALLISTO_GENERATION_MODEL_EXTRAS": "1",
    }


def retrieval_env(service_env: dict[str, str], triton_url: str, data_dir: Path) -> dict[str, str]:
    return {
        **service_env,
        "CALLISTO_TRITON_URL": triton_url,
        "CALLISTO_RETRIEVAL_DATA_DIR": str(data_dir),
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "1",
    }


BUDGET_TENANT = "frugal"


def orchestration_env(
    service_env: dict[str, str], persistence: str, generation: str, retrieval: str
) -> dict[str, str]:
    return {
        **service_env,
        "CALLISTO_PERSISTENCE_TARGET": persistence,
        "CALLISTO_GENERATION_TARGET": generation,
        "CALLISTO_RETRIEVAL_TARGET": retrieval,
        "CALLISTO_ORCHESTRATION_DEFAULT_MODEL": "models/toy_llm",
        # Tests steer toy_llm (delays, failures) through a run's model extras.
        "CALLISTO_ORCHESTRATION_FORWARD_MODEL_EXTRAS": "true",
        "CALLISTO_REFLECT_MESH": "true",
        # Workflow steps answer in a few toy tokens and retry within a second.
        "CALLISTO_WORKFLOW_STEP_MAX_TOKENS": "24",
        "CALLISTO_WORKFLOW_RETRY_BASE_S": "0.2",
        # Webhooks of the workflow tests reach receivers the tests start on this machine.
        "CALLISTO_OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32",
        # One tenant with a daily budget a single run spends (test_tenant_budget).
        "CALLISTO_TENANT_DAILY_TOKEN_OVERRIDES": json.dumps({BUDGET_TENANT: 40}),
    }


def new_key(redis_url: str, tenant: str) -> str:
    """A fresh API key of `tenant` (callable from async tests: runs in a worker thread)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(
            asyncio.run, create_api_key(redis_url, tenant, label="orchestration tests")
        ).result()


async def service_key(redis_url: str) -> str:
    """A fresh key of the `orchestration` service principal."""
    redis = Redis.from_url(redis_url)
    try:
        return await ApiKeyStore(redis).create_service("orchestration")
    finally:
        await redis.aclose()


async def connect_backends(
    key: str, *, persistence: str, generation: str, retrieval: str
) -> Backends:
    settings = OrchestrationSettings(
        persistence_target=persistence, generation_target=generation, retrieval_target=retrieval
    )
    return await Backends.connect(settings, key)
