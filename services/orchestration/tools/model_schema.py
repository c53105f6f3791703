"""The arguments schema a model is shown: the registry's schema cut down to what the model
server's grammar can enforce (the generation service accepts only that subset).

Server-side validation keeps the whole schema (patterns, numeric ranges); the model gets the
part its sampling can be held to, with small integer ranges turned into enums so the grammar
still enforces them. A call the model makes outside the rest is caught by `validate`."""

from __future__ import annotations

from typing import Any

# What the generation service's grammar enforces, and annotations that constrain nothing
# (services/generation/structured.py: CONSTRAINTS, ANNOTATIONS, MAX_BOUND).
ENFORCED = {
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
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$comment"}
MAX_BOUND = 256
# Integer ranges up to this many values become an enum.
MAX_ENUM_RANGE = 32


def model_schema(schema: Any) -> Any:
    if isinstance(schema, list):
        return [model_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    kept: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties",) and isinstance(value, dict):
            kept[key] = {name: model_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf"):
            kept[key] = model_schema(value)
        elif key in ("maxLength", "maxItems", "minLength", "minItems"):
            kept[key] = min(value, MAX_BOUND)
        elif key in ENFORCED or key in ANNOTATIONS:
            kept[key] = value
    low, high = schema.get("minimum"), schema.get("maximum")
    if (
        schema.get("type") == "integer"
        and "enum" not in schema
        and isinstance(low, int)
        and isinstance(high, int)
        and 0 <= high - low < MAX_ENUM_RANGE
    ):
        kept["enum"] = list(range(low, high + 1))
    return kept
