"""Workflow runs: a plan (given, or made by the planner from a task) run as a DAG of agent
steps, checkpointed after every step change.

Ready steps run concurrently, each attempt bounded by the run's `max_parallel_steps` and the
process's step slots; every event of a step carries its `step_id`, so parallel steps share one
stream. An attempt that fails transiently is retried (waits of 1 s, 2 s, 4 s… with jitter); a
step that fails for good fails the run or, with `on_failure: continue`, has its dependents
skipped while the other branches finish. A step that requires approval pauses after its
output: the approval lives in its own record (approvals.ApprovalStore), decided through any
replica, warned before and expired (rejected or escalated) at its deadline by the run.

A takeover resumes from the checkpoint and the log: a step whose output message is in the log
is not run again, an approval already asked is not asked again, and a side-effecting call is
repeated only with the idempotency key it had.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2
from callisto.errors import CallistoError
from callisto.persistence import PersistenceClient
from callisto.services.orchestration import events
from callisto.services.orchestration.approvals import (
    SYSTEM,
    ApprovalStore,
    Record,
    Request,
    approval_id,
)
from callisto.services.orchestration.assistant import LoopOptions
from callisto.services.orchestration.budget import RunModelCaller, Spend, TokenBudget
from callisto.services.orchestration.leases import RunKey
from callisto.services.orchestration.planner import make_plan
from callisto.services.orchestration.plans import validate_plan
from callisto.services.orchestration.run_loop import LostOwnership, Run, RunContext
from callisto.services.orchestration.run_state import (
    BUDGET,
    CANCELLED,
    COMPLETED,
    FAILED,
    Checkpoint,
)
from callisto.services.orchestration.tools.registry import ToolRegistry
from callisto.services.orchestration.tools.retries import describe, is_transient
from callisto.services.orchestration.turns import BudgetExhausted, TurnAnswer
from callisto.services.orchestration.workflow_state import (
    AWAITING_APPROVAL,
    ENDED,
    PENDING,
    RETRYING,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    Asking,
    StepState,
    Workflow,
    retries_of,
)
from callisto.services.orchestration.workflow_state import (
    CANCELLED as STEP_CANCELLED,
)
from callisto.services.orchestration.workflow_state import (
    FAILED as STEP_FAILED,
)
from callisto.services.orchestration.workflow_steps import (
    StepInput,
    act,
    actions,
    inputs_of,
    think,
)

log = logging.getLogger("callisto.orchestration.workflow")

UNSUPPORTED = "unsupported"
REVIEWER = "reviewer"
# Questions the planner may ask before it must plan or give up.
MAX_CLARIFICATIONS = 2
# How often a wait re-reads what it waits for, whatever the log says (a missed event).
POLL_S = 2.0
PLANNER_MAX_TOKENS = 1024
ACTION_MAX_TOKENS = 512


class Publisher(Protocol):
    """Where run events go out to the tenant's webhooks."""

    async def publish(
        self,
        event_type: str,
        payload: dict[str, Any],
        *,
        idempotency_key: str,
        conversation: str = "",
    ) -> None: ...


# A tool's schema narrowed to what the tenant may name (its webhooks), or None.
Narrow = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any] | None]]


class StepFailed(Exception):
    """The step failed for good (after its retries, or rejected)."""


class _Stopped(Exception):
    """The run ends (budget, another step's failure): the step stops where it is."""


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(max(0.0, seconds) * 1e9))
    return duration


def _seconds(duration: duration_pb2.Duration) -> float:
    return float(duration.seconds) + duration.nanos / 1e9


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def participant_id(agent: str) -> str:
    """The participant id of `agents/{agent}[@revision]`."""
    return agent.removeprefix("agents/").split("@", 1)[0]


