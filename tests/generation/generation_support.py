"""Helpers the generation tests share (toy_llm extras, prompts, error details, toy_llm events).

The API key travels on the SDK client's channel (the `stub` fixture); calls add only toy_llm's
extra request fields here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc

from callisto import errors
from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2
from callisto.mesh.triton import TritonServer, default_model_repository, ensure_triton_environment

# Two cores shared with llama.cpp: no spinning OpenMP threads, one thread per model.
MODEL_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "OMP_NUM_THREADS": "1",
    "CALLISTO_LLM_N_THREADS": "1",
}


def start_triton(workdir: Path, events: Path, with_llm: bool) -> TritonServer:
    environment = ensure_triton_environment(with_llm=with_llm, with_embedder=False)
    server = TritonServer(environment, log_path=workdir / "tritonserver.log")
    env = {**MODEL_ENV, "CALLISTO_TOY_LLM_EVENTS": str(events)}
    server.start(
        default_model_repository(), ["toy_llm", "sentiment", *(["llm"] if with_llm else [])], env
    )
    return server


def generation_env(service_env: dict[str, str], triton_url: str) -> dict[str, str]:
    return {
        **service_env,
        "CALLISTO_TRITON_URL": triton_url,
        "CALLISTO_GENERATION_DEFAULT_MODEL": "models/toy_llm",
        "CALLISTO_GENERATION_MODEL_EXTRAS": "1",
        "CALLISTO_REFLECT_MESH": "1",
    }


def extras(**fields: Any) -> tuple[tuple[str, str], ...]:
    """Metadata with toy_llm's extra model fields (delay_ms, tag, fail_after, ...), if any."""
    if not fields:
        return ()
    return (("x-callisto-model-extras", json.dumps(fields)),)


def chat_messages(text: str) -> list[generation_pb2.ChatMessage]:
    return [
        generation_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content="be brief"),
        generation_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text),
    ]


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations of an error status."""
    return errors.from_rpc_error(error).field_violations
