"""One run owned by this process: `Run` holds what every run shares (the checkpoint with its
compare-and-set merge, cancel, lease, `done`/`error`, takeover) and answers, as the
assistant, a conversation's pending human turns one at a time (each a `turn_started`, the
assistant's events, the stored answer, a `usage`), checkpoints after every step, and ends with
`done` (or `error`).

Resuming is loading the checkpoint: a run taken over first reads the log after it, so a
`done` or an answer written just before the previous owner died is kept, not redone; an
interrupted turn starts over with `turn_started(restarted=true)`. A simulation
(simulation.SimulationRun) is a Run whose `_run`, `_resume_from_log` and `_finish` are its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format, struct_pb2

from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2
from callisto.errors import Aborted, CallistoError
from callisto.persistence import PersistenceClient
from callisto.services.common.errors import Unavailable, status_from_exception
from callisto.services.common.tenancy import bind_tenant, reset_tenant
from callisto.services.orchestration import events
from callisto.services.orchestration.agents import AgentStore
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.budget import PriceTable, RunModelCaller, Spend, TokenBudget
from callisto.services.orchestration.leases import Leases, RunKey
from callisto.services.orchestration.relay import relayed
from callisto.services.orchestration.run_state import (
    BUDGET,
    CANCELLED,
    COMPLETED,
    FAILED,
    RUNNING,
    Checkpoint,
    PendingTurn,
    RunState,
    RunStore,
)
from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.tenant_budget import TenantBudgets
from callisto.services.orchestration.tools.registry import ToolRegistry
from callisto.services.orchestration.turns import (
    BudgetExhausted,
    ModelCaller,
    RunSink,
    TurnAnswer,
    TurnInput,
)

log = logging.getLogger("callisto.orchestration.runs")

# The tool registry of the tenant bound to the context.
Toolbox = Callable[[], Coroutine[Any, Any, ToolRegistry]]
AnswerTurn = Callable[
    [TurnInput, RunSink, ModelCaller, ToolRegistry, Backends], Coroutine[Any, Any, TurnAnswer]
]
# Earlier messages a turn sees as history.
HISTORY_MESSAGES = 20
# Tries of a checkpoint write that keeps meeting other writers (queued turns).
CAS_ATTEMPTS = 8


class LostOwnership(Exception):
    """Another process took the run over: this one stops without writing anything more."""


@dataclass(frozen=True)
class RunContext:
    """What the runs of this process share."""

    settings: OrchestrationSettings
    backends: Backends
    agents: AgentStore
    tools: ToolRegistry
    answer: AnswerTurn
    store: RunStore
    prices: PriceTable
    leases: Leases
    # Agent turns of simulations this process generates at once.
    turn_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(64))
    # Workflow step attempts this process runs at once.
    step_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(32))
    # Tenants' daily token budgets (charged by every model call of a run).
    daily: TenantBudgets | None = None
    # The tools of the bound tenant: the built-ins and its HTTP tools (`tools` when None).
    toolbox: Toolbox | None = None

    async def tools_now(self) -> ToolRegistry:
        return await self.toolbox() if self.toolbox is not None else self.tools


class Run:
    """One run owned by this process: a task answering its pending turns."""

    def __init__(
        self,
        context: RunContext,
        key: RunKey,
        checkpoint: Checkpoint,
        agent: pb.Agent | None,
        *,
        restarted: bool,
        cancel_reason: str | None,
    ) -> None:
        self.context = context
        self.key = key
        self.checkpoint = checkpoint
        self.agent = agent
        self.task: asyncio.Task[None] | None = None
        self._restarted = restarted
        self._cancel_reason = cancel_reason
        # The work in progress a cancel interrupts (an assistant turn, a simulation's turn).
        self._turn_task: asyncio.Task[Any] | None = None
        self._finished: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._save_lock = asyncio.Lock()
        self._abandoned = False
        # Event id of the human message of the last turn answered here: queued turns at or
        # before it are done, whatever an older checkpoint still lists.
        self._last_answered = 0

    @property
    def state(self) -> RunState:
        return self.checkpoint.state

    @property
    def persistence(self) -> PersistenceClient:
        return self.context.backends.persistence

    # Called from RPCs and upkeep

    def request_cancel(self, reason: str) -> None:
        if self._cancel_reason is None:
            self._cancel_reason = reason or "cancelled"
        if self._turn_task is not None and not self._turn_task.done():
            self._turn_task.cancel()

    async def cancel(self, reason: str) -> int:
        self.request_cancel(reason)
        return await self.wait_finished()

    async def wait_finished(self) -> int:
        return await asyncio.shield(self._finished)

    async def abandon(self) -> None:
        """Stops the run without a word in the log (shutdown, or a lost lease)."""
        self._abandoned = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    async def enqueue(self, turn: PendingTurn) -> bool:
        """Queues a turn on this running run; False when it is finishing or gone."""
        if self.state.finished or self._abandoned or self.task is None or self.task.done():
            return False
        self.state.pending.append(turn)
        try:
            await self.save()
        except LostOwnership:
            return False
        return True

    async def store_pending_messages(self) -> None:
        """Stores the human messages of queued turns that are not stored yet (the prompt)."""
        changed = False
        for turn in self.state.pending:
            if turn.event_id:
                continue
            message = await self.persistence.create_message(
                self.state.conversation,
                persistence_pb2.Message(
                    role=common_pb2.ROLE_USER, author=turn.author, text=turn.text
                ),
                request_id=turn.request_id,
            )
            turn.event_id = int(message.event_sequence)
            turn.message = message.name
            changed = True
        if changed:
            await self.save()

    async def save(self) -> None:
        """Checkpoints the state; when a writer queued a turn in between, its turns and cancel
        are merged in and the write is tried again."""
        async with self._save_lock:
            for _ in range(CAS_ATTEMPTS):
                try:
                    await self.context.store.save(self.checkpoint)
                    return
                except Aborted:
                    remote = await self.context.store.load(self.state.conversation)
                    if (
                        remote is None
                        or remote.state.run_id != self.state.run_id
                        or remote.state.owner != self.state.owner
                    ):
                        raise LostOwnership() from None
                    self._merge(remote.state)
                    self.checkpoint.etag = remote.etag
            raise Unavailable("the run's checkpoint kept changing", retry_after=0.2)

    def _merge(self, remote: RunState) -> None:
        known = {turn.request_id for turn in self.state.pending}
        answered = self._last_answered
        for turn in remote.pending:
            if turn.request_id not in known and turn.event_id > answered:
                self.state.pending.append(turn)
        self.state.pending.sort(key=lambda turn: turn.event_id or -1)
        if remote.cancel_requested and self._cancel_reason is None:
            self.request_cancel(remote.cancel_reason)

    # The run itself

    async def main(self) -> None:
        token = bind_tenant(self.state.tenant)
        try:
            await self._run()
        except LostOwnership:
            log.warning("another process took the run over", extra={"fields": self._fields()})
        except asyncio.CancelledError:
            if not self._abandoned:
                raise
        except Exception as error:
            log.error("run failed", exc_info=error, extra={"fields": self._fields()})
            with contextlib.suppress(Exception):
                await self._fail(error)
        finally:
            if not self._finished.done():
                self._finished.set_exception(
                    Unavailable("the run stopped on this process; it resumes elsewhere")
                )
                self._finished.exception()  # retrieved: nobody may be waiting
            reset_tenant(token)

    async def _run(self) -> None:
        if self._restarted and await self._resume_from_log():
            return  # its terminal event was written before the takeover
        if self.state.finished:
            # Taken over after its status was written but before its `done` was.
            await self._finish(self.state.status)
            return
        if self.agent is None:
            self.agent = await self.context.agents.get(self.state.agent)
        await self.store_pending_messages()
        while True:
            if self._cancel_reason is not None:
                await self._finish(CANCELLED)
                return
            if not self.state.pending:
                if await self._finish(COMPLETED):
                    return
                continue
            reason = await self._turn(self.state.pending[0])
            if reason is not None:
                await self._finish(reason)
                return

    async def _resume_from_log(self) -> bool:
        """What the log says happened after the last checkpoint: a `done` ends the run as it
        said; an answer stored for the interrupted turn completes that turn. True when the
        run is over."""
        number = self.state.turns + 1
        async for entry in self.persistence.list_events(
            self.state.conversation, after_sequence=self.state.start_after
        ):
            event = events.from_log(entry, self.state.conversation)
            if event is None:
                continue
            if events.is_terminal(event):
                self.state.status = event.done.reason if event.HasField("done") else FAILED
                self.state.done_event_id = int(event.event_id)
                await self.save()
                await self._close(int(event.event_id))
                return True
            if entry.type == events.MESSAGE_CREATED and _answers(entry.message, self.state, number):
                self._complete_turn(entry.message)
                self.state.turns = number
                number += 1
        if self.state.turn_started_event == 0:
            self._restarted = False
        return False

    def _complete_turn(self, message: persistence_pb2.Message, spend: Spend | None = None) -> None:
        """The turn of the first pending human message is answered by `message`; what it
        spent is `spend` (or, for an answer found in the log, what its message says)."""
        if self.state.pending:
            self._last_answered = max(self._last_answered, self.state.pending[0].event_id)
            self.state.pending.pop(0)
        self.state.turn_started_event = 0
        if spend is not None:
            self.state.spend.merge(spend)
            return
        metadata = json_format.MessageToDict(message.metadata)
        self.state.spend.add(
            str(metadata.get("model", "")),
            message.usage,
            float(metadata.get("cost", 0.0)),
            float(metadata.get("generation_ms", 0.0)),
        )

    async def _turn(self, turn: PendingTurn) -> str | None:
        """Answers one human turn; the done reason when the run must end instead."""
        state = self.state
        assert self.agent is not None
        number = state.turns + 1
        restarted, self._restarted = self._restarted and state.turn_started_event != 0, False
        prefix = f"{state.run_id}.{state.epoch}.{number}"
        writer = events.EventWriter(
            self.persistence,
            state.conversation,
            prefix,
            self.context.settings.token_coalesce_ms / 1000,
        )
        started = await writer.emit(
            pb.ConversationEvent(
                turn_started=pb.TurnStarted(
                    speaker=state.speaker, turn=number, agent=state.agent, restarted=restarted
                )
            )
        )
        state.turn_started_event = started
        await self.save()
        llm = RunModelCaller(
            self.context.backends.generation,
            self.context.prices,
            TokenBudget(state.max_total_tokens, state.spend.total_tokens),
            tenant=state.tenant,
            agent=self.agent.name,
            model_extras=state.model_extras,
            daily=self.context.daily,
        )
        turn_input = TurnInput(
            tenant=state.tenant,
            conversation=state.conversation,
            agent=self.agent,
            speaker=state.speaker,
            turn=number,
            user_text=turn.text,
            history=await self._history(turn),
            max_iterations=state.max_iterations,
        )
        if self._cancel_reason is not None:
            return CANCELLED
        self._turn_task = asyncio.create_task(
            self.context.answer(
                turn_input, writer, llm, await self.context.tools_now(), self.context.backends
            )
        )
        try:
            await asyncio.wait({self._turn_task})
        except asyncio.CancelledError:
            self._turn_task.cancel()
            await writer.close()
            raise
        task, self._turn_task = self._turn_task, None
        if self._cancel_reason is not None or task.cancelled():
            await writer.close()
            self.state.spend.merge(llm.take_spend())
            return CANCELLED
        error = task.exception()
        if isinstance(error, BudgetExhausted):
            await writer.flush()
            self.state.spend.merge(llm.take_spend())
            return BUDGET
        if error is not None:
            await writer.close()
            raise error
        answer = task.result()
        await writer.flush()
        spend = llm.take_spend()
        message = await self._store_answer(number, answer, spend)
        self._complete_turn(message, spend)
        state.turns = number
        await writer.emit(pb.ConversationEvent(usage=state.spend.usage()))
        await self.save()
        return None

    async def _store_answer(
        self,
        number: int,
        answer: TurnAnswer,
        spend: Spend,
    ) -> persistence_pb2.Message:
        # What the run's model caller counted; the answer's own figure if it made no call.
        usage = spend.usage() if spend.total_tokens else answer.usage
        metadata = struct_pb2.Struct()
        metadata.update(
            {
                "run": self.state.run_id,
                "turn": number,
                "agent": self.state.agent,
                "model": answer.model,
                "generation_ms": answer.generation_ms or spend.generation_ms,
                "cost": spend.cost,
                "tool_calls": [
                    json_format.MessageToDict(call.event(), preserving_proto_field_name=True)
                    for call in answer.tool_calls
                ],
                "unavailable": list(answer.unavailable),
            }
        )
        return await self.persistence.create_message(
            self.state.conversation,
            persistence_pb2.Message(
                role=common_pb2.ROLE_ASSISTANT,
                author=self.state.speaker,
                text=answer.text,
                citations=answer.citations,
                usage=usage,
                metadata=metadata,
            ),
            request_id=f"{self.state.run_id}.answer.{number}",
        )

    async def _history(self, turn: PendingTurn) -> list[generation_pb2.ChatMessage]:
        history: list[generation_pb2.ChatMessage] = []
        async for message in self.persistence.list_messages(self.state.conversation):
            if message.name == turn.message:
                break
            role = message.role
            if role in (common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT) and message.text:
                history.append(generation_pb2.ChatMessage(role=role, content=message.text))
        return history[-HISTORY_MESSAGES:]

    async def _finish(self, reason: str) -> bool:
        """Ends the run with `done(reason)`; False when a turn was queued meanwhile (the run
        goes on)."""
        self.state.status = reason
        if reason == CANCELLED:
            self.state.cancel_reason = self._cancel_reason or ""
        await self.save()
        if reason == COMPLETED and (self.state.pending or self._cancel_reason is not None):
            self.state.status = RUNNING
            return False
        writer = events.EventWriter(
            self.persistence,
            self.state.conversation,
            f"{self.state.run_id}.{self.state.epoch}.done",
            0.0,
        )
        spend = self.state.spend
        done = pb.Done(reason=reason, usage=spend.usage(), turns=self.state.turns, cost=spend.cost)
        event_id = await writer.emit(pb.ConversationEvent(done=done))
        self.state.done_event_id = event_id
        await self.save()
        await self._close(event_id)
        return True

    async def _fail(self, error: BaseException) -> None:
        self.state.status = FAILED
        try:
            await self.save()
        except LostOwnership:
            raise
        except Exception as failed:
            # Persistence may be what failed the run: the error event is still written (its
            # log is separate), so a watcher learns how the run ended.
            log.warning(
                "failed run not checkpointed", exc_info=failed, extra={"fields": self._fields()}
            )
        writer = events.EventWriter(
            self.persistence,
            self.state.conversation,
            f"{self.state.run_id}.{self.state.epoch}.error",
            0.0,
        )
        typed = relayed(error) if isinstance(error, CallistoError) else error
        event_id = await writer.emit(pb.ConversationEvent(error=status_from_exception(typed)))
        self.state.done_event_id = event_id
        await self.save()
        await self._close(event_id)

    async def _close(self, event_id: int) -> None:
        with contextlib.suppress(Exception):
            await self.context.leases.unindex(self.key, self.state.run_id)
            await self.context.leases.release(self.key)
        if not self._finished.done():
            self._finished.set_result(event_id)

    def _fields(self) -> dict[str, str]:
        return {"run": self.state.run_id, "conversation": self.state.conversation}


def _answers(message: persistence_pb2.Message, state: RunState, number: int) -> bool:
    """Whether a stored message is this run's answer of turn `number`."""
    if message.role != common_pb2.ROLE_ASSISTANT or not message.HasField("metadata"):
        return False
    metadata = json_format.MessageToDict(message.metadata)
    return metadata.get("run") == state.run_id and int(metadata.get("turn", 0)) == number