class WorkflowRun(Run):
    """One workflow run owned by this process."""

    def __init__(
        self,
        context: RunContext,
        key: RunKey,
        checkpoint: Checkpoint,
        *,
        restarted: bool,
        cancel_reason: str | None,
        approvals: ApprovalStore,
        publisher: Publisher | None = None,
        narrow: Narrow | None = None,
    ) -> None:
        super().__init__(
            context, key, checkpoint, None, restarted=restarted, cancel_reason=cancel_reason
        )
        self.wf = Workflow.from_json(checkpoint.state.workflow)
        self.approvals = approvals
        self._publisher = publisher
        self._narrow = narrow
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ending: str | None = None
        self._budget = TokenBudget(self.state.max_total_tokens, self.state.spend.total_tokens)
        self._slots = asyncio.Semaphore(max(1, self.wf.max_parallel))
        self._signal = asyncio.Event()
        self._version = 0
        self._writers = 0
        self._log_watch: asyncio.Task[None] | None = None
        self._tools: ToolRegistry | None = None
        settings = context.settings
        self._options = dataclasses.replace(
            LoopOptions.from_settings(settings), answer_max_tokens=settings.workflow_step_max_tokens
        )
        self._events = events.EventWriter(
            self.persistence,
            self.state.conversation,
            f"{self.state.run_id}.{self.state.epoch}.wf",
            0.0,
        )

    # Called from RPCs and upkeep

    def request_cancel(self, reason: str) -> None:
        super().request_cancel(reason)
        for task in self._tasks.values():
            task.cancel()
        self.notify()

    def notify(self) -> None:
        """Something a wait of the run may be waiting for happened (a decision, an answer)."""
        self._version += 1
        signal, self._signal = self._signal, asyncio.Event()
        signal.set()

    async def _wait(self, version: int, within_s: float) -> None:
        """Returns at the next notify after `version` (at once if one came), or after
        `within_s` seconds."""
        if version != self._version:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._signal.wait(), max(0.0, within_s))

    async def save(self) -> None:
        self.state.workflow = self.wf.to_json()
        await super().save()

    # The run itself

    async def _run(self) -> None:
        if self._restarted and await self._resume_from_log():
            return
        if self.state.finished:
            await self._finish(self.state.status)
            return
        self._log_watch = asyncio.create_task(self._watch_log())
        try:
            reason = None if self.wf.plan else await self._plan()
            if reason is None:
                reason = await self._execute()
        finally:
            await self._stop_steps()
            self._log_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._log_watch
        await self._finish(reason)

    async def _watch_log(self) -> None:
        """Notifies the run's waits of what other replicas write: decisions and answers."""
        subscription = self.persistence.subscribe_events(
            self.state.conversation, after_sequence=self.state.start_after
        )
        try:
            async for entry in subscription:
                if entry.type == events.EVENT_PREFIX + "approval_decided" or (
                    entry.type == events.MESSAGE_CREATED
                    and entry.HasField("message")
                    and entry.message.role == common_pb2.ROLE_USER
                ):
                    self.notify()
        finally:
            await subscription.aclose()

    async def _tools_now(self) -> ToolRegistry:
        if self._tools is None:
            self._tools = await self.context.tools_now()
        return self._tools

    # Planning

    async def _plan(self) -> str | None:
        """Makes the plan of the task; the done reason when there is none to run."""
        wf = self.wf
        agents = [await self.context.agents.get(name) for name in wf.candidates]
        tools = await self._tools_now()
        while True:
            if self._cancel_reason is not None:
                return CANCELLED
            if wf.asking is not None:
                answer = await self._await_clarification(wf.asking)
                if self._cancel_reason is not None:
                    return CANCELLED
                if answer is None:
                    wf.detail = f"no answer came to the planner's question: {wf.asking.question}"
                    return UNSUPPORTED
                wf.clarifications.append(answer)
                wf.asking = None
                await self.save()
            llm = self._caller("planner")

            async def validate(plan: pb.WorkflowPlan) -> list[pb.PlanStage]:
                return await validate_plan(
                    plan,
                    "plan",
                    limit=self.context.settings.max_prompt_chars,
                    known_tools=tools.names(),
                    get_agent=self.context.agents.get,
                )

            try:
                outcome = await make_plan(
                    wf.task,
                    wf.clarifications,
                    agents,
                    llm,
                    validate,
                    model=self.context.settings.default_model,
                    attempts=self.context.settings.workflow_planner_attempts,
                    max_tokens=PLANNER_MAX_TOKENS,
                )
            except BudgetExhausted:
                self._take_spend(llm)
                return BUDGET
            self._take_spend(llm)
            wf.planner_attempts += outcome.attempts
            if outcome.plan is not None:
                pinned = {agent.name: f"{agent.name}@{agent.revision_id}" for agent in agents}
                wf.set_plan(outcome.plan, outcome.stages)
                for step in outcome.plan.steps:
                    wf.steps[step.id].agent = pinned.get(step.agent, step.agent)
                wf.source = "planner"
                await self.save()
                return None
            if outcome.question and len(wf.clarifications) < MAX_CLARIFICATIONS:
                await self._ask(outcome.question)
                continue
            wf.detail = outcome.missing or (
                f"the task is still unclear after {len(wf.clarifications)} answers: "
                f"{outcome.question}"
            )
            return UNSUPPORTED

    async def _ask(self, question: str) -> None:
        wf = self.wf
        number = len(wf.clarifications) + 1
        deadline = time.time() + self.context.settings.workflow_clarification_timeout_s
        event_id = await self._events.emit(
            pb.ConversationEvent(
                awaiting_input=pb.AwaitingInput(
                    prompt=question, deadline=_stamp(deadline), speaker=REVIEWER, turn=number
                )
            )
        )
        wf.asking = Asking(number, question, deadline, event_id, event_id)
        await self.save()

    async def _await_clarification(self, asking: Asking) -> str | None:
        """The human's answer to the planner's question; None at its deadline."""
        while self._cancel_reason is None:
            version = self._version
            async for entry in self.persistence.list_events(
                self.state.conversation, after_sequence=asking.after
            ):
                if entry.type == events.MESSAGE_CREATED and _is_answer(
                    entry.message, self.state.run_id, asking.round
                ):
                    return str(entry.message.text)
            left = asking.deadline - time.time()
            if left <= 0:
                return None
            await self._wait(version, min(left, POLL_S))
        return None

    # Executing

    async def _execute(self) -> str:
        wf = self.wf
        if not wf.plan_event:
            wf.plan_event = await self._events.emit(
                pb.ConversationEvent(
                    workflow_plan=pb.WorkflowPlanned(
                        plan=wf.plan_proto(),
                        stages=[pb.PlanStage(step_ids=stage) for stage in wf.stages],
                        source=wf.source,
                        attempts=wf.planner_attempts,
                    )
                )
            )
            await self.save()
        specs = wf.specs()
        while True:
            if self._cancel_reason is not None:
                return CANCELLED
            if self._ending is not None:
                return self._ending
            for step_id in wf.blocked(specs):
                step = wf.steps[step_id]
                failed = next(
                    d for d in specs[step_id].depends_on if wf.steps[d].state != SUCCEEDED
                )
                step.state, step.ended = SKIPPED, time.time()
                step.error = f"skipped: {failed} did not succeed"
                await self._update(step_id, step)
            if wf.over:
                return COMPLETED
            for step_id in [*wf.active(), *wf.ready(specs)]:
                if step_id not in self._tasks:
                    self._tasks[step_id] = asyncio.create_task(self._step(step_id, specs))
            version = self._version
            waits = {asyncio.create_task(self._wait(version, POLL_S)), *self._tasks.values()}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits - set(self._tasks.values()):
                    wait.cancel()
            for step_id, task in list(self._tasks.items()):
                if not task.done():
                    continue
                del self._tasks[step_id]
                if not task.cancelled() and (error := task.exception()) is not None:
                    raise error

    async def _stop_steps(self) -> None:
        """Stops the steps still working; a step that already ended only tells it (its last
        `StepUpdate`), so that goes out before the run's end."""
        tasks = list(self._tasks.values())
        for step_id, task in self._tasks.items():
            if self.wf.steps[step_id].state not in ENDED:
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def _step(self, step_id: str, specs: dict[str, pb.WorkflowStep]) -> None:
        spec, step = specs[step_id], self.wf.steps[step_id]
        try:
            if not step.output:
                await self._attempts(step_id, spec, step)
            if spec.requires_approval:
                await self._approval(step_id, spec, step)
            await self._act(step_id, spec, step)
            step.state, step.ended, step.error = SUCCEEDED, time.time(), ""
            await self._update(step_id, step)
        except StepFailed as failure:
            step.state, step.ended, step.error = STEP_FAILED, time.time(), str(failure)
            # Decided before anything awaits: the main loop must not see the failed step
            # (and skip its dependents as if the run went on) before the run's end is set.
            if spec.on_failure != pb.STEP_FAILURE_POLICY_CONTINUE and self._ending is None:
                self.wf.detail = f"step {step_id} failed: {step.error}"
                self._ending = FAILED
                for other, task in self._tasks.items():
                    if other != step_id:
                        task.cancel()
            await self._update(step_id, step)
            await self._publish(
                "step.failed",
                {"step_id": step_id, "error": step.error, "attempts": step.attempt},
                f"{self.state.run_id}.step.{step_id}.failed",
            )
        except _Stopped:
            pass
        finally:
            self.notify()

    def _step_input(self, step_id: str, spec: pb.WorkflowStep, agent: pb.Agent) -> StepInput:
        step = self.wf.steps[step_id]
        outputs = {k: v.output for k, v in self.wf.steps.items()}
        return StepInput(
            tenant=self.state.tenant,
            conversation=self.state.conversation,
            run_id=self.state.run_id,
            step=spec,
            attempt=step.attempt,
            agent=agent,
            speaker=participant_id(step.agent),
            inputs=inputs_of(spec, outputs),
        )

    async def _attempts(self, step_id: str, spec: pb.WorkflowStep, step: StepState) -> None:
        """Runs the step's attempts until one gives its output (stored as a message)."""
        settings = self.context.settings
        timeout = _seconds(spec.timeout) if spec.HasField("timeout") else 0.0
        timeout = timeout or settings.workflow_step_timeout_s
        agent = await self.context.agents.get(step.agent)
        tools = await self._tools_now()
        while True:
            if step.state == RETRYING:
                await asyncio.sleep(max(0.0, step.next_attempt_at - time.time()))
                step.attempt += 1
            elif step.state == PENDING:
                step.attempt = 1
            # Otherwise a takeover: the same attempt again, with the same idempotency keys.
            async with self._slots, self.context.step_slots:
                now = time.time()
                step.state, step.attempt_started = RUNNING, now
                step.first_started = step.first_started or now
                await self._update(step_id, step)
                llm = self._caller(step.agent)
                writer = self._writer(step_id, step.attempt)
                inputs = self._step_input(step_id, spec, agent)
                try:
                    async with asyncio.timeout(timeout):
                        answer, reasoning = await think(
                            inputs, writer, llm, tools, self.context.backends, self._options
                        )
                        await writer.flush()
                except BudgetExhausted:
                    await writer.close()
                    self._take_spend(llm, step)
                    self._ending = self._ending or BUDGET
                    raise _Stopped() from None
                except asyncio.CancelledError:
                    await writer.close()
                    self._take_spend(llm, step)
                    raise
                except Exception as error:
                    await writer.close()
                    self._take_spend(llm, step)
                    if isinstance(error, LostOwnership):
                        raise
                    if not is_transient(error):
                        raise StepFailed(f"attempt {step.attempt}: {describe(error)}") from error
                    if step.attempt > retries_of(spec):
                        raise StepFailed(
                            f"failed after {step.attempt} attempts: {describe(error)}"
                        ) from error
                    base = settings.workflow_retry_base_s * 2 ** (step.attempt - 1)
                    delay = base + random.uniform(0, base / 2)
                    step.state, step.error = RETRYING, describe(error)
                    step.next_attempt_at = time.time() + delay
                    await self._update(step_id, step, retry_delay=delay)
                    continue
                spend = self._take_spend(llm, step)
                message = await self._store_output(step_id, step, answer, reasoning, spend)
                step.keep(answer.text, reasoning)
                step.message, step.error = message.name, ""
                await self.save()
                return

    async def _store_output(
        self, step_id: str, step: StepState, answer: TurnAnswer, reasoning: str, spend: Spend
    ) -> persistence_pb2.Message:
        metadata = struct_pb2.Struct()
        metadata.update(
            {
                "run": self.state.run_id,
                "step": step_id,
                "attempt": step.attempt,
                "agent": step.agent,
                "model": answer.model,
                "cost": spend.cost,
                "generation_ms": spend.generation_ms,
                "reasoning": reasoning,
            }
        )
        return await self.persistence.create_message(
            self.state.conversation,
            persistence_pb2.Message(
                role=common_pb2.ROLE_ASSISTANT,
                author=participant_id(step.agent),
                text=answer.text,
                citations=answer.citations,
                usage=spend.usage(),
                metadata=metadata,
            ),
            request_id=f"{self.state.run_id}.step.{step_id}.{step.attempt}",
        )

    # Approvals

    async def _approval(self, step_id: str, spec: pb.WorkflowStep, step: StepState) -> None:
        """Waits for the step's approval (asked once); StepFailed when it is rejected."""
        if not step.approval:
            timeout = _seconds(spec.approval_timeout) if spec.HasField("approval_timeout") else 0
            record = await self.approvals.request(
                Request(
                    approval_id=approval_id(self.state.run_id, step_id, step.attempt),
                    conversation=self.state.conversation,
                    run_id=self.state.run_id,
                    step_id=step_id,
                    agent=step.agent,
                    output=step.output,
                    reasoning=step.reasoning,
                    timeout_s=timeout,
                    action=spec.approval_timeout_action,
                    escalate_to=spec.escalate_to,
                    warning_fraction=self.context.settings.approval_warning_fraction,
                )
            )
            step.approval, step.state = record.id, AWAITING_APPROVAL
            await self._update(step_id, step)
            await self._asked(record)
        while True:
            version = self._version
            record = await self.approvals.get(step.approval)
            if not record.pending:
                self._apply(step, record)
                return
            now = time.time()
            if record.deadline and now >= record.deadline:
                record = await self.approvals.expire(step.approval)
                if record.pending:  # escalated: a new wait
                    await self._asked(record)
                else:
                    await decided_event(self.persistence, record)
                continue
            if record.deadline and not record.warned and now >= record.warn_at:
                warned = await self.approvals.warn(step.approval)
                if warned is not None:
                    await self._events.emit(
                        pb.ConversationEvent(
                            step_id=step_id,
                            warning=pb.Warning(
                                code="approval.expiring",
                                message=(
                                    f"the approval of step {step_id} expires in "
                                    f"{record.deadline - now:.0f} s"
                                ),
                                approval=record.approval.name,
                                deadline=_stamp(record.deadline),
                            ),
                        )
                    )
                continue
            timers = [t for t in (record.deadline, 0 if record.warned else record.warn_at) if t]
            await self._wait(version, min([POLL_S, *(t - now for t in timers)]))

    async def _asked(self, record: Record) -> None:
        """The approval's `awaiting_input` and webhook (again after an escalation)."""
        approval = record.approval
        awaiting = pb.AwaitingInput(
            approval_id=record.id,
            approval=approval.name,
            step_id=approval.step_id,
            prompt=(
                f"Approve, reject or modify the result of step {approval.step_id}"
                + (f" (escalated to {approval.escalate_to})" if approval.escalated else "")
                + "."
            ),
            proposed_output=approval.proposed_output,
            reasoning=approval.reasoning,
            escalated=approval.escalated,
            escalate_to=approval.escalate_to if approval.escalated else "",
        )
        if record.deadline:
            awaiting.deadline.CopyFrom(_stamp(record.deadline))
        await self._events.emit(
            pb.ConversationEvent(step_id=approval.step_id, awaiting_input=awaiting)
        )
        await self._publish(
            "approval.requested",
            json_format.MessageToDict(approval, preserving_proto_field_name=True),
            f"{record.id}.requested" + (".escalated" if approval.escalated else ""),
        )

    def _apply(self, step: StepState, record: Record) -> None:
        approval = record.approval
        last = approval.history[-1] if approval.history else pb.ApprovalAuditEntry()
        if approval.state == pb.APPROVAL_STATE_MODIFIED:
            step.keep(approval.final_output)
            step.acted.clear()
        elif approval.state != pb.APPROVAL_STATE_APPROVED:
            who = last.actor or SYSTEM
            why = f": {last.comment}" if last.comment else ""
            raise StepFailed(f"rejected by {who}{why}")

    # Acting

    async def _act(self, step_id: str, spec: pb.WorkflowStep, step: StepState) -> None:
        tools = await self._tools_now()
        pending = [tool for tool in actions(spec, tools) if tool not in step.acted]
        if not pending:
            return
        agent = await self.context.agents.get(step.agent)
        for tool in pending:
            async with self._slots, self.context.step_slots:
                llm = self._caller(step.agent)
                writer = self._writer(step_id, step.attempt, tool)
                narrowed = None
                if self._narrow is not None:
                    narrowed = await self._narrow(tool, tools.get(tool).model_parameters())
                try:
                    outcome = await act(
                        self._step_input(step_id, spec, agent),
                        tool,
                        step.output,
                        writer,
                        llm,
                        tools,
                        self.context.backends,
                        model=agent.model or self.context.settings.default_model,
                        max_tokens=ACTION_MAX_TOKENS,
                        narrowed=narrowed,
                    )
                except BudgetExhausted:
                    self._ending = self._ending or BUDGET
                    raise _Stopped() from None
                except CallistoError as error:
                    # The model could not make the call's arguments: the action did not happen.
                    raise StepFailed(f"{tool}: {describe(error)}") from error
                finally:
                    self._take_spend(llm, step)
            if not outcome.ok:
                raise StepFailed(f"{tool} failed: {outcome.error}")
            assert outcome.result is not None
            step.acted[tool] = outcome.result.summary
            await self.save()

    # Bookkeeping

    def _caller(self, agent: str) -> RunModelCaller:
        return RunModelCaller(
            self.context.backends.generation,
            self.context.prices,
            self._budget,
            tenant=self.state.tenant,
            agent=agent.split("@", 1)[0],
            model_extras=self.state.model_extras,
            daily=self.context.daily,
        )

    def _take_spend(self, llm: RunModelCaller, step: StepState | None = None) -> Spend:
        spend = llm.take_spend()
        self.state.spend.merge(spend)
        if step is not None:
            step.spend.merge(spend)
        return spend

    def _writer(self, step_id: str, attempt: int, part: str = "think") -> events.EventWriter:
        self._writers += 1
        state = self.state
        return events.EventWriter(
            self.persistence,
            state.conversation,
            f"{state.run_id}.{state.epoch}.{step_id}.{attempt}.{part}.{self._writers}",
            self.context.settings.token_coalesce_ms / 1000,
            step_id=step_id,
        )

    async def _update(self, step_id: str, step: StepState, *, retry_delay: float = 0.0) -> None:
        """The step's `StepUpdate`, then the checkpoint."""
        await self._events.emit(
            pb.ConversationEvent(step_id=step_id, step=update_of(step_id, step, retry_delay))
        )
        await self.save()

    async def _publish(self, event_type: str, payload: dict[str, Any], key: str) -> None:
        if self._publisher is None:
            return
        try:
            await self._publisher.publish(
                event_type,
                payload,
                idempotency_key=key,
                conversation=self.state.conversation,
            )
        except Exception as error:  # a webhook never fails the run
            log.warning("could not publish %s: %s", event_type, error)

    # Resuming

    async def _resume_from_log(self) -> bool:
        """A `done` in the log ends the run as it said; a step output stored after the last
        checkpoint is kept (the step is not run again)."""
        state = self.state
        async for entry in self.persistence.list_events(
            state.conversation, after_sequence=state.start_after
        ):
            event = events.from_log(entry, state.conversation)
            if event is None:
                continue
            if events.is_terminal(event):
                state.status = event.done.reason if event.HasField("done") else FAILED
                state.done_event_id = int(event.event_id)
                await self.save()
                await self._close(int(event.event_id))
                return True
            kind = event.WhichOneof("kind")
            if kind == "workflow_plan" and not self.wf.plan_event:
                self.wf.plan_event = int(event.event_id)
            elif entry.type == events.MESSAGE_CREATED:
                self._output_found(entry.message)
        await self.save()
        return False

    def _output_found(self, message: persistence_pb2.Message) -> None:
        metadata = (
            json_format.MessageToDict(message.metadata) if message.HasField("metadata") else {}
        )
        step = self.wf.steps.get(str(metadata.get("step", "")))
        if metadata.get("run") != self.state.run_id or step is None:
            return
        if step.state in ENDED or step.output:
            return
        step.state = RUNNING
        step.attempt = int(metadata.get("attempt", step.attempt) or step.attempt)
        step.keep(message.text, str(metadata.get("reasoning", "")))
        step.message = message.name

    # The end

    async def _finish(self, reason: str) -> bool:
        state, wf = self.state, self.wf
        state.status = reason
        if reason == CANCELLED:
            state.cancel_reason = self._cancel_reason or ""
        now = time.time()
        stopped = []
        # An approval nobody may answer any more says so before the run's end is told.
        await self._cancel_approvals(f"the run ended ({reason})")
        for step_id, step in wf.steps.items():
            if step.state not in ENDED:
                if step.state != PENDING:
                    stopped.append(step_id)
                step.state, step.ended = STEP_CANCELLED, now
        await self.save()
        for step_id in stopped:
            await self._events.emit(
                pb.ConversationEvent(step_id=step_id, step=update_of(step_id, wf.steps[step_id]))
            )
        done = done_of(state.spend, wf, reason)
        event_id = await self._events.emit(pb.ConversationEvent(done=done))
        state.done_event_id = event_id
        await self.save()
        await self._close(event_id)
        await self._after_end(reason, done)
        return True

    async def _fail(self, error: BaseException) -> None:
        await self._stop_steps()
        await self._cancel_approvals("the run failed")
        await super()._fail(error)
        with contextlib.suppress(Exception):
            await self._after_end(FAILED, None)

    async def _cancel_approvals(self, reason: str) -> None:
        for step in self.wf.steps.values():
            if step.state == AWAITING_APPROVAL:
                with contextlib.suppress(Exception):
                    await self.approvals.cancel(step.approval, reason)

    async def _after_end(self, reason: str, done: pb.Done | None) -> None:
        """What follows the terminal event: the conversation's status, the `run.done` (or
        `run.failed`) webhook."""
        status = {
            CANCELLED: persistence_pb2.CONVERSATION_STATUS_CANCELLED,
            FAILED: persistence_pb2.CONVERSATION_STATUS_FAILED,
        }.get(reason, persistence_pb2.CONVERSATION_STATUS_COMPLETED)
        with contextlib.suppress(Exception):
            await self.persistence.update_conversation(
                persistence_pb2.Conversation(name=self.state.conversation, status=status),
                ["status"],
            )
        payload: dict[str, Any] = {"reason": reason, "conversation": self.state.conversation}
        if done is not None:
            payload["done"] = json_format.MessageToDict(done, preserving_proto_field_name=True)
        event = "run.done" if done is not None and reason != FAILED else "run.failed"
        await self._publish(event, payload, f"{self.state.run_id}.{event}")


