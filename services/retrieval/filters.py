"""Typed metadata filters compiled to Milvus boolean expressions — never by pasting user text.

Only whitelisted schema fields may be named; every value is rendered from its Python type
(strings always double-quoted and escaped, numbers and booleans formatted, never copied). Every
expression starts with the tenant clause, and ids that pymilvus would paste unescaped into
``get``/``delete`` calls are validated against :data:`ID_PATTERN` first.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from callisto.services.retrieval.errors import InvalidArgument, InvalidFilter

Scalar = str | int | float | bool
FilterValue = Scalar | Sequence[Scalar]
Operator = Literal[
    "eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "contains", "contains_any", "contains_all"
]
FieldKind = Literal["str", "int", "str_array"]

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_ATTRIBUTE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_COMPARE = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_ORDERING = frozenset({"lt", "le", "gt", "ge"})
_ARRAY_OPS = {
    "contains": "array_contains",
    "contains_any": "array_contains_any",
    "contains_all": "array_contains_all",
}
_JSON_OPS = {
    "contains": "json_contains",
    "contains_any": "json_contains_any",
    "contains_all": "json_contains_all",
}

# Filterable fields of the chunk collection and the entity collection. ``attributes.<key>`` is
# allowed on both (typed JSON comparisons).
CHUNK_FIELDS: Mapping[str, FieldKind] = {
    "document_id": "str",
    "title": "str",
    "source_uri": "str",
    "mime_type": "str",
    "section": "str",
    "tags": "str_array",
    "page": "int",
    "chunk_index": "int",
    "created_time_ms": "int",
}
ENTITY_FIELDS: Mapping[str, FieldKind] = {
    "entity_id": "str",
    "entity_type": "str",
    "facet": "str",
    "title": "str",
}


@dataclass(frozen=True, slots=True)
class Condition:
    """``field op value``; ``field`` is a whitelisted name or ``attributes.<key>``."""

    field: str
    op: Operator
    value: FilterValue


def escape_string(value: str, field: str = "value") -> str:
    """A double-quoted Milvus string literal for ``value``; control characters other than
    newline, CR and tab are rejected."""
    for ch in value:
        if unicodedata.category(ch) == "Cc" and ch not in "\n\r\t":
            raise InvalidFilter(field, f"control character U+{ord(ch):04X} is not allowed")
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def validate_id(value: str, field: str) -> str:
    """Return ``value`` if it matches :data:`ID_PATTERN`, else raise :class:`InvalidArgument`."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise InvalidArgument(
            field, "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"
        )
    return value


def tenant_clause(tenant: str) -> str:
    validate_id(tenant, "tenant")
    return f"tenant == {escape_string(tenant, 'tenant')}"


def _literal(value: object, kind: Literal["str", "int", "any"], field: str) -> str:
    # bool is an int subclass: check it first so True never renders as 1 for an int field.
    if isinstance(value, bool):
        if kind != "any":
            raise InvalidFilter(field, f"expected {kind}, got bool")
        return "true" if value else "false"
    if isinstance(value, str):
        if kind == "int":
            raise InvalidFilter(field, "expected int, got str")
        return escape_string(value, field)
    if isinstance(value, int):
        if kind == "str":
            raise InvalidFilter(field, "expected str, got int")
        return str(value)
    if isinstance(value, float):
        if kind != "any":
            raise InvalidFilter(field, f"expected {kind}, got float")
        if not math.isfinite(value):
            raise InvalidFilter(field, "number must be finite")
        return repr(value)
    raise InvalidFilter(field, f"unsupported value type {type(value).__name__}")


def _list_literal(value: FilterValue, kind: Literal["str", "int", "any"], field: str) -> str:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidFilter(field, "expected a list of values")
    if not value:
        raise InvalidFilter(field, "list must not be empty")
    if len(value) > 1024:
        raise InvalidFilter(field, "list is limited to 1024 values")
    return "[" + ", ".join(_literal(v, kind, field) for v in value) + "]"


def compile_condition(condition: Condition, fields: Mapping[str, FieldKind]) -> str:
    """One condition as a Milvus expression fragment."""
    name, op, value = condition.field, condition.op, condition.value
    if name.startswith("attributes."):
        key = name.removeprefix("attributes.")
        if not _ATTRIBUTE_KEY.fullmatch(key):
            raise InvalidFilter(name, "attribute keys are letters, digits and '_' (max 64)")
        target = f'attributes["{key}"]'
        if op in _COMPARE:
            if op in _ORDERING and isinstance(value, bool):
                raise InvalidFilter(name, "ordering comparisons need a number or a string")
            return f"{target} {_COMPARE[op]} {_literal(value, 'any', name)}"
        if op in ("in", "not_in"):
            keyword = "in" if op == "in" else "not in"
            return f"{target} {keyword} {_list_literal(value, 'any', name)}"
        if op == "contains":
            return f"json_contains({target}, {_literal(value, 'any', name)})"
        return f"{_JSON_OPS[op]}({target}, {_list_literal(value, 'any', name)})"
    kind = fields.get(name)
    if kind is None:
        raise InvalidFilter(
            name, f"unknown filter field; allowed: {', '.join(sorted(fields))}, attributes.<key>"
        )
    if kind == "str_array":
        if op not in _ARRAY_OPS:
            raise InvalidFilter(name, f"operator {op!r} is not supported on a list field")
        if op == "contains":
            return f"array_contains({name}, {_literal(value, 'str', name)})"
        return f"{_ARRAY_OPS[op]}({name}, {_list_literal(value, 'str', name)})"
    scalar_kind: Literal["str", "int"] = "str" if kind == "str" else "int"
    if op in _COMPARE:
        return f"{name} {_COMPARE[op]} {_literal(value, scalar_kind, name)}"
    if op in ("in", "not_in"):
        keyword = "in" if op == "in" else "not in"
        return f"{name} {keyword} {_list_literal(value, scalar_kind, name)}"
    raise InvalidFilter(name, f"operator {op!r} is not supported on a scalar field")


def build_expression(
    tenant: str,
    conditions: Sequence[Condition] = (),
    fields: Mapping[str, FieldKind] = CHUNK_FIELDS,
    extra: Sequence[str] = (),
) -> str:
    """``tenant == "t" and (c1) and (c2) ...``; ``extra`` holds fragments this module built."""
    parts = [tenant_clause(tenant)]
    parts.extend(f"({compile_condition(c, fields)})" for c in conditions)
    parts.extend(f"({fragment})" for fragment in extra)
    return " and ".join(parts)
