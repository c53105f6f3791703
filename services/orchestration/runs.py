"""Runs: checkpointed state machines whose events go to the conversation's event log.

A run answers the pending human turns of one conversation, one at a time, and ends with
`done`. Its state is checkpointed (run_state) after every step; this process holds a lease on
each run it owns (leases) and takes over the runs whose owner's lease lapsed. Watching a run is
reading the log (events), so it does not matter which process runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from google.protobuf import json_format, struct_pb2

from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2
from callisto.errors import Aborted, CallistoError
from callisto.errors import NotFound as SdkNotFound
from callisto.services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from callisto.services.common.server import Runtime
from callisto.services.common.tenancy import bind_tenant, current_tenant, reset_tenant
from callisto.services.common.validation import Violations
from callisto.services.orchestration import assistant, events
from callisto.services.orchestration.agents import AgentStore, revision_name
from callisto.services.orchestration.approvals import ApprovalStore
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.budget import PriceTable
from callisto.services.orchestration.leases import CANCELS, Leases, RunKey, parse_cancel
from callisto.services.orchestration.plans import validate_plan
from callisto.services.orchestration.run_loop import (
    CAS_ATTEMPTS,
    AnswerTurn,
    Run,
    RunContext,
    Toolbox,
)
from callisto.services.orchestration.run_state import (
    Checkpoint,
    PendingTurn,
    RunState,
    RunStore,
)
from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.simulation import (
    SimulationRun,
    conversation_for,
    human_message,
    is_turn,
    request_id,
    sentiment_of,
    setup,
)
from callisto.services.orchestration.simulation_state import Simulation, Speaker, slug
from callisto.services.orchestration.tenant_budget import TenantBudgets, parse_overrides
from callisto.services.orchestration.tools.registry import ToolRegistry
from callisto.services.orchestration.workflow import (
    REVIEWER,
    Narrow,
    Publisher,
    WorkflowRun,
    decided_event,
    participant_id,
)
from callisto.services.orchestration.workflow_state import Workflow

log = logging.getLogger("callisto.orchestration.runs")

HUMAN = "user"
# How long a cancel waits for another replica to end the run before taking it over.
REMOTE_CANCEL_WAIT_S = 2.0


class RunManager:
    """Starts, watches, cancels and resumes the runs of this process."""

    def __init__(
        self,
        runtime: Runtime[OrchestrationSettings],
        backends: Backends,
        agents: AgentStore,
        tools: ToolRegistry,
        *,
        answer: AnswerTurn = assistant.answer_turn,
        toolbox: Toolbox | None = None,
        publisher: Publisher | None = None,
        narrow: Narrow | None = None,
    ) -> None:
        self._runtime = runtime
        self._backends = backends
        self._agents = agents
        self._tools = tools
        self._answer = answer
        settings = runtime.settings
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leases = Leases(runtime.auth_redis, self.owner, settings.run_lease_s)
        self.store = RunStore(backends.persistence)
        self.prices = PriceTable.parse(settings.model_prices)
        self.approvals = ApprovalStore(backends.persistence)
        self.daily = TenantBudgets(
            runtime.auth_redis,
            settings.tenant_daily_tokens,
            parse_overrides(settings.tenant_daily_token_overrides),
        )
        # The tools of the bound tenant (the built-ins and its HTTP tools), where run events
        # go out to its webhooks, and tool schemas narrowed to what it may name.
        self.toolbox: Toolbox = toolbox or self._builtin_tools
        self.publisher = publisher
        self.narrow = narrow
        self._context = RunContext(
            settings=settings,
            backends=backends,
            agents=agents,
            tools=tools,
            answer=answer,
            store=self.store,
            prices=self.prices,
            leases=self.leases,
            turn_slots=asyncio.Semaphore(max(1, settings.simulation_max_concurrent_turns)),
            step_slots=asyncio.Semaphore(max(1, settings.workflow_max_concurrent_steps)),
            daily=self.daily,
            toolbox=self.toolbox,
        )
        self._runs: dict[RunKey, Run] = {}
        self._background: list[asyncio.Task[None]] = []

    # Lifecycle

    async def start(self) -> None:
        """Takes over the unfinished runs whose owner is gone (after a restart)."""
        try:
            await self._take_over()
        except (CallistoError, OSError, ConnectionError) as error:
            log.warning("could not look for runs to take over", exc_info=error)
        self._background = [
            asyncio.create_task(
                self._every(self.settings.run_takeover_interval_s, self._take_over)
            ),
            asyncio.create_task(self._every(self.settings.run_lease_s / 3, self._renew)),
            asyncio.create_task(self._listen_for_cancels()),
        ]

    async def stop(self) -> None:
        """Releases this process's runs at shutdown (they resume elsewhere or on restart)."""
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        runs = list(self._runs.values())
        await asyncio.gather(*(run.abandon() for run in runs), return_exceptions=True)
        for run in runs:
            with contextlib.suppress(Exception):
                await self.leases.release(run.key)

    # What the RPCs do

    async def begin(self, start: pb.StartConversation, model_extras: str = "") -> tuple[str, int]:
        """Starts a run (validated input); returns its conversation and the event id its
        stream follows (the stored prompt's)."""
        await self.daily.check(current_tenant())
        if start.mode == pb.CONVERSATION_MODE_SIMULATION:
            return await self._begin_simulation(start, model_extras)
        if start.mode == pb.CONVERSATION_MODE_WORKFLOW:
            return await self._begin_workflow(start, model_extras)
        try:
            agent = await self._agents.get(start.agents[0])
        except (NotFound, SdkNotFound):
            raise InvalidArgument([FieldViolation("start.agents[0]", "no such agent")]) from None
        human = HUMAN
        run_id = uuid.uuid4().hex
        persistence = self._backends.persistence
        previous: Checkpoint | None = None
        if start.conversation:
            conversation = await persistence.get_conversation(start.conversation)
            previous = await self.store.load(conversation.name)
            if previous is not None and not previous.state.finished:
                raise _busy(conversation.name)
        else:
            conversation = await persistence.create_conversation(
                persistence_pb2.Conversation(
                    title=start.title,
                    tags=list(start.tags),
                    participants=[
                        persistence_pb2.Participant(
                            id=human, kind=persistence_pb2.PARTICIPANT_KIND_HUMAN
                        ),
                        persistence_pb2.Participant(
                            id=participant_id(agent.name),
                            display_name=agent.display_name,
                            kind=persistence_pb2.PARTICIPANT_KIND_AGENT,
                            role=agent.role,
                            company=agent.company,
                        ),
                    ],
                ),
                request_id=f"{run_id}.conversation",
            )
        state = RunState(
            run_id=run_id,
            tenant=current_tenant(),
            conversation=conversation.name,
            mode=pb.CONVERSATION_MODE_ASSISTANT,
            agent=revision_name(agent),
            speaker=participant_id(agent.name),
            human=human,
            max_iterations=start.max_iterations or 2,
            max_total_tokens=start.budget.max_total_tokens,
            pending=[PendingTurn(start.prompt, human, request_id=f"{run_id}.prompt")],
            start_after=conversation.last_sequence,
            owner=self.owner,
            model_extras=model_extras,
        )
        try:
            checkpoint = await self.store.claim(state, previous)
        except (Aborted, CallistoError) as error:
            if isinstance(error, Aborted) or error.code.name == "ALREADY_EXISTS":
                raise _busy(conversation.name) from None
            raise
        run = await self._launch(checkpoint, agent, restarted=False)
        # The prompt is stored before the call returns; the run's stream starts after it (the
        # caller knows its prompt; a re-attach from the start reads it as a `turn_ended`).
        await run.store_pending_messages()
        return conversation.name, state.pending[0].event_id if state.pending else 0

    async def watch(
        self, conversation: str, after_event_id: int, *, field: str = "after_event_id"
    ) -> AsyncIterator[pb.ConversationEvent]:
        """The run's events after `after_event_id`, up to its terminal one. A position past the
        end of the log is INVALID_ARGUMENT on `field`: no event could ever come after it, so
        such a watch would otherwise wait for nothing."""
        found = await self._backends.persistence.get_conversation(conversation)
        if after_event_id > found.last_sequence:
            raise InvalidArgument.field(
                field,
                f"is past the end of the conversation's log (its last event is "
                f"{found.last_sequence})",
            )
        checkpoint = await self.store.load(conversation)
        if checkpoint is None:
            return
        state = checkpoint.state
        end = state.done_event_id
        if state.finished and not end:
            # Its `done` is being written, or was and a takeover has yet to record it.
            end = await self._terminal_in_log(conversation, state.start_after)
        if end and after_event_id >= end:
            return  # nothing of the run is left to deliver
        async for event in events.watch(self._backends.persistence, conversation, after_event_id):
            yield event

    async def _terminal_in_log(self, conversation: str, after: int) -> int:
        async for entry in self._backends.persistence.list_events(
            conversation, after_sequence=after
        ):
            event = events.from_log(entry, conversation)
            if event is not None and events.is_terminal(event):
                return int(event.event_id)
        return 0

    async def submit(self, conversation: str, turn: pb.HumanTurn) -> int:
        """Stores a human turn and queues it on the conversation's run; with no run going,
        starts one with the last run's agent (or, for a conversation that never had a run,
        its agent participant's). Returns the turn's event id."""
        persistence = self._backends.persistence
        found = await persistence.get_conversation(conversation)
        checkpoint = await self.store.load(conversation)
        if checkpoint is not None and checkpoint.state.mode == pb.CONVERSATION_MODE_SIMULATION:
            return await self._submit_simulation(conversation, checkpoint, turn)
        if checkpoint is not None and checkpoint.state.mode == pb.CONVERSATION_MODE_WORKFLOW:
            return await self._submit_workflow(conversation, checkpoint, turn)
        if turn.end_conversation:
            raise InvalidArgument.field(
                "turn.end_conversation", "only a simulation's human can end its conversation"
            )
        if checkpoint is None or checkpoint.state.finished:
            await self.daily.check(current_tenant())  # the turn starts a new run
        agent = None if checkpoint is not None else await self._participant_agent(found)
        author = turn.author or (checkpoint.state.human if checkpoint else HUMAN)
        message = await persistence.create_message(
            conversation,
            persistence_pb2.Message(role=common_pb2.ROLE_USER, author=author, text=turn.text),
        )
        pending = PendingTurn(
            turn.text,
            author,
            event_id=message.event_sequence,
            message=message.name,
            request_id=f"submit.{message.event_sequence}",
        )
        key = RunKey(current_tenant(), conversation)
        for _ in range(CAS_ATTEMPTS):
            local = self._runs.get(key)
            if local is not None and await local.enqueue(pending):
                return int(message.event_sequence)
            checkpoint = await self.store.load(conversation)
            if checkpoint is None:
                assert agent is not None
                if await self._first_run(conversation, agent, pending):
                    return int(message.event_sequence)
                continue
            if checkpoint.state.finished:
                if await self._continue(checkpoint, pending):
                    return int(message.event_sequence)
                continue
            checkpoint.state.pending.append(pending)
            try:
                await self.store.save(checkpoint)
            except Aborted:
                continue
            return int(message.event_sequence)
        raise Unavailable("the run kept changing while the turn was queued; retry", retry_after=0.2)

    async def cancel(self, conversation: str, reason: str) -> int:
        """Ends the run with `done(cancelled)`; returns that event's id."""
        await self._backends.persistence.get_conversation(conversation)
        checkpoint = await self.store.load(conversation)
        if checkpoint is None or checkpoint.state.finished:
            raise FailedPrecondition(f"{conversation} has no run in progress to cancel")
        key = RunKey(current_tenant(), conversation)
        local = self._runs.get(key)
        if local is not None:
            return await local.cancel(reason)
        if await self.leases.holder(key) is not None:
            await self.leases.publish_cancel(key, reason)
            done = await self._wait_done(conversation, checkpoint.state.start_after)
            if done:
                return done
        # Nobody runs it: take it over just to end it.
        if not await self.leases.acquire(key):
            raise Unavailable("the run's owner did not answer the cancel; retry", retry_after=0.5)
        checkpoint = await self.store.load(conversation)
        if checkpoint is None or checkpoint.state.finished:
            await self.leases.release(key)
            raise FailedPrecondition(f"{conversation} has no run in progress to cancel")
        checkpoint.state.owner = self.owner
        checkpoint.state.epoch += 1
        await self.store.save(checkpoint)
        run = await self._launch(checkpoint, None, restarted=True, cancel_reason=reason)
        return await run.wait_finished()

    def check_agent(self, v: Violations, agent: pb.Agent, field: str) -> None:
        """Adds the violations of an inline agent, checked as CreateAgent checks one."""
        if agent.name:
            v.add(f"{field}.name", "must be empty: an inline agent is not stored")
        self._agents.check(v, self._agents.writable(agent), field)

    # Workflows

    async def _builtin_tools(self) -> ToolRegistry:
        return self._tools

    async def _begin_workflow(
        self, start: pb.StartConversation, model_extras: str
    ) -> tuple[str, int]:
        """A given plan is validated whole (every problem at its path) with its agents pinned
        at their current revisions; a task alone is planned by the run over `start.agents` (or
        every agent of the tenant)."""
        tools = await self.toolbox()
        max_parallel = start.workflow.max_parallel_steps or 4
        cast: list[pb.Agent] = []
        if start.plan.steps:
            stages = await validate_plan(
                start.plan,
                "start.plan",
                limit=self.settings.max_prompt_chars,
                known_tools=tools.names(),
                get_agent=self._agents.get,
            )
            agents: dict[str, pb.Agent] = {}
            for step in start.plan.steps:
                if step.agent not in agents:
                    agents[step.agent] = await self._agents.get(step.agent)
            workflow = Workflow(task=start.prompt, source="given", max_parallel=max_parallel)
            workflow.set_plan(start.plan, stages)
            for step in start.plan.steps:
                workflow.steps[step.id].agent = revision_name(agents[step.agent])
            cast = list(agents.values())
        else:
            v = Violations()
            for index, name in enumerate(start.agents):
                try:
                    cast.append(await self._agents.get(name))
                except (NotFound, SdkNotFound):
                    v.add(f"start.agents[{index}]", "no such agent")
            v.raise_if_any()
            if not cast:
                cast, _ = await self._agents.list_agents(50, "")
            if not cast:
                raise FailedPrecondition(
                    "the tenant has no agents to plan the task over; create agents first "
                    "(CreateAgent) or give a plan"
                )
            workflow = Workflow(
                task=start.prompt,
                source="planner",
                max_parallel=max_parallel,
                candidates=[revision_name(agent) for agent in cast],
            )
        run_id = uuid.uuid4().hex
        participants = [
            persistence_pb2.Participant(
                id=REVIEWER, display_name="Reviewer", kind=persistence_pb2.PARTICIPANT_KIND_HUMAN
            )
        ]
        participants.extend(
            persistence_pb2.Participant(
                id=participant_id(agent.name),
                display_name=agent.display_name,
                kind=persistence_pb2.PARTICIPANT_KIND_AGENT,
                role=agent.role,
                company=agent.company,
            )
            for agent in cast
        )
        title = start.title or (start.prompt or f"workflow of {len(start.plan.steps)} steps")
        conversation = await self._backends.persistence.create_conversation(
            persistence_pb2.Conversation(
                title=title[:256], tags=list(start.tags), participants=participants
            ),
            request_id=f"{run_id}.conversation",
        )
        state = RunState(
            run_id=run_id,
            tenant=current_tenant(),
            conversation=conversation.name,
            mode=pb.CONVERSATION_MODE_WORKFLOW,
            agent=revision_name(cast[0]),
            speaker=participant_id(cast[0].name),
            human=REVIEWER,
            max_iterations=0,
            max_total_tokens=start.budget.max_total_tokens,
            start_after=conversation.last_sequence,
            owner=self.owner,
            model_extras=model_extras,
            workflow=workflow.to_json(),
        )
        checkpoint = await self.store.claim(state, None)
        await self._launch(checkpoint, None, restarted=False)
        return conversation.name, state.start_after

    async def _submit_workflow(
        self, conversation: str, checkpoint: Checkpoint, turn: pb.HumanTurn
    ) -> int:
        """The answer to the planner's question (the only turn a workflow takes)."""
        state = checkpoint.state
        if turn.end_conversation:
            raise InvalidArgument.field(
                "turn.end_conversation", "only a simulation's human can end its conversation"
            )
        if state.finished:
            raise FailedPrecondition(f"{conversation}'s workflow has ended ({state.status})")
        key = RunKey(current_tenant(), conversation)
        local = self._runs.get(key)
        workflow = (
            local.wf
            if isinstance(local, WorkflowRun) and local.state.run_id == state.run_id
            else Workflow.from_json(state.workflow)
        )
        asking = workflow.asking
        if asking is None and workflow.clarifications:
            # A retried submit of the answer the planner already took: the same answer again.
            number = len(workflow.clarifications)
            async for message in self._backends.persistence.list_messages(conversation):
                fields = message.metadata.fields
                if (
                    fields.get("run") is not None
                    and fields["run"].string_value == state.run_id
                    and fields.get("clarify") is not None
                    and fields["clarify"].number_value == number
                    and message.text == turn.text
                ):
                    return int(message.event_sequence)
        if asking is None:
            raise FailedPrecondition(
                f"{conversation}'s workflow is not waiting for an answer; a pending approval "
                "is answered with an approval (SubmitInput's `approval`)"
            )
        metadata = struct_pb2.Struct()
        metadata.update({"run": state.run_id, "clarify": asking.round})
        message = await self._backends.persistence.create_message(
            conversation,
            persistence_pb2.Message(
                role=common_pb2.ROLE_USER,
                author=turn.author or REVIEWER,
                text=turn.text,
                metadata=metadata,
            ),
            request_id=f"{state.run_id}.clarify.{asking.round}",
        )
        if message.text != turn.text:
            raise FailedPrecondition(
                f"the planner's question {asking.round} of {conversation} was already answered"
            )
        if isinstance(local, WorkflowRun):
            local.notify()
        return int(message.event_sequence)

    async def decide(self, conversation: str, answer: pb.Approval) -> int:
        """A reviewer's decision on a pending approval of the conversation's workflow;
        returns the id of the `approval_decided` event that records it."""
        await self._backends.persistence.get_conversation(conversation)
        record = await self.approvals.decide(conversation, answer)
        event_id = await decided_event(self._backends.persistence, record)
        local = self._runs.get(RunKey(current_tenant(), conversation))
        if isinstance(local, WorkflowRun):
            local.notify()
        if self.publisher is not None:
            try:
                await self.publisher.publish(
                    "approval.decided",
                    json_format.MessageToDict(record.approval, preserving_proto_field_name=True),
                    idempotency_key=f"{record.id}.decided",
                    conversation=conversation,
                )
            except Exception as error:  # a webhook never fails the decision
                log.warning("could not publish approval.decided: %s", error)
        return event_id

    # Simulations

    async def _begin_simulation(
        self, start: pb.StartConversation, model_extras: str
    ) -> tuple[str, int]:
        v = Violations()
        taken: set[str] = set()
        speakers: list[Speaker] = []
        for index, name in enumerate(start.agents):
            try:
                agent = await self._agents.get(name)
            except (NotFound, SdkNotFound):
                v.add(f"start.agents[{index}]", "no such agent")
                continue
            participant = slug(participant_id(agent.name), taken)
            speakers.append(Speaker(participant, revision_name(agent), agent))
        for inline in start.inline_agents:
            spec = self._agents.writable(inline)
            speakers.append(Speaker(slug(spec.display_name, taken), "", spec))
        human = start.simulation.human.id or HUMAN
        if start.human_in_the_loop and human in taken:
            v.add("start.simulation.human.id", f"{human!r} is the participant id of an agent")
        v.raise_if_any()
        simulation = setup(
            start,
            speakers,
            human_timeout_s=self.settings.simulation_human_timeout_s,
            default_turn_tokens=self.settings.simulation_turn_max_tokens,
        )
        run_id = uuid.uuid4().hex
        conversation = await self._backends.persistence.create_conversation(
            conversation_for(simulation, start, run_id), request_id=f"{run_id}.conversation"
        )
        state = RunState(
            run_id=run_id,
            tenant=current_tenant(),
            conversation=conversation.name,
            mode=pb.CONVERSATION_MODE_SIMULATION,
            agent=speakers[0].agent,
            speaker=speakers[0].participant,
            human=simulation.human.id if simulation.human is not None else "",
            max_iterations=0,
            max_total_tokens=start.budget.max_total_tokens,
            start_after=conversation.last_sequence,
            owner=self.owner,
            model_extras=model_extras,
            simulation=simulation.to_json(),
        )
        checkpoint = await self.store.claim(state, None)
        await self._launch(checkpoint, None, restarted=False)
        return conversation.name, state.start_after

    async def _submit_simulation(
        self, conversation: str, checkpoint: Checkpoint, turn: pb.HumanTurn
    ) -> int:
        """The human's turn of a simulation: stored as turn N when the run awaits it (once,
        whoever retries), or the end of the conversation."""
        state = checkpoint.state
        if state.finished:
            raise FailedPrecondition(f"{conversation}'s simulation has ended ({state.status})")
        key = RunKey(current_tenant(), conversation)
        local = self._runs.get(key)
        if isinstance(local, SimulationRun) and local.state.run_id == state.run_id:
            simulation, state = local.sim, local.state
        else:
            local = None
            simulation = Simulation.from_json(state.simulation)
        human = simulation.human
        if human is None:
            raise FailedPrecondition(f"{conversation}'s simulation has no human participant")
        if turn.author and turn.author != human.id:
            raise InvalidArgument.field(
                "turn.author", f"the human of this simulation is {human.id!r}"
            )
        if state.finished or (local is not None and local.ending is not None):
            raise FailedPrecondition(f"{conversation}'s simulation is ending")
        number = state.turns + 1
        humans_turn = simulation.awaiting_turn == number or (
            simulation.awaiting_turn == 0 and simulation.human_is_next()
        )
        if humans_turn and turn.text.strip():
            sentiment = await sentiment_of(self._backends.generation, turn.text)
            message = await self._backends.persistence.create_message(
                conversation,
                human_message(
                    state, simulation, number, turn.text, sentiment, end=turn.end_conversation
                ),
                request_id=request_id(state.run_id, number),
            )
            if message.author != human.id:
                raise FailedPrecondition(
                    f"turn {number} of {conversation} went to {message.author} first"
                )
            if message.text != turn.text:
                # Another submit's line is the turn (a retry of the same line gets its id).
                raise FailedPrecondition(
                    f"turn {number} of {conversation} already holds another line of {human.id}"
                )
            return int(message.event_sequence)
        if not turn.end_conversation and state.turns > 0:
            # A retried submit of the turn the run already took: the same answer again.
            last = await self._last_message(conversation)
            if (
                last is not None
                and is_turn(last, state.run_id, state.turns)
                and last.author == human.id
                and last.text == turn.text
            ):
                return int(last.event_sequence)
        if not turn.end_conversation or turn.text.strip():
            # A line can only be the human's turn; ending with one off the turn would lose it.
            speaker = simulation.next_speaker()
            ending = " (or end with no text to end now)" if turn.end_conversation else ""
            raise FailedPrecondition(
                f"it is {simulation.name_of(speaker)}'s turn ({speaker}, turn {number}), not "
                f"{human.id}'s: send a turn after the awaiting_input that asks for it{ending}"
            )
        if local is not None:
            local.request_end()
            return await local.wait_finished()
        return await self._end_remote(conversation)

    async def _last_message(self, conversation: str) -> persistence_pb2.Message | None:
        last = None
        async for message in self._backends.persistence.list_messages(conversation):
            last = message
        return last

    async def _end_remote(self, conversation: str) -> int:
        """Asks the replica running a simulation to end it (through its checkpoint)."""
        for _ in range(CAS_ATTEMPTS):
            checkpoint = await self.store.load(conversation)
            if checkpoint is None or checkpoint.state.finished:
                raise FailedPrecondition(f"{conversation} has no simulation in progress to end")
            checkpoint.state.simulation["end_requested"] = True
            try:
                await self.store.save(checkpoint)
            except Aborted:
                continue
            done = await self._wait_done(conversation, checkpoint.state.start_after)
            if done:
                return done
            raise Unavailable(
                "the simulation's owner has not ended it yet; it ends at its next step",
                retry_after=1.0,
            )
        raise Unavailable("the run kept changing while its end was asked; retry", retry_after=0.2)

    # Internals

    async def _participant_agent(self, conversation: persistence_pb2.Conversation) -> pb.Agent:
        """The agent a conversation without runs names among its participants."""
        for participant in conversation.participants:
            if participant.kind == persistence_pb2.PARTICIPANT_KIND_AGENT:
                with contextlib.suppress(NotFound, SdkNotFound, InvalidArgument):
                    return await self._agents.get(f"agents/{participant.id}")
        raise FailedPrecondition(
            f"{conversation.name} has no run and no agent among its participants to answer; "
            "start a run with RunConversation or Converse"
        )

    async def _first_run(self, conversation: str, agent: pb.Agent, pending: PendingTurn) -> bool:
        """The first run of a conversation, for a turn sent to it; False if another began."""
        state = RunState(
            run_id=uuid.uuid4().hex,
            tenant=current_tenant(),
            conversation=conversation,
            mode=pb.CONVERSATION_MODE_ASSISTANT,
            agent=revision_name(agent),
            speaker=participant_id(agent.name),
            human=pending.author,
            max_iterations=2,
            max_total_tokens=0,
            pending=[pending],
            start_after=pending.event_id - 1,
            owner=self.owner,
        )
        try:
            checkpoint = await self.store.claim(state, None)
        except CallistoError as error:
            if error.code.name in ("ALREADY_EXISTS", "ABORTED"):
                return False
            raise
        await self._launch(checkpoint, agent, restarted=False)
        return True

    async def _continue(self, previous: Checkpoint, pending: PendingTurn) -> bool:
        """A new run of a finished one's agent for a turn sent after it ended."""
        old = previous.state
        ending = self._runs.get(RunKey(old.tenant, old.conversation))
        if ending is not None and ending.task is not None and not ending.task.done():
            # The last run is writing its `done`: let it close (and give up its lease) first.
            await asyncio.wait({ending.task})
        run_id = uuid.uuid4().hex
        state = RunState(
            run_id=run_id,
            tenant=old.tenant,
            conversation=old.conversation,
            mode=old.mode,
            agent=old.agent,
            speaker=old.speaker,
            human=old.human,
            max_iterations=old.max_iterations,
            max_total_tokens=old.max_total_tokens,
            pending=[pending],
            start_after=pending.event_id - 1,
            owner=self.owner,
            model_extras=old.model_extras,
        )
        try:
            checkpoint = await self.store.claim(state, previous)
        except Aborted:
            return False
        await self._launch(checkpoint, None, restarted=False)
        return True

    async def _launch(
        self,
        checkpoint: Checkpoint,
        agent: pb.Agent | None,
        *,
        restarted: bool,
        cancel_reason: str | None = None,
    ) -> Run:
        key = RunKey(checkpoint.state.tenant, checkpoint.state.conversation)
        # The checkpoint names this process as the owner (written by compare-and-set), so
        # the lease is this process's whoever held it before.
        await self.leases.take(key)
        await self.leases.index(key, checkpoint.state.run_id)
        run: Run
        if checkpoint.state.mode == pb.CONVERSATION_MODE_SIMULATION:
            run = SimulationRun(
                self._context, key, checkpoint, restarted=restarted, cancel_reason=cancel_reason
            )
        elif checkpoint.state.mode == pb.CONVERSATION_MODE_WORKFLOW:
            run = WorkflowRun(
                self._context,
                key,
                checkpoint,
                restarted=restarted,
                cancel_reason=cancel_reason,
                approvals=self.approvals,
                publisher=self.publisher,
                narrow=self.narrow,
            )
        else:
            run = Run(
                self._context,
                key,
                checkpoint,
                agent,
                restarted=restarted,
                cancel_reason=cancel_reason,
            )
        self._runs[key] = run
        run.task = asyncio.create_task(run.main())
        run.task.add_done_callback(lambda _: self._forget(key, run))
        return run

    def _forget(self, key: RunKey, run: Run) -> None:
        if self._runs.get(key) is run:
            del self._runs[key]

    async def _wait_done(self, conversation: str, after: int) -> int:
        async def first_terminal() -> int:
            async for event in events.watch(self._backends.persistence, conversation, after):
                if events.is_terminal(event):
                    return int(event.event_id)
            return 0

        try:
            return await asyncio.wait_for(first_terminal(), REMOTE_CANCEL_WAIT_S)
        except TimeoutError:
            return 0

    async def _every(self, interval_s: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("background run upkeep failed", exc_info=error)

    async def _renew(self) -> None:
        runs = list(self._runs.items())
        if not runs:
            return
        held = await self.leases.renew_all([key for key, _ in runs])
        for (key, run), ok in zip(runs, held, strict=True):
            if not ok:
                log.warning("lost the lease of a run", extra={"fields": {"run": key.member()}})
                await run.abandon()

    async def _take_over(self) -> None:
        for key in await self.leases.unfinished():
            if key in self._runs or not await self.leases.acquire(key):
                continue
            token = bind_tenant(key.tenant)
            try:
                await self._take_over_one(key)
            except Exception as error:
                log.warning("could not take a run over", exc_info=error)
                await self.leases.release(key)
            finally:
                reset_tenant(token)

    async def _take_over_one(self, key: RunKey) -> None:
        checkpoint = await self.store.load(key.conversation)
        if checkpoint is None:
            await self.leases.forget(key)
            await self.leases.release(key)
            return
        state = checkpoint.state
        if state.finished and state.done_event_id:
            await self.leases.unindex(key, state.run_id)
            await self.leases.release(key)
            return
        state.owner = self.owner
        state.epoch += 1
        await self.store.save(checkpoint)
        log.info("taking a run over", extra={"fields": {"run": key.member()}})
        await self._launch(checkpoint, None, restarted=True)

    async def _listen_for_cancels(self) -> None:
        pubsub = self._runtime.auth_redis.pubsub()
        try:
            await pubsub.subscribe(CANCELS)
            while True:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except (OSError, ConnectionError) as error:
                    log.warning("cancel channel failed; resubscribing", exc_info=error)
                    await asyncio.sleep(1.0)
                    continue
                if message is None or message.get("type") != "message":
                    continue
                parsed = parse_cancel(message["data"])
                if parsed is None:
                    continue
                run = self._runs.get(parsed[0])
                if run is not None:
                    run.request_cancel(parsed[1])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    @property
    def stopping(self) -> bool:
        """Whether the process is shutting down (its streams end; its runs go on elsewhere)."""
        return self._runtime.stopping.is_set()


def _busy(conversation: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"{conversation} already has a run in progress; send turns with SubmitInput or Converse"
    )
