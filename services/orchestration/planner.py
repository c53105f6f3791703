"""The workflow planner: a task and the tenant's agents in, a plan out, as one
JSON-Schema-constrained generation whose answer is one of three kinds: a plan (steps over the
given agents and their tools only, checked by the one plan validator; a plan it refuses is
sent back with what was wrong), a clarifying question, or the capability the agents lack. It
never makes up an agent or a tool: the schema offers only those that exist.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.errors import CallistoError
from callisto.services.common.errors import InvalidArgument
from callisto.services.orchestration.model_json import answer_json, to_struct
from callisto.services.orchestration.turns import ModelCaller

log = logging.getLogger("callisto.orchestration.planner")

# Steps a planned workflow may have (a given plan may have up to plans.MAX_STEPS); strings
# within what the model server's grammar bounds (256 characters).
MAX_PLANNED_STEPS = 12
MAX_INSTRUCTION = 256
MAX_QUESTION = 256
STEP_IDS = [f"step-{n}" for n in range(1, MAX_PLANNED_STEPS + 1)]

SYSTEM = """You plan workflows for a team of AI agents. Break the user's task into steps.
Each step is done by one of the agents listed below, using only that agent's tools; a step's
instruction says exactly what the agent must produce. A step depends on the steps whose
results it needs; steps that depend on nothing run in parallel, so only add a dependency
when a result is really needed. Set requires_approval on a step whose result a person must
approve before it is used (a decision, a commitment, money, anything sent outside).
If the task is too vague to plan, answer with kind "clarify" and one short question.
If a needed part is something none of the agents can do, answer with kind "unsupported"
and say what capability is missing. Never invent an agent or a tool.

Agents:
{agents}"""


@dataclass
class PlannerOutcome:
    """What the planner answered: exactly one of a plan, a question, or what is missing."""

    attempts: int
    plan: pb.WorkflowPlan | None = None
    stages: list[pb.PlanStage] = field(default_factory=list)
    question: str = ""
    missing: str = ""


Validate = Callable[[pb.WorkflowPlan], Awaitable[list[pb.PlanStage]]]


def describe_agents(agents: Sequence[pb.Agent]) -> str:
    lines = []
    for agent in agents:
        who = ", ".join(x for x in (agent.role, agent.company) if x)
        tools = ", ".join(agent.tools) or "no tools"
        lines.append(
            f"- {agent.name} — {agent.display_name}" + (f" ({who})" if who else "") + f"; "
            f"tools: {tools}"
        )
    return "\n".join(lines)


def schema(agents: Sequence[pb.Agent]) -> dict[str, Any]:
    """The three kinds of answer, with only the given agents and their tools to choose from."""
    tools = sorted({tool for agent in agents for tool in agent.tools})
    step: dict[str, Any] = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "enum": STEP_IDS},
            "agent": {"type": "string", "enum": [agent.name for agent in agents]},
            "instruction": {"type": "string", "minLength": 1, "maxLength": MAX_INSTRUCTION},
            "depends_on": {
                "type": "array",
                "items": {"type": "string", "enum": STEP_IDS},
                "maxItems": 4,
            },
            "tools": {"type": "array", "items": {"type": "string", "enum": tools}, "maxItems": 4}
            if tools
            else {"type": "array", "maxItems": 0},
            "requires_approval": {"type": "boolean"},
        },
        "required": ["id", "agent", "instruction", "depends_on", "tools", "requires_approval"],
    }
    return {
        "oneOf": [
            {
                "type": "object",
                "properties": {
                    "kind": {"const": "plan"},
                    "steps": {
                        "type": "array",
                        "items": step,
                        "minItems": 1,
                        "maxItems": MAX_PLANNED_STEPS,
                    },
                },
                "required": ["kind", "steps"],
            },
            {
                "type": "object",
                "properties": {
                    "kind": {"const": "clarify"},
                    "question": {"type": "string", "minLength": 1, "maxLength": MAX_QUESTION},
                },
                "required": ["kind", "question"],
            },
            {
                "type": "object",
                "properties": {
                    "kind": {"const": "unsupported"},
                    "missing": {"type": "string", "minLength": 1, "maxLength": MAX_QUESTION},
                },
                "required": ["kind", "missing"],
            },
        ]
    }


def _user_text(task: str, clarifications: Sequence[str]) -> str:
    # The task alone when there is nothing else: the toy model reads the last user message.
    if not clarifications:
        return task
    answers = "\n".join(f"- {answer}" for answer in clarifications)
    return f"{task}\n\nAnswers to your questions:\n{answers}"


def to_plan(steps: Any) -> pb.WorkflowPlan:
    """The planner's steps as a `WorkflowPlan` (unknown fields dropped; the validator judges)."""
    plan = pb.WorkflowPlan()
    for raw in steps if isinstance(steps, list) else []:
        if not isinstance(raw, dict):
            continue
        plan.steps.append(
            pb.WorkflowStep(
                id=str(raw.get("id", "")),
                agent=str(raw.get("agent", "")),
                instruction=str(raw.get("instruction", "")),
                depends_on=[str(d) for d in raw.get("depends_on") or [] if isinstance(d, str)],
                tools=[str(t) for t in raw.get("tools") or [] if isinstance(t, str)],
                requires_approval=raw.get("requires_approval") is True,
            )
        )
    return plan


