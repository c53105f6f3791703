"""The prompts of the assistant loop and the JSON Schemas its structured steps answer in.

The schemas are built so that both models in the mesh follow them: the real one is held to them
by the model server's grammar, and toy_llm answers with their minimal instance (required
properties, the first enum value, `minItems` items, the first `oneOf` alternative unless one has
a `const` that is a word of the last user message). So every yes/no is an enum whose first value
is "yes", each planned call is a `oneOf` alternative with its tool's name as a `const`, and the
last user message of a plan is the user's own question. Prompts stay short: the real model is a
135M-parameter model with a 2048-token window.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Any

from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2
from callisto.services.common.grammar import grammar_schema
from callisto.services.orchestration.tools.registry import ToolSpec

YES, NO = "yes", "no"
MAX_INTENT = 60
MAX_ENTITY = 40
MAX_ENTITIES = 3
MAX_MISSING = 80
# Bound on any string or array a planned argument may hold: each unit of a bound is a rule of
# the grammar, and a query longer than this is not a better query.
MAX_ARGUMENT_BOUND = 120


def _chat(role: common_pb2.Role.ValueType, content: str) -> generation_pb2.ChatMessage:
    return generation_pb2.ChatMessage(role=role, content=content)


def system(content: str) -> generation_pb2.ChatMessage:
    return _chat(common_pb2.ROLE_SYSTEM, content)


def user(content: str) -> generation_pb2.ChatMessage:
    return _chat(common_pb2.ROLE_USER, content)


def assistant(content: str) -> generation_pb2.ChatMessage:
    return _chat(common_pb2.ROLE_ASSISTANT, content)


# --- understand ---------------------------------------------------------------------------

UNDERSTAND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "intent": {"type": "string", "maxLength": MAX_INTENT},
        "entities": {
            "type": "array",
            "items": {"type": "string", "maxLength": MAX_ENTITY},
            "maxItems": MAX_ENTITIES,
        },
        "needs_knowledge": {"enum": [YES, NO]},
    },
    # The order the model writes them in: what is asked, about what, then the decision (the
    # first round's answer, `route_schema`, puts its calls after them).
    "required": ["intent", "entities", "needs_knowledge"],
    "additionalProperties": False,
}

# --- plan ---------------------------------------------------------------------------------


# A tool's argument schema as the plan shows it: what the grammar enforces, bounds capped,
# without annotations (the prompt's tool list says them in prose at a fraction of the tokens).
argument_schema = functools.partial(
    grammar_schema, annotations=False, bound=MAX_ARGUMENT_BOUND, bound_strings=True
)


def planned_arguments(parameters: dict[str, Any]) -> dict[str, Any]:
    """A tool's arguments as a plan may set them: optional numbers (top_k, …) are left to the
    tool's defaults, since a small model picks them no better and each costs prompt tokens (the
    schema is part of the prompt) and grammar rules."""
    schema: dict[str, Any] = argument_schema(parameters)
    required = set(schema.get("required") or [])
    properties = schema.get("properties")
    if isinstance(properties, dict):
        schema["properties"] = {
            name: value
            for name, value in properties.items()
            if name in required
            or not (isinstance(value, dict) and value.get("type") in ("integer", "number"))
        }
    return schema


def call_schema(spec: ToolSpec) -> dict[str, Any]:
    """One planned call of `spec`: its name as a `const`, its arguments' schema."""
    return {
        "type": "object",
        "properties": {
            "tool": {"const": spec.name},
            "arguments": planned_arguments(spec.parameters),
        },
        "required": ["tool", "arguments"],
        "additionalProperties": False,
    }


def plan_schema(specs: Sequence[ToolSpec], *, min_calls: int, max_calls: int) -> dict[str, Any]:
    """A list of calls among `specs`, between `min_calls` and `max_calls` of them."""
    alternatives = [call_schema(spec) for spec in specs]
    item = alternatives[0] if len(alternatives) == 1 else {"oneOf": alternatives}
    return {
        "type": "object",
        "properties": {
            "calls": {
                "type": "array",
                "items": item,
                "minItems": min(min_calls, max_calls),
                "maxItems": max_calls,
            }
        },
        "required": ["calls"],
        "additionalProperties": False,
    }


_ASIDE = re.compile(r"\s*\([^()]*\)")


def first_sentence(text: str) -> str:
    """A description's first sentence without its asides in parentheses: what the tool does,
    in the fewest tokens (the plan's prompt is read in full by a CPU model each turn)."""
    head, dot, _ = text.partition(". ")
    return _ASIDE.sub("", head + "." if dot else text)


