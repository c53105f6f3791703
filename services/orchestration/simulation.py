"""A simulation run (CONVERSATION_MODE_SIMULATION): agents take turns, round robin (or as the
model picks), with the human every round when there is one, until the termination policy, a
cancel or the human ends it.

It is a `Run` (run_loop): the same checkpoint with compare-and-set merge, lease, cancel,
`done`/`error` and takeover. Each turn is: `turn_started`, the agent's retrieval and streamed
line (simulation_turns), its sentiment, the stored message (request id from run and turn, so a
turn is stored once whoever stores it: the run, a retried submit, a late human), `usage`, the
checkpoint, then the termination check. The log is the truth on resume: a turn whose message is
stored is done, an interrupted one starts over with `turn_started(restarted=true)`, an awaited
human turn keeps waiting with its deadline, and a `done` ends the run as it said.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2
from callisto.generation import GenerationClient
from callisto.services.orchestration import events, metrics, termination
from callisto.services.orchestration.budget import RunModelCaller, Spend, TokenBudget
from callisto.services.orchestration.leases import RunKey
from callisto.services.orchestration.run_loop import LostOwnership, Run, RunContext
from callisto.services.orchestration.run_state import (
    BUDGET,
    CANCELLED,
    FAILED,
    Checkpoint,
    RunState,
)
from callisto.services.orchestration.simulation_state import Human, Limits, Simulation, Speaker
from callisto.services.orchestration.simulation_turns import (
    AgentLine,
    AgentTurnInput,
    Line,
    agent_turn,
    choose_next,
)
from callisto.services.orchestration.turns import BudgetExhausted

log = logging.getLogger("callisto.orchestration.simulation")

MODE = "simulation"
# How often a run waiting for its human looks at the checkpoint for an end asked elsewhere.
END_POLL_S = 1.0
T = TypeVar("T")


def now_rfc3339() -> str:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return str(stamp.ToJsonString())


# Most characters of one text AnalyzeSentiment scores (generation.proto).
SENTIMENT_TEXT_CHARS = 16384


async def sentiment_of(generation: GenerationClient, text: str) -> common_pb2.Sentiment:
    """The sentiment of a turn's text, as AnalyzeSentiment takes it: NULs read as spaces, the
    text cut to what one text may hold (a turn's tone shows long before that)."""
    scored = text.replace("\x00", " ")[:SENTIMENT_TEXT_CHARS]
    scores = await generation.analyze_sentiment([scored])
    return scores[0] if scores else common_pb2.Sentiment()


def request_id(run_id: str, turn: int) -> str:
    """The request id of the message of turn `turn`: one message per turn number, whoever
    stores it first (the agent's run or the human's submit)."""
    return f"{run_id}.turn.{turn}"


def is_turn(message: persistence_pb2.Message, run_id: str, number: int) -> bool:
    """Whether a stored message is turn `number` of the run."""
    if message.role not in (common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT):
        return False
    if not message.HasField("metadata"):
        return False
    metadata = json_format.MessageToDict(message.metadata)
    turn = metadata.get("turn")
    return metadata.get("run") == run_id and isinstance(turn, (int, float)) and int(turn) == number


def human_message(
    state: RunState,
    simulation: Simulation,
    number: int,
    text: str,
    sentiment: common_pb2.Sentiment,
    *,
    end: bool,
) -> persistence_pb2.Message:
    """The stored message of the human's turn `number`."""
    assert simulation.human is not None
    metadata = struct_pb2.Struct()
    metadata.update(
        {
            "mode": MODE,
            "run": state.run_id,
            "turn": number,
            "speaker": simulation.human.id,
            "human": True,
            "agent": "",
            "model": "",
            "generation_ms": 0.0,
            "cost": 0.0,
            "keyword_hits": termination.keyword_hits(text, simulation.limits.stop_keywords),
            "passages": 0,
            "tool_calls": [],
            "started": simulation.turn_started_time or now_rfc3339(),
            "end_conversation": end,
        }
    )
    return persistence_pb2.Message(
        role=common_pb2.ROLE_USER,
        author=simulation.human.id,
        text=text,
        sentiment=sentiment,
        usage=common_pb2.TokenUsage(),
        metadata=metadata,
    )


def conversation_for(
    simulation: Simulation, start: pb.StartConversation, run_id: str
) -> persistence_pb2.Conversation:
    """The conversation a simulation creates (storage contract: participants in speaking
    order, then the human; tags + "simulation"; the set-up as metadata)."""
    participants = [
        persistence_pb2.Participant(
            id=s.participant,
            display_name=s.spec.display_name,
            kind=persistence_pb2.PARTICIPANT_KIND_AGENT,
            role=s.spec.role,
            company=s.spec.company,
        )
        for s in simulation.agents
    ]
    human = simulation.human
    if human is not None:
        participants.append(
            persistence_pb2.Participant(
                id=human.id,
                display_name=human.display_name,
                kind=persistence_pb2.PARTICIPANT_KIND_HUMAN,
                role=human.role,
                company=human.company,
            )
        )
    data: dict[str, Any] = {
        "mode": MODE,
        "run": run_id,
        "scenario": simulation.scenario,
        "agents": [
            {
                "participant": s.participant,
                "agent": s.agent,
                "display_name": s.spec.display_name,
                "role": s.spec.role,
                "company": s.spec.company,
                "system_prompt": s.spec.system_prompt,
                "tools": list(s.spec.tools),
                "model": s.spec.model,
                "knowledge_tags": list(s.spec.knowledge_tags),
            }
            for s in simulation.agents
        ],
        "termination": simulation.limits.to_json(),
        "max_total_tokens": start.budget.max_total_tokens,
    }
    if human is not None:
        data["human"] = {
            "id": human.id,
            "display_name": human.display_name,
            "role": human.role,
            "company": human.company,
        }
    metadata = struct_pb2.Struct()
    metadata.update(data)
    tags = list(dict.fromkeys([*start.tags, MODE]))
    return persistence_pb2.Conversation(
        title=start.title or simulation.scenario[:80],
        tags=tags,
        participants=participants,
        metadata=metadata,
    )


def setup(
    start: pb.StartConversation,
    speakers: list[Speaker],
    *,
    human_timeout_s: float,
    default_turn_tokens: int,
) -> Simulation:
    """The simulation a (validated) start describes."""
    options = start.simulation
    human: Human | None = None
    if start.human_in_the_loop:
        given = options.human
        human = Human(
            id=given.id or "user",
            display_name=given.display_name,
            role=given.role,
            company=given.company,
        )
    timeout = (
        options.human_turn_timeout.ToTimedelta().total_seconds()
        if options.HasField("human_turn_timeout")
        else 0.0
    )
    return Simulation(
        scenario=start.prompt,
        agents=speakers,
        human=human,
        limits=Limits.from_proto(start.termination),
        model_selects=options.speaker_selection == pb.SPEAKER_SELECTION_MODEL,
        human_timeout_s=timeout if timeout > 0 else human_timeout_s,
        end_on_human_timeout=options.on_human_timeout == pb.HUMAN_TIMEOUT_ACTION_END,
        max_turn_tokens=options.max_turn_tokens or default_turn_tokens,
        started_at=time.time(),
    )


class _Interrupted(Exception):
    """The wait or turn was interrupted by a cancel, an end or the run's timeout."""


class SimulationRun(Run):
    """One simulation owned by this process."""

    def __init__(
        self,
        context: RunContext,
        key: RunKey,
        checkpoint: Checkpoint,
        *,
        restarted: bool,
        cancel_reason: str | None,
    ) -> None:
        super().__init__(
            context, key, checkpoint, None, restarted=restarted, cancel_reason=cancel_reason
        )
        self.sim = Simulation.from_json(checkpoint.state.simulation)
        self._wake = asyncio.Event()
        self._attempt = 0
        self._resume_reason: str | None = None
        # The run's wall-time limit stopped the turn in progress.
        self._timed_out = False
        # The reason the run ends, once a completed turn decided it.
        self.ending: str | None = None
        # Id of the last event of the run known here (a human turn's message is looked for
        # after the mark its turn began at).
        self._mark = checkpoint.state.start_after

    # Called from RPCs and upkeep

    def request_cancel(self, reason: str) -> None:
        super().request_cancel(reason)
        self._wake.set()

    def request_end(self) -> None:
        """The human ends the conversation: the turn in progress (or the wait) stops."""
        self.sim.end_requested = True
        self._wake.set()
        if self._turn_task is not None and not self._turn_task.done():
            self._turn_task.cancel()

    @property
    def awaiting_turn(self) -> int:
        return self.sim.awaiting_turn

    async def save(self) -> None:
        self.state.simulation = self.sim.to_json()
        await super().save()

    def _merge(self, remote: RunState) -> None:
        super()._merge(remote)
        if remote.simulation.get("end_requested") and not self.sim.end_requested:
            self.request_end()

    # The run itself

    async def _run(self) -> None:
        if self._restarted and await self._resume_from_log():
            return
        if self.state.finished:
            await self._finish(self.state.status)
            return
        reason = self._resume_reason
        while reason is None:
            reason = self._interrupted()
            if reason is not None:
                break
            if self.sim.human is not None and (self.sim.awaiting_turn or self.sim.human_is_next()):
                reason = await self._human_turn()
            else:
                reason = await self._agent_turn()
        await self._finish(reason)

    def _interrupted(self) -> str | None:
        if self._cancel_reason is not None:
            return CANCELLED
        if self.sim.end_requested:
            return termination.HUMAN_ENDED
        left = self._time_left()
        if self._timed_out or (left is not None and left <= 0):
            return termination.TIMEOUT
        return None

    def _time_left(self) -> float | None:
        timeout = self.sim.limits.timeout_s
        if timeout is None:
            return None
        return self.sim.started_at + timeout - time.time()

    def _writer(self, number: int) -> events.EventWriter:
        self._attempt += 1
        state = self.state
        return events.EventWriter(
            self.persistence,
            state.conversation,
            f"{state.run_id}.{state.epoch}.{number}.{self._attempt}",
            self.context.settings.token_coalesce_ms / 1000,
        )

    async def _interruptible(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Runs `work` as the turn in progress (a cancel, an end or the run's timeout stops
        it); returns its task, finished or cancelled."""
        task = asyncio.create_task(work)
        self._turn_task = task
        try:
            await asyncio.wait({task}, timeout=self._time_left())
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._turn_task = None
        if not task.done():
            self._timed_out = True
            task.cancel()
            await asyncio.wait({task})
        return task

    async def _lines(self) -> list[Line]:
        lines: list[Line] = []
        limit = max(1, self.context.settings.simulation_history_turns)
        async for message in self.persistence.list_messages(self.state.conversation):
            if message.role in (common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT):
                lines.append(Line(message.author, message.text))
                del lines[:-limit]
        return lines

    async def _agent_turn(self) -> str | None:
        state, sim, settings = self.state, self.sim, self.context.settings
        number = state.turns + 1
        speaker = sim.agents[sim.next_agent]
        restarted, self._restarted = self._restarted, False
        writer = self._writer(number)
        sim.turn_started_time = now_rfc3339()
        started = await writer.emit(
            pb.ConversationEvent(
                turn_started=pb.TurnStarted(
                    speaker=speaker.participant,
                    turn=number,
                    agent=speaker.agent,
                    restarted=restarted,
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
            agent=speaker.agent or speaker.participant,
            model_extras=state.model_extras,
            daily=self.context.daily,
        )
        history = await self._lines()
        turn = AgentTurnInput(
            tenant=state.tenant,
            conversation=state.conversation,
            simulation=sim,
            speaker=speaker,
            turn=number,
            history=history,
            history_turns=settings.simulation_history_turns,
            turn_chars=settings.simulation_turn_chars,
            sources=settings.simulation_sources,
            max_tokens=sim.max_turn_tokens,
            temperature=settings.simulation_temperature,
            repetition_penalty=settings.simulation_repetition_penalty,
        )

        async def generate() -> AgentLine:
            async with self.context.turn_slots:
                return await agent_turn(
                    turn, writer, llm, self.context.tools, self.context.backends
                )

        task = await self._interruptible(generate())
        if task.cancelled():
            await writer.close()
            state.spend.merge(llm.take_spend())
            return self._interrupted() or CANCELLED
        error = task.exception()
        if isinstance(error, BudgetExhausted):
            await writer.flush()
            state.spend.merge(llm.take_spend())
            return BUDGET
        if error is not None:
            await writer.close()
            raise error
        line = task.result()
        await writer.flush()
        spend = llm.take_spend()
        sentiment = await self._sentiment(line.text)
        message = await self._store_agent_line(number, speaker, line, sentiment, spend)
        if message.author == speaker.participant:
            reason = self._apply(message, spend)
            if reason is None and sim.model_selects:
                reason = await self._choose_next(speaker, llm)
        else:
            # A late human line took this number first: it is the turn; this line is dropped.
            state.spend.merge(spend)
            reason = self._apply(message)
        self._mark = await writer.emit(pb.ConversationEvent(usage=state.spend.usage()))
        await self.save()
        return reason

    async def _choose_next(self, speaker: Speaker, llm: RunModelCaller) -> str | None:
        history = await self._lines()
        task = await self._interruptible(
            choose_next(
                self.sim, speaker, history, llm, self.context.settings.simulation_turn_chars
            )
        )
        self.state.spend.merge(llm.take_spend())
        if task.cancelled():
            return self._interrupted() or CANCELLED
        error = task.exception()
        if isinstance(error, BudgetExhausted):
            return BUDGET
        if error is not None:
            raise error
        chosen = task.result()
        if chosen is not None:
            self.sim.next_agent = chosen
        return None

    async def _sentiment(self, text: str) -> common_pb2.Sentiment:
        return await sentiment_of(self.context.backends.generation, text)

    async def _store_agent_line(
        self,
        number: int,
        speaker: Speaker,
        line: AgentLine,
        sentiment: common_pb2.Sentiment,
        spend: Spend,
    ) -> persistence_pb2.Message:
        metadata = struct_pb2.Struct()
        metadata.update(
            {
                "mode": MODE,
                "run": self.state.run_id,
                "turn": number,
                "speaker": speaker.participant,
                "human": False,
                "agent": speaker.agent,
                "model": line.model,
                "generation_ms": spend.generation_ms,
                "cost": spend.cost,
                "keyword_hits": termination.keyword_hits(line.text, self.sim.limits.stop_keywords),
                "passages": line.passages,
                "tool_calls": [
                    json_format.MessageToDict(call.event(), preserving_proto_field_name=True)
                    for call in line.tool_calls
                ],
                "started": self.sim.turn_started_time,
            }
        )
        return await self.persistence.create_message(
            self.state.conversation,
            persistence_pb2.Message(
                role=common_pb2.ROLE_ASSISTANT,
                author=speaker.participant,
                text=line.text,
                citations=line.citations,
                usage=spend.usage(),
                sentiment=sentiment,
                metadata=metadata,
            ),
            request_id=request_id(self.state.run_id, number),
        )

    def _apply(self, message: persistence_pb2.Message, spend: Spend | None = None) -> str | None:
        """Turn `message` is done: the count, the spend and the order move on; the reason to
        end now, when its termination says so."""
        state, sim = self.state, self.sim
        metadata = json_format.MessageToDict(message.metadata)
        human = bool(metadata.get("human", False))
        state.turns = int(metadata.get("turn", state.turns + 1))
        state.turn_started_event = 0
        if spend is not None:
            state.spend.merge(spend)
        elif not human:
            state.spend.add(
                str(metadata.get("model", "")),
                message.usage,
                float(metadata.get("cost", 0.0)),
                float(metadata.get("generation_ms", 0.0)),
            )
        sim.advance_after(message.author)
        sim.turn_started_time = ""
        self._mark = max(self._mark, int(message.event_sequence))
        if human and metadata.get("end_conversation"):
            self.ending = termination.HUMAN_ENDED
            return self.ending
        hits = metadata.get("keyword_hits", [])
        progress = termination.Progress(
            keyword_hits=[str(h) for h in hits] if isinstance(hits, list) else [],
            sentiment=message.sentiment.score if message.HasField("sentiment") else None,
            agent_turns=sim.agent_turns,
            elapsed_s=time.time() - sim.started_at,
            tokens=state.spend.total_tokens,
        )
        self.ending = sim.termination(state.max_total_tokens).check(progress)
        return self.ending

    # The human's turn

    async def _human_turn(self) -> str | None:
        state, sim = self.state, self.sim
        human = sim.human
        assert human is not None
        number = state.turns + 1
        if sim.awaiting_turn != number:
            restarted, self._restarted = self._restarted, False
            # A submit may store the human's line as soon as the human is next: it is looked
            # for from here on.
            sim.turn_from = self._mark
            writer = self._writer(number)
            sim.turn_started_time = now_rfc3339()
            started = await writer.emit(
                pb.ConversationEvent(
                    turn_started=pb.TurnStarted(
                        speaker=human.id, turn=number, human=True, restarted=restarted
                    )
                )
            )
            deadline = time.time() + sim.human_timeout_s
            stamp = timestamp_pb2.Timestamp()
            stamp.FromNanoseconds(int(deadline * 1e9))
            awaiting = await writer.emit(
                pb.ConversationEvent(
                    awaiting_input=pb.AwaitingInput(
                        speaker=human.id,
                        turn=number,
                        prompt=f"Turn {number}: your line as {human.label()}.",
                        deadline=stamp,
                    )
                )
            )
            state.turn_started_event = started
            sim.awaiting_turn, sim.awaiting_deadline, sim.awaiting_event = (
                number,
                deadline,
                awaiting,
            )
            await self.save()
        try:
            message = await self._wait_for_human(number)
        except _Interrupted:
            return self._interrupted() or CANCELLED
        if message is None:
            message = await self._find_turn(number, sim.turn_from)
        if message is not None:
            reason = self._apply(message)
            await self.save()
            return reason
        if self._timed_out:
            return termination.TIMEOUT
        if sim.end_on_human_timeout:
            return termination.HUMAN_TIMEOUT
        # Skipped: no message, no number; the agents go on.
        sim.advance_after(human.id)
        state.turn_started_event = 0
        sim.turn_started_time = ""
        self._mark = max(self._mark, sim.awaiting_event)
        await self.save()
        return None

    async def _wait_for_human(self, number: int) -> persistence_pb2.Message | None:
        """The human's message of turn `number` once stored (by a submit to any replica); None
        at the deadline. _Interrupted on a cancel, an end or the run's timeout."""
        if self._interrupted() is not None:
            raise _Interrupted()
        wait_s = self.sim.awaiting_deadline - time.time()
        left = self._time_left()
        # The run's own timeout comes first.
        run_bound = left is not None and left < wait_s
        if left is not None and run_bound:
            wait_s = left
        if wait_s <= 0:
            self._timed_out = run_bound
            return None
        self._wake.clear()
        if self._interrupted() is not None:
            raise _Interrupted()
        stored = asyncio.create_task(self._next_turn_message(number, self.sim.turn_from))
        woken = asyncio.create_task(self._wake.wait())
        polled = asyncio.create_task(self._poll_for_end())
        tasks = {stored, woken, polled}
        try:
            done, _ = await asyncio.wait(tasks, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if stored in done:
            return stored.result()
        if polled in done and polled.exception() is not None:
            raise polled.exception()  # type: ignore[misc]
        if done:
            raise _Interrupted()
        self._timed_out = run_bound
        return None

    async def _next_turn_message(self, number: int, after: int) -> persistence_pb2.Message:
        subscription = self.persistence.subscribe_events(
            self.state.conversation, after_sequence=after
        )
        try:
            async for entry in subscription:
                if (
                    entry.type == events.MESSAGE_CREATED
                    and entry.HasField("message")
                    and is_turn(entry.message, self.state.run_id, number)
                ):
                    return entry.message
        finally:
            await subscription.aclose()
        raise _Interrupted()

    async def _find_turn(self, number: int, after: int) -> persistence_pb2.Message | None:
        async for entry in self.persistence.list_events(
            self.state.conversation, after_sequence=after
        ):
            if (
                entry.type == events.MESSAGE_CREATED
                and entry.HasField("message")
                and is_turn(entry.message, self.state.run_id, number)
            ):
                return entry.message
        return None

    async def _poll_for_end(self) -> None:
        """Returns when the checkpoint says the human ended the run or a cancel was asked (a
        submit or cancel handled by another replica)."""
        while True:
            await asyncio.sleep(END_POLL_S)
            remote = await self.context.store.load(self.state.conversation)
            if remote is None or remote.state.run_id != self.state.run_id:
                raise LostOwnership()
            if remote.state.simulation.get("end_requested"):
                self.sim.end_requested = True
                return
            if remote.state.cancel_requested:
                self.request_cancel(remote.state.cancel_reason)
                return

    # Resuming

    async def _resume_from_log(self) -> bool:
        state, sim = self.state, self.sim
        number = state.turns + 1
        awaiting: pb.ConversationEvent | None = None
        started = False
        reason: str | None = None
        async for entry in self.persistence.list_events(
            state.conversation, after_sequence=state.start_after
        ):
            event = events.from_log(entry, state.conversation)
            if event is None:
                continue
            if awaiting is None:
                self._mark = int(event.event_id)
            if events.is_terminal(event):
                state.status = event.done.reason if event.HasField("done") else FAILED
                state.done_event_id = int(event.event_id)
                await self.save()
                await self._end_conversation(state.status)
                await self._close(int(event.event_id))
                return True
            kind = event.WhichOneof("kind")
            if (
                entry.type == events.MESSAGE_CREATED
                and entry.HasField("message")
                and is_turn(entry.message, state.run_id, number)
            ):
                reason = self._apply(entry.message) or reason
                number += 1
                awaiting, started = None, False
            elif kind == "turn_started" and event.turn_started.turn == number:
                started = True
                if not event.turn_started.human:
                    awaiting = None
            elif kind == "awaiting_input" and event.awaiting_input.turn == number:
                awaiting = event
        if awaiting is not None and sim.human is not None and sim.awaiting_turn != number:
            sim.awaiting_turn = number
            sim.awaiting_deadline = awaiting.awaiting_input.deadline.ToNanoseconds() / 1e9
            sim.awaiting_event = int(awaiting.event_id)
            sim.turn_from = self._mark
        self._restarted = started and awaiting is None
        self._resume_reason = reason
        await self.save()
        return False

    # The end

    async def _finish(self, reason: str) -> bool:
        state = self.state
        state.status = reason
        if reason == CANCELLED:
            state.cancel_reason = self._cancel_reason or ""
        self.sim.awaiting_turn = 0
        await self.save()
        conversation = await self._record_outcome(reason)
        figures = await self._figures(conversation)
        writer = events.EventWriter(
            self.persistence, state.conversation, f"{state.run_id}.{state.epoch}.done", 0.0
        )
        spend = state.spend
        done = pb.Done(
            reason=reason,
            usage=spend.usage(),
            turns=state.turns,
            cost=spend.cost,
            metrics=figures,
        )
        event_id = await writer.emit(pb.ConversationEvent(done=done))
        state.done_event_id = event_id
        await self.save()
        # Whoever waits for the end (a cancel, the human's end) has it now; the status follows.
        await self._close(event_id)
        await self._end_conversation(reason)
        return True

    async def _figures(
        self, conversation: persistence_pb2.Conversation
    ) -> pb.ConversationMetrics | None:
        """The conversation's figures as GetConversationMetrics gives them; None (and no
        figures in `done`) past the messages it reads, as GetConversationMetrics refuses."""
        try:
            messages = [m async for m in metrics.bounded_messages(self.persistence, conversation)]
        except metrics.TooManyMessages:
            return None
        return await asyncio.to_thread(metrics.conversation_metrics, conversation, messages)

    async def _fail(self, error: BaseException) -> None:
        with contextlib.suppress(Exception):
            await self._record_outcome("error")
        await super()._fail(error)
        with contextlib.suppress(Exception):
            await self._end_conversation(FAILED)

    async def _record_outcome(self, reason: str) -> persistence_pb2.Conversation:
        """The conversation's tags and metadata say how it ended (before `done` goes out)."""
        conversation = await self.persistence.get_conversation(self.state.conversation)
        tag = f"outcome:{reason}"
        metadata = json_format.MessageToDict(conversation.metadata)
        if tag in conversation.tags and metadata.get("outcome") == reason:
            return conversation
        metadata["outcome"] = reason
        metadata["end_time"] = now_rfc3339()
        update = persistence_pb2.Conversation(
            name=conversation.name, tags=list(dict.fromkeys([*conversation.tags, tag]))
        )
        update.metadata.update(metadata)
        return await self.persistence.update_conversation(update, ["tags", "metadata"])

    async def _end_conversation(self, reason: str) -> None:
        """The conversation's status once its `done` is written (a finished conversation takes
        no more events)."""
        status = {
            CANCELLED: persistence_pb2.CONVERSATION_STATUS_CANCELLED,
            FAILED: persistence_pb2.CONVERSATION_STATUS_FAILED,
        }.get(reason, persistence_pb2.CONVERSATION_STATUS_COMPLETED)
        try:
            await self.persistence.update_conversation(
                persistence_pb2.Conversation(name=self.state.conversation, status=status),
                ["status"],
            )
        except Exception as error:  # already finished, or persistence away: the log holds it
            log.warning("could not record the simulation's status: %s", error)
