"""JSON in and out of structured generations: a schema (or any JSON-able mapping) as the
`Struct` a request carries, and the JSON value a structured answer holds."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from callisto.api.generation.v1 import generation_pb2


def to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    """Through JSON, so tuples, ints and nested values all land as Struct values."""
    struct = struct_pb2.Struct()
    struct.update(json.loads(json.dumps(value)))
    return struct


def answer_json(result: generation_pb2.GenerationResult) -> Any:
    """The parsed answer of a structured generation (the model server's parse, else the
    text's); None when it holds no JSON."""
    if result.HasField("parsed"):
        return json_format.MessageToDict(result.parsed)
    try:
        return json.loads(result.text)
    except ValueError:
        return None