def plan_messages(
    *,
    specs: Sequence[ToolSpec],
    question: str,
    intent: str,
    entities: Sequence[str],
    needs_knowledge: bool,
    earlier: Sequence[str],
    missing: str,
) -> list[generation_pb2.ChatMessage]:
    """The planning prompt; its last user message is the question itself (see the module)."""
    tools = "\n".join(f"- {spec.name}: {first_sentence(spec.description)}" for spec in specs)
    lines = [
        "Choose the tool calls that gather what the answer needs. Tools:",
        tools,
        "Search with the key words of the question.",
    ]
    searches = [spec.name for spec in specs if "query" in spec.parameters.get("properties", {})]
    if searches:
        # A small model follows an example far better than a rule.
        example = {"calls": [{"tool": searches[0], "arguments": {"query": question[:100]}}]}
        lines.append("For example: " + json.dumps(example, ensure_ascii=False))
    if intent:
        lines.append(f"The user wants: {intent}.")
    if entities:
        lines.append("It is about: " + ", ".join(entities) + ".")
    if not needs_knowledge:
        lines.append("It may need no tool at all: then plan no calls.")
    if earlier:
        lines.append("Calls made already, and what they found:")
        lines.extend(f"- {line}" for line in earlier)
        lines.append(
            "They were not enough"
            + (f" ({missing})" if missing else "")
            + ": plan different calls or other search terms."
        )
    return [system("\n".join(lines)), user(question)]


def route_schema(specs: Sequence[ToolSpec], *, max_calls: int) -> dict[str, Any]:
    """The first round's answer: the understanding's fields first (what is asked, about what,
    whether it needs a look-up), then at least one call among `specs` (a greeting's look-up is
    dropped by the loop when needs_knowledge is no)."""
    calls = plan_schema(specs, min_calls=1, max_calls=max_calls)["properties"]["calls"]
    return {
        "type": "object",
        "properties": {**UNDERSTAND_SCHEMA["properties"], "calls": calls},
        "required": [*UNDERSTAND_SCHEMA["required"], "calls"],
        "additionalProperties": False,
    }


def route_messages(
    *,
    specs: Sequence[ToolSpec],
    question: str,
    history: Sequence[generation_pb2.ChatMessage],
) -> list[generation_pb2.ChatMessage]:
    """The prompt of the first round's understand-and-plan generation; the history lets a
    follow-up's entities be understood, the last user message is the question (see the
    module)."""
    tools = "\n".join(f"- {spec.name}: {first_sentence(spec.description)}" for spec in specs)
    lines = [
        "Understand the user's last message and choose the tool calls its answer needs. "
        "needs_knowledge: no only for greetings, thanks or arithmetic. Tools:",
        tools,
        "Search with the key words of the question.",
    ]
    searches = [spec.name for spec in specs if "query" in spec.parameters.get("properties", {})]
    if searches:
        # A small model follows an example far better than a rule, and copies it: a made-up
        # intent or entity in it would be copied into every plan (and its search), so the
        # example's understanding is plain and its search is the question's words.
        example = {
            "intent": "answer the question",
            "entities": [],
            "needs_knowledge": YES,
            "calls": [{"tool": searches[0], "arguments": {"query": question[:100]}}],
        }
        lines.append("For example: " + json.dumps(example, ensure_ascii=False))
    return [system("\n".join(lines)), *history, user(question)]


def repair_message(question: str, problems: Sequence[str]) -> generation_pb2.ChatMessage:
    """Tells the model what was wrong with its plan; it repeats the question, so toy_llm's
    choice of tool stays that of the question."""
    return user(
        f"{question}\n\nThat plan is invalid: "
        + "; ".join(problems)
        + ". Answer again with a valid plan."
    )


# --- reflect ------------------------------------------------------------------------------

REFLECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sufficient": {"enum": [YES, NO]},
        "missing": {"type": "string", "maxLength": MAX_MISSING},
    },
    "required": ["sufficient"],
    "additionalProperties": False,
}

REFLECT_INSTRUCTIONS = (
    "Judge whether the results below are enough to answer the question. sufficient: yes when "
    "they answer it, no when something the question asks is not in them; then say in missing "
    "what is not there."
)


def reflect_messages(question: str, results: Sequence[str]) -> list[generation_pb2.ChatMessage]:
    body = "\n".join(results) or "(none)"
    return [system(REFLECT_INSTRUCTIONS), user(f"Question: {question}\n\nResults:\n{body}")]


# --- respond ------------------------------------------------------------------------------

# Short on purpose: the small CPU model follows one plain sentence and copies any example.
RESPOND_WITH_SOURCES = "Answer in two or three sentences from the sources, citing them like [1]."
RESPOND_WITHOUT_SOURCES = "Answer briefly. Do not invent facts."


