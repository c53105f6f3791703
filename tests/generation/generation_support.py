"""Helpers the generation tests share (metadata, prompts, error details, toy_llm events)."""

from __future__ import annotations

import json
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from callisto.common.v1 import common_pb2
from callisto.generation.v1 import generation_pb2


def auth(api_key: str, **extras: Any) -> tuple[tuple[str, str], ...]:
    """Metadata with the API key and, for toy_llm, extra model fields (delay_ms, tag, ...)."""
    metadata = [("authorization", f"Bearer {api_key}")]
    if extras:
        metadata.append(("x-callisto-model-extras", json.dumps(extras)))
    return tuple(metadata)


def chat_messages(text: str) -> list[generation_pb2.ChatMessage]:
    return [
        generation_pb2.ChatMessage(role=common_pb2.ROLE_SYSTEM, content="be brief"),
        generation_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text),
    ]


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations of an error status."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    found: dict[str, str] = {}
    if status is None:
        return found
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for violation in bad.field_violations:
                found[violation.field] = violation.description
    return found