def update_of(step_id: str, step: StepState, retry_delay: float = 0.0) -> pb.StepUpdate:
    end = step.ended or time.time()
    update = pb.StepUpdate(
        step_id=step_id,
        state=step.state,
        attempt=step.attempt,
        error=step.error,
        agent=step.agent,
        usage=step.spend.usage(),
        cost=step.spend.cost,
    )
    if step.state in (AWAITING_APPROVAL, SUCCEEDED) or (step.state == STEP_FAILED and step.output):
        update.output = step.output
    if step.first_started:
        update.duration.CopyFrom(_duration(end - step.first_started))
    if retry_delay:
        update.retry_delay.CopyFrom(_duration(retry_delay))
    return update


def done_of(spend: Spend, wf: Workflow, reason: str) -> pb.Done:
    """The run's `done`: every step's result in plan order and each agent's spend."""
    results = []
    by_agent: dict[str, Spend] = {}
    for step_id, step in wf.steps.items():
        result = pb.StepResult(
            step_id=step_id,
            state=step.state,
            attempts=step.attempt,
            usage=step.spend.usage(),
            cost=step.spend.cost,
            agent=step.agent,
            error=step.error,
            output=step.output if step.state == SUCCEEDED else "",
        )
        if step.first_started:
            result.duration.CopyFrom(_duration((step.ended or time.time()) - step.first_started))
        results.append(result)
        if step.agent:
            by_agent.setdefault(step.agent, Spend()).merge(step.spend)
    return pb.Done(
        reason=reason,
        usage=spend.usage(),
        cost=spend.cost,
        steps=results,
        agent_usage=[
            pb.AgentUsage(agent=agent, usage=s.usage(), cost=s.cost)
            for agent, s in sorted(by_agent.items())
        ],
        detail=wf.detail,
    )