async def make_plan(
    task: str,
    clarifications: Sequence[str],
    agents: Sequence[pb.Agent],
    llm: ModelCaller,
    validate: Validate,
    *,
    model: str,
    attempts: int,
    max_tokens: int,
) -> PlannerOutcome:
    """Asks the model for a plan of `task` over `agents` (at most `attempts` times: a plan the
    validator refuses goes back with its violations); a plan never passed is reported as a
    missing capability, never returned."""
    messages = [
        generation_pb2.ChatMessage(
            role=common_pb2.ROLE_SYSTEM, content=SYSTEM.format(agents=describe_agents(agents))
        ),
        generation_pb2.ChatMessage(
            role=common_pb2.ROLE_USER, content=_user_text(task, clarifications)
        ),
    ]
    format_ = generation_pb2.ResponseFormat(json_schema=to_struct(schema(agents)), name="plan")
    problems = ""
    tries = max(1, attempts)
    for attempt in range(1, tries + 1):
        request = generation_pb2.GenerateRequest(
            model=model,
            messages=messages,
            parameters=generation_pb2.SamplingParameters(max_tokens=max_tokens, temperature=0.0),
            response_format=format_,
        )
        try:
            result = await llm.generate(request)
        except CallistoError as error:
            if attempt == tries:
                raise
            log.warning("planner attempt %d failed: %s", attempt, error)
            continue
        answer = answer_json(result)
        kind = answer.get("kind") if isinstance(answer, dict) else None
        if kind == "clarify" and str(answer.get("question", "")).strip():
            return PlannerOutcome(attempt, question=str(answer["question"]).strip())
        if kind == "unsupported" and str(answer.get("missing", "")).strip():
            return PlannerOutcome(attempt, missing=str(answer["missing"]).strip())
        if kind == "plan":
            plan = to_plan(answer.get("steps"))
            try:
                stages = await validate(plan)
            except InvalidArgument as error:
                problems = "; ".join(f"{v.field}: {v.description}" for v in error.violations)
            else:
                return PlannerOutcome(attempt, plan=plan, stages=stages)
        else:
            problems = "the answer was not one of the three kinds"
        # Tell the model what was wrong and ask again.
        messages = [
            *messages[:2],
            generation_pb2.ChatMessage(role=common_pb2.ROLE_ASSISTANT, content=result.text),
            generation_pb2.ChatMessage(
                role=common_pb2.ROLE_USER,
                content=f"That plan is not valid: {problems[:1500]}. Answer again.",
            ),
        ]
    return PlannerOutcome(
        tries,
        missing=f"no valid plan of the task over these agents after {tries} attempts ({problems})",
    )
