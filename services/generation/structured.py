"""Structured output: JSON Schemas checked before generation, the tool-call envelope, and the
model's JSON checked after it.

The model server constrains sampling with a grammar built from a JSON Schema (llama.cpp in
`deploy/triton/llm`), so a schema is accepted only within the subset that converter enforces:
what the grammar cannot express would let the model emit JSON the schema rejects. Tool calling on
a model without native tools is one constrained generation whose schema is a `oneOf` over
`{"tool": <name>, "arguments": <its schema>}` envelopes (plus `{"answer": <text>}` when the model
may also answer in text); `parse_tool_output` turns the envelope back into calls.

This module speaks in plain JSON values (dicts, lists); the handlers translate protobuf.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]

from callisto.services.common.grammar import ANNOTATIONS, MAX_BOUND
from callisto.services.common.grammar import GRAMMAR_KEYWORDS as CONSTRAINTS
from callisto.services.common.validation import Violations

MAX_SCHEMA_BYTES = 16 * 1024
MAX_SCHEMA_DEPTH = 8
MAX_TOOLS = 32
MAX_TOOL_DESCRIPTION = 1024
BOUNDS = (("minLength", "maxLength"), ("minItems", "maxItems"))
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
# A subschema must say what it admits: the grammar converter has no rule for "anything".
SHAPING = {"type", "enum", "const", "anyOf", "oneOf"}
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}


class OutputInvalid(Exception):
    """The model's output is not JSON, or not an instance of the schema."""


