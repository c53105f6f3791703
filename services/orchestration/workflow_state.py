"""A workflow run's set-up and progress as its checkpoint holds them: the plan (given or made by
the planner), each step's state (attempt, output, approval, spend) and what the planner asked.

Step states: `pending` → `running` (an attempt) → `retrying` (waiting for the next attempt) →
`awaiting_approval` → `succeeded`, or `failed`, `skipped` (a dependency failed under
`on_failure: continue`) and `cancelled` (the run ended first). A step's output is stored as a
message before anything else happens to it, so a takeover finds it and never re-runs the step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from google.protobuf import json_format

from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.services.orchestration.budget import Spend

PENDING, RUNNING, RETRYING = "pending", "running", "retrying"
AWAITING_APPROVAL, SUCCEEDED, FAILED = "awaiting_approval", "succeeded", "failed"
SKIPPED, CANCELLED = "skipped", "cancelled"
ENDED = frozenset({SUCCEEDED, FAILED, SKIPPED, CANCELLED})
# Retries of a step that sets none: 3 attempts.
DEFAULT_RETRIES = 2
# What of a step's output and reasoning the checkpoint keeps (and dependents are shown): the
# whole is the step's stored message. Bounded so 50 steps and their plan fit one session.
OUTPUT_CHARS = 1500
REASONING_CHARS = 500


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class StepState:
    """Where one step stands."""

    state: str = PENDING
    # `agents/{agent}@{revision}` running it (pinned when the run began).
    agent: str = ""
    # 1-based number of the current (or last) attempt; 0 before the first.
    attempt: int = 0
    # Wall-clock seconds: the first attempt's start, the current attempt's start, the end.
    first_started: float = 0.0
    attempt_started: float = 0.0
    ended: float = 0.0
    # When a retrying step's next attempt may start.
    next_attempt_at: float = 0.0
    output: str = ""
    reasoning: str = ""
    error: str = ""
    # The stored output message: `conversations/{c}/messages/{m}`.
    message: str = ""
    # Approval id, once one was asked for.
    approval: str = ""
    # Side-effecting tools already called for the current output, with their results.
    acted: dict[str, str] = field(default_factory=dict)
    spend: Spend = field(default_factory=Spend)

    def keep(self, output: str, reasoning: str | None = None) -> None:
        """The step's output (and reasoning), as much of them as the checkpoint holds."""
        self.output = cut(output, OUTPUT_CHARS)
        if reasoning is not None:
            self.reasoning = cut(reasoning, REASONING_CHARS)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["spend"] = self.spend.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepState:
        known = set(cls.__dataclass_fields__) - {"spend", "acted", "attempt"}
        step = cls(**{k: v for k, v in data.items() if k in known})
        step.attempt = int(data.get("attempt", 0))
        step.acted = {str(k): str(v) for k, v in dict(data.get("acted") or {}).items()}
        step.spend = Spend.from_json(dict(data.get("spend") or {}))
        return step


@dataclass
class Asking:
    """A clarification the planner asked for."""

    round: int
    question: str
    deadline: float
    # Event id of the `awaiting_input`; the answer is looked for after `after`.
    event: int = 0
    after: int = 0


@dataclass
class Workflow:
    """A workflow run's set-up and progress."""

    task: str
    # "given" or "planner".
    source: str
    max_parallel: int
    # The plan as `WorkflowPlan` JSON; {} until the planner made one.
    plan: dict[str, Any] = field(default_factory=dict)
    stages: list[list[str]] = field(default_factory=list)
    # Agents the planner may use: `agents/{agent}@{revision}`.
    candidates: list[str] = field(default_factory=list)
    planner_attempts: int = 0
    # The human's answers to the planner's questions, in order.
    clarifications: list[str] = field(default_factory=list)
    asking: Asking | None = None
    # Event id of the `workflow_plan` event, once written.
    plan_event: int = 0
    steps: dict[str, StepState] = field(default_factory=dict)
    # Why the run ends, when something other than its steps decided it.
    detail: str = ""

    def plan_proto(self) -> pb.WorkflowPlan:
        plan = pb.WorkflowPlan()
        json_format.ParseDict(self.plan, plan, ignore_unknown_fields=True)
        return plan

    def set_plan(self, plan: pb.WorkflowPlan, stages: list[pb.PlanStage]) -> None:
        self.plan = json_format.MessageToDict(plan, preserving_proto_field_name=True)
        self.stages = [list(stage.step_ids) for stage in stages]
        self.steps = {step.id: StepState(agent=step.agent) for step in plan.steps}

    def specs(self) -> dict[str, pb.WorkflowStep]:
        return {step.id: step for step in self.plan_proto().steps}

    def blocked(self, specs: dict[str, pb.WorkflowStep]) -> list[str]:
        """Pending steps that can never run: a dependency ended without succeeding."""
        return [
            step_id
            for step_id, step in self.steps.items()
            if step.state == PENDING
            and any(
                self.steps[dep].state in (FAILED, SKIPPED, CANCELLED)
                for dep in specs[step_id].depends_on
            )
        ]

    def ready(self, specs: dict[str, pb.WorkflowStep]) -> list[str]:
        """Pending steps whose dependencies all succeeded, in plan order."""
        return [
            step_id
            for step_id, step in self.steps.items()
            if step.state == PENDING
            and all(self.steps[dep].state == SUCCEEDED for dep in specs[step_id].depends_on)
        ]

    def active(self) -> list[str]:
        """Steps begun and not ended (a takeover picks them up where they were)."""
        return [i for i, s in self.steps.items() if s.state not in ENDED and s.state != PENDING]

    @property
    def over(self) -> bool:
        return bool(self.steps) and all(s.state in ENDED for s in self.steps.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "source": self.source,
            "max_parallel": self.max_parallel,
            "plan": self.plan,
            "stages": self.stages,
            "candidates": self.candidates,
            "planner_attempts": self.planner_attempts,
            "clarifications": self.clarifications,
            "asking": asdict(self.asking) if self.asking is not None else None,
            "plan_event": self.plan_event,
            "steps": {k: v.to_json() for k, v in self.steps.items()},
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workflow:
        asking = data.get("asking")
        return cls(
            task=str(data.get("task", "")),
            source=str(data.get("source", "given")),
            max_parallel=int(data.get("max_parallel", 4)),
            plan=dict(data.get("plan") or {}),
            stages=[[str(i) for i in stage] for stage in data.get("stages") or []],
            candidates=[str(c) for c in data.get("candidates") or []],
            planner_attempts=int(data.get("planner_attempts", 0)),
            clarifications=[str(c) for c in data.get("clarifications") or []],
            asking=(
                Asking(
                    round=int(asking["round"]),
                    question=str(asking["question"]),
                    deadline=float(asking["deadline"]),
                    event=int(asking.get("event", 0)),
                    after=int(asking.get("after", 0)),
                )
                if isinstance(asking, dict)
                else None
            ),
            plan_event=int(data.get("plan_event", 0)),
            steps={str(k): StepState.from_json(dict(v)) for k, v in dict(data["steps"]).items()}
            if data.get("steps")
            else {},
            detail=str(data.get("detail", "")),
        )


def retries_of(step: pb.WorkflowStep) -> int:
    return step.max_retries if step.HasField("max_retries") else DEFAULT_RETRIES
