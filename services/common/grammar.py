"""The JSON Schema subset the model server's grammar enforces (llama.cpp grammars built from a
schema in deploy/triton/llm): the generation service accepts only this subset, and callers that
show a model a richer schema (a tool's arguments with patterns and numeric ranges) cut it down
with `grammar_schema` and validate the richer one afterwards."""

from __future__ import annotations

from typing import Any

# Keywords the grammar enforces.
GRAMMAR_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "minLength",
        "maxLength",
    }
)
# Keywords that constrain nothing (the model reads them; the grammar ignores them).
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$comment"})
# Bounds unroll into grammar rules (maxLength 40 is 40 nested optionals): past a few thousand
# llama.cpp refuses the grammar, and building a large one costs seconds per request.
MAX_BOUND = 256
# Integer ranges of up to this many values become an enum, which the grammar does enforce.
MAX_ENUM_RANGE = 32
_UPPER = ("maxLength", "maxItems")
_LOWER = ("minLength", "minItems")


def grammar_schema(
    schema: Any, *, annotations: bool = True, bound: int = MAX_BOUND, bound_strings: bool = False
) -> Any:
    """`schema` cut down to what the grammar enforces: other keywords dropped (annotations too
    unless `annotations`), length and item bounds capped at `bound`, small integer ranges turned
    into enums, and with `bound_strings` every free string capped at `bound` characters (an
    unbounded string lets a small model ramble until its token limit)."""
    if isinstance(schema, list):
        return [
            grammar_schema(item, annotations=annotations, bound=bound, bound_strings=bound_strings)
            for item in schema
        ]
    if not isinstance(schema, dict):
        return schema

    def sub(value: Any) -> Any:
        return grammar_schema(
            value, annotations=annotations, bound=bound, bound_strings=bound_strings
        )

    kept: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            kept[key] = {name: sub(item) for name, item in value.items()}
        elif key in ("items", "anyOf", "oneOf") or (
            key == "additionalProperties" and isinstance(value, dict)
        ):
            kept[key] = sub(value)
        elif key in GRAMMAR_KEYWORDS or (annotations and key in ANNOTATIONS):
            kept[key] = value
    for key in _UPPER:
        if isinstance(kept.get(key), int):
            kept[key] = min(kept[key], bound)
    for low, high in zip(_LOWER, _UPPER, strict=True):
        if isinstance(kept.get(low), int):
            kept[low] = min(kept[low], int(kept.get(high, bound)))
    low_value, high_value = schema.get("minimum"), schema.get("maximum")
    if (
        schema.get("type") == "integer"
        and "enum" not in kept
        and isinstance(low_value, int)
        and isinstance(high_value, int)
        and 0 <= high_value - low_value < MAX_ENUM_RANGE
    ):
        kept["enum"] = list(range(low_value, high_value + 1))
    if bound_strings and kept.get("type") == "string" and not {"maxLength", "enum"} & set(kept):
        kept["maxLength"] = bound
    return kept
