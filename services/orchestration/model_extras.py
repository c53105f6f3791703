"""Toy-model extras a call may carry (`x-callisto-model-extras` gRPC metadata: a small JSON
object such as `{"delay_ms": 20}` or `{"fail_after": 0}`) for tests and benchmarks; they reach
generation only where CALLISTO_ORCHESTRATION_FORWARD_MODEL_EXTRAS allows."""

from __future__ import annotations

import json
from typing import Any

import grpc

from callisto.services.common.errors import InvalidArgument
from callisto.services.orchestration.budget import MODEL_EXTRAS_METADATA

MAX_MODEL_EXTRAS_BYTES = 4096


def parse_model_extras(raw: Any) -> str:
    """The extras as sent, refused (INVALID_ARGUMENT, before anything else happens) unless
    they are a small JSON object; "" when there are none."""
    if not raw:
        return ""
    text = raw if isinstance(raw, str) else ""
    try:
        valid = len(text.encode()) <= MAX_MODEL_EXTRAS_BYTES and isinstance(json.loads(text), dict)
    except ValueError:
        valid = False
    if not valid:
        raise InvalidArgument.field(
            MODEL_EXTRAS_METADATA,
            f"must be a JSON object of at most {MAX_MODEL_EXTRAS_BYTES} bytes",
        )
    return text


def model_extras(context: grpc.aio.ServicerContext[Any, Any], forward: bool) -> str:
    """The call's model extras when `forward` (the setting) allows them, else ""."""
    if not forward:
        return ""
    metadata = dict(context.invocation_metadata() or ())
    return parse_model_extras(metadata.get(MODEL_EXTRAS_METADATA, ""))
