"""Workflow plans: the one validator of a `WorkflowPlan`, whether a client wrote it or a planner
made it, and the stages its steps run in.

A plan is valid when it has 1-50 steps with unique ids, every `depends_on` names another step of
the plan (once), some step depends on nothing (an entry step), the dependencies hold no cycle,
and every step's agent exists in the caller's tenant and has the tools the step needs. Every
problem is one field violation at its path (`plan.steps[3].depends_on[0]`), all reported at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta

from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.services.common.errors import NotFound
from callisto.services.common.validation import RESOURCE_ID, RESOURCE_ID_RULE, Violations
from callisto.services.orchestration.agents import AGENT_NAME, check_tool_names

MAX_STEPS = 50
# A plan is kept whole in its run's checkpoint, beside every step's state.
MAX_PLAN_BYTES = 64 * 1024
MAX_RETRIES = 10
MAX_STEP_TIMEOUT = timedelta(hours=24)
MAX_APPROVAL_TIMEOUT = timedelta(days=30)
MAX_STEP_TOOLS = 32
FAILURE_POLICIES = frozenset(pb.StepFailurePolicy.values())

GetAgent = Callable[[str], Awaitable[pb.Agent]]


def check_steps(
    v: Violations, plan: pb.WorkflowPlan, field: str, limit: int, known_tools: Sequence[str]
) -> list[list[int]]:
    """Adds the plan's own problems (everything but its agents) to `v`; returns its stages as
    step indexes (empty when the dependencies hold a cycle or a dangling reference)."""
    steps = plan.steps
    if not steps:
        v.add(f"{field}.steps", "is required: a plan has at least one step")
        return []
    if len(steps) > MAX_STEPS:
        v.add(f"{field}.steps", f"must hold at most {MAX_STEPS} steps, not {len(steps)}")
        return []
    size = plan.ByteSize()
    if size > MAX_PLAN_BYTES:
        v.add(field, f"is {size} bytes; a plan holds at most {MAX_PLAN_BYTES}")
        return []
    index_of: dict[str, int] = {}
    for index, step in enumerate(steps):
        at = f"{field}.steps[{index}]"
        if not RESOURCE_ID.match(step.id):
            v.add(f"{at}.id", RESOURCE_ID_RULE)
        elif step.id in index_of:
            v.add(f"{at}.id", f"is also the id of steps[{index_of[step.id]}]")
        else:
            index_of[step.id] = index
        _check_step(v, step, at, limit, known_tools)
    edges = _edges(v, steps, field, index_of)
    if not any(not step.depends_on for step in steps):
        v.add(f"{field}.steps", "needs an entry step: one whose depends_on is empty")
    if edges is None:
        return []
    stages = _stages(edges)
    if sum(len(stage) for stage in stages) < len(steps):
        _report_cycles(v, steps, field, edges, {i for stage in stages for i in stage})
        return []
    return stages


def _check_step(
    v: Violations, step: pb.WorkflowStep, at: str, limit: int, known_tools: Sequence[str]
) -> None:
    if not step.agent:
        v.add(f"{at}.agent", "is required: the agent that runs the step")
    elif not AGENT_NAME.match(step.agent):
        v.add(f"{at}.agent", "must look like agents/{agent} or agents/{agent}@{revision}")
    if not step.instruction.strip():
        v.add(f"{at}.instruction", "is required")
    elif len(step.instruction) > limit:
        v.add(f"{at}.instruction", f"must be at most {limit} characters")
    elif "\x00" in step.instruction:
        v.add(f"{at}.instruction", "must be text: it holds a NUL character")
    v.check(0 <= step.max_retries <= MAX_RETRIES, f"{at}.max_retries", f"must be 0-{MAX_RETRIES}")
    _check_duration(v, step, "timeout", MAX_STEP_TIMEOUT, at)
    _check_duration(v, step, "approval_timeout", MAX_APPROVAL_TIMEOUT, at)
    if step.HasField("approval_timeout") and not step.requires_approval:
        v.add(f"{at}.approval_timeout", "only a step that requires_approval waits for one")
    v.check(step.on_failure in FAILURE_POLICIES, f"{at}.on_failure", "is not a known policy")
    v.check(len(step.tools) <= MAX_STEP_TOOLS, f"{at}.tools", f"must name at most {MAX_STEP_TOOLS}")
    check_tool_names(v, step.tools, known_tools, f"{at}.tools")


def _check_duration(
    v: Violations, step: pb.WorkflowStep, name: str, longest: timedelta, at: str
) -> None:
    if not step.HasField(name):  # type: ignore[arg-type]
        return
    duration = getattr(step, name)
    # Compared field by field: a hostile Duration may not fit a timedelta.
    seconds, nanos = duration.seconds, duration.nanos
    if not 0 <= nanos <= 999_999_999 or seconds < 0 or (seconds, nanos) == (0, 0):
        v.add(f"{at}.{name}", "must be positive")
    elif (seconds, nanos) > (int(longest.total_seconds()), 0):
        v.add(f"{at}.{name}", f"must be at most {longest}")


def _edges(
    v: Violations, steps: Sequence[pb.WorkflowStep], field: str, index_of: Mapping[str, int]
) -> list[list[int]] | None:
    """Each step's dependencies as indexes; None when one names no step (reported)."""
    edges: list[list[int]] = []
    whole = True
    for index, step in enumerate(steps):
        needs: list[int] = []
        for k, name in enumerate(step.depends_on):
            at = f"{field}.steps[{index}].depends_on[{k}]"
            target = index_of.get(name)
            if target is None:
                v.add(at, f"names no step of the plan: {name[:64]!r}")
                whole = False
            elif target == index:
                v.add(at, "a step cannot depend on itself")
                whole = False
            elif target in needs:
                v.add(at, f"is a duplicate of an earlier depends_on ({name!r})")
            else:
                needs.append(target)
        edges.append(needs)
    return edges if whole else None


