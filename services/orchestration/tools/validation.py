"""Arguments of a tool call against its JSON Schema (draft 2020-12, the `jsonschema` library),
after bounds on their size and depth; violations name fields as `arguments.<field>`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import ValidationError  # type: ignore[import-untyped]

from callisto.services.common.errors import FieldViolation

ROOT = "arguments"
# jsonschema's own messages quote the instance, which may be long; ours stay short.
_MAX_DESCRIPTION = 200


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: equal arguments give equal text (cache keys, sizes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def normalise(value: Any) -> Any:
    """Integral floats as ints (a `google.protobuf.Struct` carries every number as a double), so
    `{"top_k": 5.0}` and `{"top_k": 5}` are the same call."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: normalise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [normalise(item) for item in value]
    return value


def deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` levels (a flat object is 1); stops
    descending past the limit, so a hostile nesting cannot exhaust the stack."""
    if not isinstance(value, dict | list):
        return False
    if limit <= 0:
        return True
    items = value.values() if isinstance(value, dict) else value
    return any(deeper_than(item, limit - 1) for item in items)


def bounds_violations(arguments: Any, *, max_bytes: int, max_depth: int) -> list[FieldViolation]:
    """What makes `arguments` unfit to even check against a schema."""
    if not isinstance(arguments, dict):
        return [FieldViolation(ROOT, "must be a JSON object")]
    if deeper_than(arguments, max_depth):
        return [FieldViolation(ROOT, f"is nested deeper than {max_depth} levels")]
    try:
        size = len(canonical_json(arguments).encode())
    except (TypeError, ValueError):
        return [FieldViolation(ROOT, "must hold only JSON values")]
    if size > max_bytes:
        return [FieldViolation(ROOT, f"is {size} bytes as JSON; at most {max_bytes} allowed")]
    return []


def schema_violations(validator: Draft202012Validator, arguments: Any) -> list[FieldViolation]:
    violations = [v for error in validator.iter_errors(arguments) for v in _violations(error)]
    return sorted(set(violations), key=lambda v: (v.field, v.description))


def _violations(error: ValidationError) -> Iterator[FieldViolation]:
    path = _path(error)
    kind = error.validator
    expected = error.validator_value
    if kind == "required" and isinstance(error.instance, dict):
        for name in expected:
            if name not in error.instance:
                yield FieldViolation(f"{path}.{name}", "is required")
        return
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        for name in error.instance:
            if name not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                yield FieldViolation(f"{path}.{name}", f"is not an argument of this tool ({known})")
        return
    yield FieldViolation(path, _description(error))


def _description(error: ValidationError) -> str:
    expected = error.validator_value
    match error.validator:
        case "type":
            return f"must be of type {expected}"
        case "enum":
            return "must be one of " + ", ".join(json.dumps(v) for v in expected)
        case "minLength":
            return f"must be at least {expected} characters long"
        case "maxLength":
            return f"must be at most {expected} characters long"
        case "minimum":
            return f"must be at least {expected}"
        case "maximum":
            return f"must be at most {expected}"
        case "exclusiveMinimum":
            return f"must be greater than {expected}"
        case "exclusiveMaximum":
            return f"must be less than {expected}"
        case "pattern":
            return f"must match the pattern {expected}"
        case "minItems":
            return f"must have at least {expected} items"
        case "maxItems":
            return f"must have at most {expected} items"
    message = str(error.message)
    return message if len(message) <= _MAX_DESCRIPTION else message[: _MAX_DESCRIPTION - 1] + "…"


def _path(error: ValidationError) -> str:
    path = ROOT
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path
