"""The prompt of SuggestAgents: instructions, few-shot examples and the JSON Schema the answer
is held to.

The model sees the examples as earlier turns of the chat (a scenario, then the JSON answer),
so even the small CPU model copies their shape; the schema's grammar makes the answer valid
JSON with exactly the agents asked for, and short (every string is bounded: the whole answer
fits `suggest_max_tokens` and the model's 2048-token window together with this prompt). The
last user message is the scenario with the number of agents, so toy_llm's minimal instance
(every string is that message, cut) is predictable in tests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from callisto.api.generation.v1 import generation_pb2
from callisto.services.orchestration.prompts import assistant, system, user

SIDES = ("seller", "buyer", "other")
MAX_NAME = 40
MAX_ROLE = 48
MAX_COMPANY = 48
MAX_PROMPT = 200
# Cut of the scenario in the prompt; the RPC accepts 2000 characters, all of which go into the
# agents' system prompts.
MAX_PROMPT_SCENARIO = 600

INSTRUCTIONS = (
    "You cast the participants of a business conversation simulation. Given a scenario and a "
    "number of agents, answer with JSON only: an object with `agents`, exactly that many. Each "
    "agent is a different person with a display_name (a realistic full name), a role (job "
    "title), a company (use the company names the scenario gives), a side (seller: the company "
    "that sells or pitches; buyer: the company that buys; other: anyone else) and a "
    "system_prompt: one or two sentences telling the agent, as 'you', what it wants in this "
    "conversation. Give every company in the scenario at least one agent."
)


@dataclass(frozen=True)
class Example:
    """One few-shot example: a scenario, the agents asked for, the answer."""

    scenario: str
    agents: list[dict[str, str]]
    human: str = ""


def _agent(name: str, role: str, company: str, side: str, prompt: str) -> dict[str, str]:
    return {
        "display_name": name,
        "role": role,
        "company": company,
        "side": side,
        "system_prompt": prompt,
    }


EXAMPLES = (
    Example(
        "Halvorsen Data sells storage arrays to Brightwater Foods",
        [
            _agent(
                "Nora Halvorsen",
                "Account executive",
                "Halvorsen Data",
                "seller",
                "You want Brightwater to buy a storage array; show how it fits their plants.",
            ),
            _agent(
                "Tom Reyes",
                "Procurement manager",
                "Brightwater Foods",
                "buyer",
                "You need reliable storage at a fair price; press on cost and support terms.",
            ),
        ],
    ),
    Example(
        "Quillon Software pitches a payroll platform to Estrada Retail, whose IT partner "
        "Corvid Consulting must approve it",
        [
            _agent(
                "Lena Fischer",
                "Sales director",
                "Quillon Software",
                "seller",
                "You want Estrada to adopt the payroll platform; answer every concern.",
            ),
            _agent(
                "Marco Estrada",
                "HR director",
                "Estrada Retail",
                "buyer",
                "You want payroll to be simpler; ask about migration and cost.",
            ),
            _agent(
                "Aisha Bello",
                "IT consultant",
                "Corvid Consulting",
                "other",
                "You check security and integration before Estrada signs.",
            ),
        ],
    ),
    Example(
        "Orbis Bank negotiates the purchase of Kestrel Insurance",
        [
            _agent(
                "Grace Whitfield",
                "Chief executive",
                "Orbis Bank",
                "buyer",
                "You want Kestrel at a price your board accepts.",
            ),
            _agent(
                "Samuel Osei",
                "Chief financial officer",
                "Orbis Bank",
                "buyer",
                "You test Kestrel's numbers and hold the price down.",
            ),
            _agent(
                "Hana Kobayashi",
                "Chief executive",
                "Kestrel Insurance",
                "seller",
                "You want the best price and a future for your staff.",
            ),
            _agent(
                "Luis Romero",
                "General counsel",
                "Kestrel Insurance",
                "seller",
                "You protect Kestrel in the terms of the deal.",
            ),
        ],
    ),
)


def describe_cast(cast: Sequence[tuple[str, str]]) -> str:
    """ "1 seller from X; 2 buyers from Y" of (side, company) seats, in order of appearance."""
    counts: dict[tuple[str, str], int] = {}
    for seat in cast:
        counts[seat] = counts.get(seat, 0) + 1
    return "; ".join(
        f"{n} {side}{'s' if n > 1 and side != 'other' else ''} from {company}"
        for (side, company), n in counts.items()
    )


def request_text(
    scenario: str, count: int, human: str = "", cast: Sequence[tuple[str, str]] = ()
) -> str:
    """The user message asking for `count` agents for `scenario`, in seats of `cast` ((side,
    company) each, when the scenario names its parties); `human` describes the part the user
    plays themself (the agents are the others)."""
    text = f"Scenario: {scenario[:MAX_PROMPT_SCENARIO]}\nAgents: {count}"
    if cast:
        text += f" ({describe_cast(cast)})"
    if human:
        text += f"\nThe user plays {human}; do not include them."
    return text


def messages(
    scenario: str, count: int, human: str = "", cast: Sequence[tuple[str, str]] = ()
) -> list[generation_pb2.ChatMessage]:
    """The whole prompt: instructions, the few-shot examples as earlier turns, the request."""
    chat = [system(INSTRUCTIONS)]
    for example in EXAMPLES:
        seats = [(a["side"], a["company"]) for a in example.agents]
        chat.append(user(request_text(example.scenario, len(seats), example.human, seats)))
        chat.append(assistant(json.dumps({"agents": example.agents}, ensure_ascii=False)))
    chat.append(user(request_text(scenario, count, human, cast)))
    return chat


def retry_text(problem: str, count: int) -> str:
    """What the model is told after an unusable answer (a user message of its own, after the
    request): what was wrong and what to do."""
    return (
        f"{problem} Answer again with exactly {count} agents as JSON only, each system_prompt "
        "one short sentence."
    )


def _bounded(limit: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": limit}


def schema(count: int) -> dict[str, Any]:
    """The answer's JSON Schema: exactly `count` agents, every field required and bounded
    (within `services/common/grammar.py`'s subset)."""
    agent = {
        "type": "object",
        "properties": {
            "display_name": _bounded(MAX_NAME),
            "role": _bounded(MAX_ROLE),
            "company": _bounded(MAX_COMPANY),
            "side": {"type": "string", "enum": list(SIDES)},
            "system_prompt": _bounded(MAX_PROMPT),
        },
        "required": ["display_name", "role", "company", "side", "system_prompt"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "agents": {"type": "array", "items": agent, "minItems": count, "maxItems": count}
        },
        "required": ["agents"],
        "additionalProperties": False,
    }