@dataclass(frozen=True)
class ToolSpec:
    """A tool offered to the model: its name, what it does, its arguments' schema."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCallOut:
    """One call the model made."""

    id: str
    name: str
    arguments: dict[str, Any]


def order_properties(schema: Any) -> Any:
    """The schema with each object's properties in the order the model will write them.

    A protobuf Struct keeps no key order (it is a map), so the order is made here: required
    properties in the order of `required` (a list, which keeps it), then the others by name.
    The grammar writes properties in this order, so a caller who wants `reasoning` before
    `verdict` lists them so in `required`.
    """
    if isinstance(schema, list):
        return [order_properties(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ordered = {key: order_properties(value) for key, value in schema.items()}
    properties = ordered.get("properties")
    if isinstance(properties, dict):
        required = [
            name for name in dict.fromkeys(schema.get("required") or []) if name in properties
        ]
        rest = sorted(name for name in properties if name not in required)
        ordered["properties"] = {name: properties[name] for name in [*required, *rest]}
    return ordered


def _subschemas(schema: dict[str, Any], path: str) -> Iterator[tuple[str, Any]]:
    for name, sub in (schema.get("properties") or {}).items():
        yield f"{path}.properties.{name}", sub
    if isinstance(schema.get("additionalProperties"), dict):
        yield f"{path}.additionalProperties", schema["additionalProperties"]
    if "items" in schema:
        yield f"{path}.items", schema["items"]
    for keyword in ("anyOf", "oneOf"):
        for index, sub in enumerate(schema.get(keyword) or []):
            yield f"{path}.{keyword}[{index}]", sub


def _check_subset(
    schema: Any, path: str, depth: int, violations: Violations, *, root: bool = False
) -> None:
    if not isinstance(schema, dict):
        violations.add(path, "must be a schema object (boolean schemas are not supported)")
        return
    if depth > MAX_SCHEMA_DEPTH:
        violations.add(path, f"nests deeper than {MAX_SCHEMA_DEPTH} levels")
        return
    unsupported = sorted(set(schema) - CONSTRAINTS - ANNOTATIONS)
    if unsupported:
        violations.add(
            path, f"uses keywords the model server cannot enforce: {', '.join(unsupported)}"
        )
    if schema and not SHAPING & set(schema):
        violations.add(path, "must say what it admits: type, enum, const, anyOf or oneOf")
    if "$schema" in schema and not root:
        violations.add(path, "$schema is allowed only at the top")
    types = schema.get("type")
    named = [types] if isinstance(types, str) else list(types or [])
    if isinstance(types, list) and len(types) == 0:
        violations.add(path + ".type", "must name at least one type")
    for name in named:
        if name not in TYPES:
            violations.add(path + ".type", f"unknown type {name!r}")
    if ("minLength" in schema or "maxLength" in schema) and types != "string":
        violations.add(path, 'minLength and maxLength need "type": "string"')
    for low, high in BOUNDS:
        for keyword in (low, high):
            if schema.get(keyword, 0) > MAX_BOUND:
                violations.add(f"{path}.{keyword}", f"must be at most {MAX_BOUND}")
        if schema.get(low, 0) > schema.get(high, MAX_BOUND):
            violations.add(f"{path}.{high}", f"must not be below {low}")
    if "enum" in schema and not schema["enum"]:
        violations.add(path + ".enum", "must list at least one value")
    if isinstance(schema.get("required"), list):
        known = set(schema.get("properties") or {})
        for name in schema["required"]:
            if name not in known:
                violations.add(path + ".required", f"{name!r} is required but not in properties")
    for sub_path, sub in _subschemas(schema, path):
        _check_subset(sub, sub_path, depth + 1, violations)


def check_schema(
    schema: dict[str, Any], path: str, violations: Violations, *, object_only: bool = False
) -> None:
    """Adds a violation for each way `schema` is not a schema the model server can enforce."""
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        violations.add(path, f"must be at most {MAX_SCHEMA_BYTES} bytes as JSON")
        return
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
        violations.add(path + where, f"is not a valid JSON Schema: {error.message}")
        return
    _check_subset(schema, path, 0, violations, root=True)
    if object_only and schema.get("type") != "object":
        violations.add(path + ".type", 'must be "object": tool arguments are a JSON object')


def check_tools(tools: Sequence[ToolSpec], path: str, violations: Violations) -> None:
    if len(tools) > MAX_TOOLS:
        violations.add(path, f"must hold at most {MAX_TOOLS} tools")
    seen: set[str] = set()
    for index, tool in enumerate(tools[:MAX_TOOLS]):
        where = f"{path}[{index}]"
        if not NAME.match(tool.name):
            violations.add(
                where + ".name", "must be a letter, then letters, digits, _ or - (at most 64)"
            )
        elif tool.name in seen:
            violations.add(where + ".name", f"{tool.name!r} is already used by another tool")
        seen.add(tool.name)
        if len(tool.description) > MAX_TOOL_DESCRIPTION:
            violations.add(
                where + ".description", f"must be at most {MAX_TOOL_DESCRIPTION} characters"
            )
        if tool.parameters:
            check_schema(tool.parameters, where + ".parameters", violations, object_only=True)


def tool_envelope(tools: Sequence[ToolSpec], *, allow_answer: bool) -> dict[str, Any]:
    """The schema of one tool call among `tools` (or of a text answer, when allowed)."""
    alternatives = [ANSWER_SCHEMA] if allow_answer else []
    for tool in tools:
        alternatives.append(
            {
                "type": "object",
                "properties": {
                    "tool": {"const": tool.name},
                    "arguments": tool.parameters or NO_ARGUMENTS,
                },
                "required": ["tool", "arguments"],
                "additionalProperties": False,
            }
        )
    return alternatives[0] if len(alternatives) == 1 else {"oneOf": alternatives}


def schema_instruction(schema: dict[str, Any]) -> str:
    """Tells the model the shape the grammar will hold it to, so its content fits the fields."""
    return "Answer with one JSON value only, matching this JSON Schema:\n" + json.dumps(
        schema, ensure_ascii=False
    )


def tools_instruction(tools: Sequence[ToolSpec], *, allow_answer: bool) -> str:
    lines = ["You can call these tools:"]
    for tool in tools:
        arguments = json.dumps(tool.parameters or NO_ARGUMENTS, ensure_ascii=False)
        lines.append(f"- {tool.name}: {tool.description or tool.name}. Arguments: {arguments}")
    lines.append('To call a tool, answer with JSON only: {"tool": "<name>", "arguments": {...}}.')
    if allow_answer:
        lines.append('To answer without a tool, answer with JSON only: {"answer": "<text>"}.')
    return "\n".join(lines)


def parse_json(text: str, schema: dict[str, Any]) -> Any:
    """The model's output as JSON, valid against `schema`; OutputInvalid when it is not."""
    try:
        value = json.loads(text, strict=False)  # the grammar admits raw control characters
    except ValueError as error:
        raise OutputInvalid(f"the model's output is not JSON: {error}") from error
    mismatch = next(iter(Draft202012Validator(schema).iter_errors(value)), None)
    if mismatch is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in mismatch.absolute_path)
        raise OutputInvalid(
            f"the model's output does not match the schema at ${where}: {mismatch.message}"
        )
    return value


def parse_tool_output(
    text: str, tools: Sequence[ToolSpec], *, allow_answer: bool
) -> tuple[str, list[ToolCallOut]]:
    """(text answer, tool calls) from the model's envelope."""
    value = parse_json(text, tool_envelope(tools, allow_answer=allow_answer))
    if "answer" in value:
        return str(value["answer"]), []
    call = ToolCallOut(
        id="call_" + secrets.token_hex(12), name=value["tool"], arguments=value["arguments"]
    )
    return "", [call]


def call_text(name: str, arguments: dict[str, Any]) -> str:
    """A past tool call as the model wrote it (its envelope), for the prompt."""
    return json.dumps({"tool": name, "arguments": arguments}, ensure_ascii=False)