def persona(agent_role: str, company: str) -> str:
    """Who answers, in one line (the agent's system prompt when the settings say so)."""
    role = agent_role or "assistant"
    return f"You are the {role}" + (f" of {company}." if company else ".")


def source_line(
    citation: common_pb2.Citation, max_chars: int, *, described: tuple[str, str] | None = None
) -> str:
    """One numbered source as the answering model reads it; `described` is (kind, text) of an
    entity, whose description reads better than the facet that matched."""
    where = f" ({citation.section})" if citation.section else ""
    text = citation.text
    if described is not None:
        where, text = f" ({described[0]})", described[1]
    text = " ".join(text.split())
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + "…"
    title = citation.title or citation.document_id
    return f"[{citation.marker}] {title}{where}: {text}"


def tool_line(tool: str, arguments: dict[str, Any], data: Any, max_chars: int) -> str:
    """The result of a tool that returns data rather than passages."""
    shown = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    if len(shown) > max_chars:
        shown = shown[: max_chars - 1] + "…"
    called = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    return f"- {tool} {called}: {shown}"


def respond_messages(
    *,
    persona: str,
    question: str,
    history: Sequence[generation_pb2.ChatMessage],
    sources: Sequence[str],
    results: Sequence[str],
    brief: bool = False,
) -> list[generation_pb2.ChatMessage]:
    """The answering prompt: sources first, the question last (where a small model looks);
    `brief` when the loop has listed the sources and the model adds one sentence."""
    parts = []
    if brief and sources:
        # The sentence is about the best source; the others are listed already.
        parts.append("Source:\n" + sources[0])
    elif sources:
        parts.append("Sources:\n" + "\n".join(sources))
    if results:
        parts.append("Tool results:\n" + "\n".join(results))
    parts.append(f"Question: {question}")
    rules = RESPOND_WITH_SOURCES if sources else RESPOND_WITHOUT_SOURCES
    if brief:
        rules = RESPOND_BRIEFLY
    return [system(f"{persona} {rules}"), *history, user("\n\n".join(parts))]


# The answer over entities: code lists them in a fixed shape, the model adds one sentence.
# Measured on the conference question: over the best source alone the small model says what it
# is about; over all of them, or asked to answer, it makes up a conference.
RESPOND_BRIEFLY = "Say in one sentence what the source is about, citing it like [1]."


def _attribute(attributes: dict[str, Any], key: str) -> str:
    value = attributes.get(key)
    return "" if value is None or value == "" else str(value)


def fact_line(
    marker: int,
    title: str,
    kind: str,
    attributes: dict[str, Any],
    *,
    markers: dict[str, int],
) -> str:
    """One retrieved entity as the answer lists it, from its stored attributes (the names the
    conference samples use): a session's day, time, room and speakers, a speaker's role, an
    exhibitor's booth; a name that is a source of its own carries that source's marker."""
    get = functools.partial(_attribute, attributes)
    facts: list[str] = []
    if kind == "session":
        hours = "-".join(t for t in (get("start_time"), get("end_time")) if t)
        facts = [" ".join(t for t in (get("day"), hours) if t), get("room_name") or get("room")]
        names = [n.strip() for n in get("speakers").split(",") if n.strip()]
        if names:
            shown = [f"{n} [{markers[n]}]" if n in markers else n for n in names]
            facts.append("speakers: " + ", ".join(shown))
    elif kind == "speaker":
        facts = [get("job_title"), get("organisation")]
    elif kind == "exhibitor":
        facts = [get("booth") and f"booth {get('booth')}", get("hall")]
    said = "; ".join(f for f in facts if f)
    return f"{title} [{marker}] ({kind})" + (f": {said}." if said else ".")


# --- deterministic answers ----------------------------------------------------------------


def _names(tools: Sequence[str]) -> str:
    if len(tools) <= 1:
        return "".join(tools)
    return ", ".join(tools[:-1]) + " and " + tools[-1]


def nothing_found(searched: Sequence[str], unavailable: Sequence[str]) -> str:
    """The answer when no retrieved passage bears on the question: said, never guessed."""
    if searched:
        text = (
            f"I found nothing about this in what I searched ({_names(searched)}), so I cannot "
            "answer it without guessing."
        )
    else:
        text = "I could not look this up, so I cannot answer it without guessing."
    if unavailable:
        text += " " + unavailable_note(unavailable)
    return text


def unavailable_note(unavailable: Sequence[str]) -> str:
    verb, it = ("was", "it") if len(unavailable) == 1 else ("were", "them")
    return f"({_names(unavailable)} {verb} unavailable, so this answer does not use {it}.)"