def _stages(edges: Sequence[Sequence[int]]) -> list[list[int]]:
    """Kahn's layering: each stage holds the steps whose dependencies are all in earlier ones."""
    done: set[int] = set()
    stages: list[list[int]] = []
    while True:
        ready = [
            i for i, needs in enumerate(edges) if i not in done and all(n in done for n in needs)
        ]
        if not ready:
            return stages
        stages.append(ready)
        done.update(ready)


def _report_cycles(
    v: Violations,
    steps: Sequence[pb.WorkflowStep],
    field: str,
    edges: Sequence[Sequence[int]],
    placed: set[int],
) -> None:
    """One violation per cycle, at the depends_on entry that closes it."""
    on_cycle: set[int] = set()
    for start in range(len(steps)):
        if start in placed or start in on_cycle:
            continue
        path = _cycle_from(start, edges, placed)
        if path is None or on_cycle.intersection(path):
            continue
        on_cycle.update(path)
        last, first = path[-1], path[0]
        k = list(steps[last].depends_on).index(steps[first].id)
        names = " → ".join(steps[i].id for i in [*path, first])
        v.add(f"{field}.steps[{last}].depends_on[{k}]", f"closes a cycle: {names}")


def _cycle_from(start: int, edges: Sequence[Sequence[int]], placed: set[int]) -> list[int] | None:
    """A cycle reached by following dependencies from `start` (each step in it depending on
    the next), or None."""
    path: list[int] = []
    position: dict[int, int] = {}
    node = start
    while node not in position:
        position[node] = len(path)
        path.append(node)
        unplaced = [n for n in edges[node] if n not in placed]
        if not unplaced:
            return None
        node = unplaced[0]
    return path[position[node] :]


async def check_agents(
    v: Violations, plan: pb.WorkflowPlan, field: str, get_agent: GetAgent
) -> None:
    """Every step's agent exists (for the caller's tenant) and has the step's tools."""
    agents: dict[str, pb.Agent | None] = {}
    for name in {s.agent for s in plan.steps if AGENT_NAME.match(s.agent)}:
        try:
            agents[name] = await get_agent(name)
        except NotFound:
            agents[name] = None
    for index, step in enumerate(plan.steps):
        at = f"{field}.steps[{index}]"
        if step.agent not in agents:
            continue
        agent = agents[step.agent]
        if agent is None:
            v.add(f"{at}.agent", f"no agent {step.agent!r}; see ListAgents")
            continue
        has = set(agent.tools)
        for k, tool in enumerate(step.tools):
            if tool not in has:
                v.add(f"{at}.tools[{k}]", f"{step.agent} does not have the tool {tool!r}")


async def validate_plan(
    plan: pb.WorkflowPlan,
    field: str,
    *,
    limit: int,
    known_tools: Sequence[str],
    get_agent: GetAgent,
) -> list[pb.PlanStage]:
    """The plan's stages; INVALID_ARGUMENT with every problem when it is not valid."""
    v = Violations()
    stages = check_steps(v, plan, field, limit, known_tools)
    if len(plan.steps) <= MAX_STEPS:
        await check_agents(v, plan, field, get_agent)
    v.raise_if_any()
    return [pb.PlanStage(step_ids=[plan.steps[i].id for i in stage]) for stage in stages]
