"""One attempt of a workflow step: the step's agent thinks (the assistant loop over the step's
read-only tools, seeing its instruction and the outputs of the steps it depends on), then acts
(one schema-constrained call of each side-effecting tool the step needs, made from its output
after any approval, with an idempotency key of run, step and attempt, so a takeover that
repeats the call is seen once by the receiving end).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.services.orchestration import assistant
from callisto.services.orchestration.assistant import LoopOptions
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.events import EventWriter
from callisto.services.orchestration.model_json import answer_json, to_struct
from callisto.services.orchestration.tools.registry import ToolContext, ToolOutcome, ToolRegistry
from callisto.services.orchestration.turns import ModelCaller, TurnAnswer, TurnInput
from callisto.services.orchestration.workflow_state import OUTPUT_CHARS, cut

MAX_REASONING = 2000


@dataclass
class StepInput:
    """Everything one attempt of a step needs."""

    tenant: str
    conversation: str
    run_id: str
    step: pb.WorkflowStep
    attempt: int
    # The agent at its pinned revision, and the participant id it speaks as.
    agent: pb.Agent
    speaker: str
    # (step id, output) of the steps it depends on, in its depends_on order.
    inputs: list[tuple[str, str]] = field(default_factory=list)

    @property
    def key(self) -> str:
        """Prefix of the idempotency keys of the attempt's tool calls."""
        return f"{self.run_id}/{self.step.id}/{self.attempt}"


def prompt(step: StepInput) -> str:
    """The step's instruction with what its dependencies produced."""
    if not step.inputs:
        return step.step.instruction
    earlier = "\n\n".join(f"[{step_id}]\n{_cut(text)}" for step_id, text in step.inputs)
    return f"{step.step.instruction}\n\nResults of the steps this one builds on:\n\n{earlier}"


def _cut(text: str, limit: int = OUTPUT_CHARS) -> str:
    return cut(text, limit)


class ReasoningSink:
    """The step's sink: passes events on and keeps what the agent planned, called and judged,
    which an approval shows as the agent's reasoning."""

    def __init__(self, writer: EventWriter) -> None:
        self._writer = writer
        self._lines: list[str] = []

    async def emit(self, event: pb.ConversationEvent) -> int:
        kind = event.WhichOneof("kind")
        if kind == "plan":
            plan = event.plan
            calls = ", ".join(call.tool for call in plan.calls) or "no tool"
            intent = f"understood the task as: {plan.intent}; " if plan.intent else ""
            self._lines.append(f"Round {plan.iteration}: {intent}planned {calls}.")
        elif kind == "tool_call":
            call = event.tool_call
            result = call.error or call.result
            self._lines.append(f"Called {call.tool}: {result[:200]}")
        elif kind == "reflection":
            reflection = event.reflection
            judged = (
                "the evidence suffices"
                if reflection.sufficient
                else f"missing: {reflection.missing}"
            )
            self._lines.append(f"Judged: {judged}.")
        return await self._writer.emit(event)

    async def token(self, speaker: str, text: str) -> None:
        await self._writer.token(speaker, text)

    def reasoning(self, step: StepInput) -> str:
        used = ", ".join(step_id for step_id, _ in step.inputs)
        head = f"Built on the results of {used}." if used else "An entry step: no earlier results."
        lines = self._lines or ["Answered from the instruction without tools."]
        return _cut(" ".join([head, *lines]), MAX_REASONING)


async def think(
    step: StepInput,
    writer: EventWriter,
    llm: ModelCaller,
    tools: ToolRegistry,
    backends: Backends,
    options: LoopOptions,
) -> tuple[TurnAnswer, str]:
    """The step's output (the assistant loop over its read-only tools) and the reasoning."""
    agent = pb.Agent()
    agent.CopyFrom(step.agent)
    wanted = list(step.step.tools) or list(step.agent.tools)
    del agent.tools[:]
    agent.tools.extend(name for name in wanted if _read_only(tools, name))
    sink = ReasoningSink(writer)
    answer = await assistant.answer_turn(
        TurnInput(
            tenant=step.tenant,
            conversation=step.conversation,
            agent=agent,
            speaker=step.speaker,
            turn=step.attempt,
            user_text=prompt(step),
            max_iterations=2,
            call_key=step.key,
        ),
        sink,
        llm,
        tools,
        backends,
        options=options,
    )
    return answer, sink.reasoning(step)


def actions(step: pb.WorkflowStep, tools: ToolRegistry) -> list[str]:
    """The side-effecting tools the step needs, in its order."""
    known = set(tools.names())
    return [name for name in step.tools if name in known and not _read_only(tools, name)]


def _read_only(tools: ToolRegistry, name: str) -> bool:
    try:
        return not tools.get(name).side_effects
    except KeyError:
        return False


async def act(
    step: StepInput,
    tool: str,
    output: str,
    writer: EventWriter,
    llm: ModelCaller,
    tools: ToolRegistry,
    backends: Backends,
    *,
    model: str,
    max_tokens: int,
    narrowed: dict[str, Any] | None = None,
) -> ToolOutcome:
    """Calls `tool` once for the step: its arguments generated against the tool's schema (or
    `narrowed`, the same schema with only what this tenant may name) from the step's output."""
    spec = tools.get(tool)
    parameters = narrowed or spec.model_parameters()
    messages = [
        generation_pb2.ChatMessage(
            role=common_pb2.ROLE_SYSTEM,
            content=(
                f"{step.agent.system_prompt}\n\nYou now call the tool {tool}: "
                f"{spec.description} Answer with its arguments as JSON, taken from the step's "
                "result below."
            ),
        ),
        generation_pb2.ChatMessage(
            role=common_pb2.ROLE_USER,
            content=f"{prompt(step)}\n\nThe step's result:\n{_cut(output)}",
        ),
    ]
    request = generation_pb2.GenerateRequest(
        model=model,
        messages=messages,
        parameters=generation_pb2.SamplingParameters(max_tokens=max_tokens, temperature=0.0),
        response_format=generation_pb2.ResponseFormat(
            json_schema=to_struct(parameters), name=f"{tool}_arguments"
        ),
    )
    result = await llm.generate(request)
    arguments = answer_json(result)
    context = ToolContext(
        tenant=step.tenant,
        conversation=step.conversation,
        agent=step.agent,
        backends=backends,
        idempotency_key=f"{step.key}/{tool}",
    )
    outcome = await tools.call(
        tool, arguments, context, call_id=f"{step.step.id}.{step.attempt}.{tool}"
    )
    await writer.emit(pb.ConversationEvent(tool_call=outcome.event()))
    return outcome


def inputs_of(step: pb.WorkflowStep, outputs: dict[str, str]) -> list[tuple[str, str]]:
    return [(dep, outputs.get(dep, "")) for dep in step.depends_on]