async def decided_event(persistence: PersistenceClient, record: Record) -> int:
    """Appends the `approval_decided` of a decision (once, whoever writes it)."""
    approval = record.approval
    last = approval.history[-1] if approval.history else pb.ApprovalAuditEntry()
    decision = {
        pb.APPROVAL_STATE_APPROVED: pb.APPROVAL_DECISION_APPROVE,
        pb.APPROVAL_STATE_MODIFIED: pb.APPROVAL_DECISION_MODIFY,
    }.get(approval.state, pb.APPROVAL_DECISION_REJECT)
    event = pb.ConversationEvent(
        step_id=approval.step_id,
        approval_decided=pb.ApprovalDecided(
            approval=approval.name,
            decision=decision,
            reviewer=last.actor,
            comment=last.comment,
            modified_output=last.modified_output,
        ),
    )
    stored = await persistence.append_event(
        approval.conversation,
        events.event_type(event),
        events.event_data(event),
        request_id=f"{record.id}.decided",
    )
    return int(stored.sequence)


def _is_answer(message: persistence_pb2.Message, run_id: str, number: int) -> bool:
    if message.role != common_pb2.ROLE_USER or not message.HasField("metadata"):
        return False
    metadata = json_format.MessageToDict(message.metadata)
    return metadata.get("run") == run_id and metadata.get("clarify") == number
