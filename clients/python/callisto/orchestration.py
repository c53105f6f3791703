"""`client.orchestration`: agents, tools, and conversation runs that stream and resume.

Messages are the `callisto.api.orchestration.v1.orchestration_pb2` ones. Agent arguments take a
name (`agents/a1`, `agents/a1@rev`) or a bare id (`a1`); conversations likewise
(`conversations/c1` or `c1`).

- Agents: `create_agent`, `get_agent`, `list_agents` (an async iterator over every page),
  `update_agent` (a new revision; `update_mask` names the fields), `list_agent_revisions`
  (newest first), `delete_agent`; `list_tools`, `suggest_agents`. Reads are retried on
  UNAVAILABLE / RetryInfo; creates, updates and deletes are not.
- `run(start)` (RunConversation) starts a run and is an async iterator of its
  `ConversationEvent`s up to the terminal `done` or `error` event (yielded, then the iteration
  ends). If the stream drops after the first event it re-attaches by itself from the last event
  id (StreamConversation): no gap, no duplicate. Stopping the iteration early cancels the call,
  and a cancelled RunConversation cancels its run (the contract); the service cannot tell a
  dropped connection from a cancel, so after a drop the re-attached events end in
  `done(cancelled)`. Watch with `converse()` (or `stream()`) for a run that must outlive its
  connection.
- `stream(conversation, after_event_id=0)` (StreamConversation) re-attaches to a run's events
  after an id, resuming itself after a dropped connection or a restarted service.
- `converse(start=... | attach=...)` opens a `Converse` session: `events()` iterates the events
  (re-attaching from the last event id when the stream drops), `send_turn(text)`,
  `approve(...)`, `cancel(reason)` act on the run, `close()` stops watching (the run goes on).
- `submit_turn` (with `end_conversation` a simulation's human ends it), `submit_approval`,
  `cancel` (CancelConversation) and `submit_feedback` are unary calls on a conversation by name.
- Workflows: `workflow_start(task, plan=...)` builds the `start`; `workflow_plan(mapping)`
  reads a plan from its JSON/YAML form; `validate_plan` dry-runs one; `list_approvals`,
  `get_approval` (with its audit history) and `answer_approval(approval, decision)` serve the
  people who approve steps.
- Simulations: `suggest_agents(scenario, participate=...)` gives agents to run inline;
  `simulation_start(scenario, agents=..., inline_agents=..., ...)` builds the `start` that
  `run()` or `converse()` takes.
- Read-outs: `get_conversation_metrics` (turns, sentiment trend, tokens, keyword hits, outcome)
  and `download_conversation` (Markdown, PDF or JSON as a `google.api.HttpBody`).

Every stream object keeps what it saw: `conversation`, `last_event_id`, `resumes`, `text` (the
tokens of the latest turn; a turn restarted after a take-over starts over), `citations`,
`tool_calls` and the terminal `done` / `error`.
"""

# `timeout` is a gRPC deadline sent to the server (and spent across retries), not a local
# cancel scope, so these functions take it the way grpc stubs do.
# ruff: noqa: ASYNC109
from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeAlias

import grpc
from google.api import httpbody_pb2
from google.protobuf import field_mask_pb2, json_format
from google.rpc import status_pb2

from callisto._facade import Facade, Metadata
from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.api.persistence.v1 import persistence_pb2
from callisto.artifacts import ArtifactsMixin
from callisto.errors import CallistoError, from_rpc_error
from callisto.persistence import conversation_name
from callisto.retry import RetryPolicy
from callisto.streams import RESUME_POLICY, StreamCall, paged, resume_stream
from callisto.webhooks import WebhooksMixin

# What grpc.aio raises on a write to a call that ended (or half-closed, or broke).
_WRITE_REFUSED = (grpc.RpcError, grpc.aio.UsageError, asyncio.InvalidStateError, RuntimeError)

# Event kinds that end a run.
TERMINAL_KINDS = frozenset({"done", "error"})

Rating: TypeAlias = persistence_pb2.FeedbackRating.ValueType
UP: Rating = persistence_pb2.FEEDBACK_RATING_UP
DOWN: Rating = persistence_pb2.FEEDBACK_RATING_DOWN


def agent_name(agent: str) -> str:
    """`agents/{id}` (or `agents/{id}@{revision}`) from a name or a bare id."""
    return agent if agent.startswith("agents/") else f"agents/{agent}"


def assistant_start(
    agent: str,
    prompt: str,
    *,
    conversation: str = "",
    title: str = "",
    tags: Sequence[str] = (),
    max_iterations: int = 0,
    max_total_tokens: int = 0,
) -> pb.StartConversation:
    """A `StartConversation` of one assistant answering `prompt` (a new conversation, or a new
    turn of `conversation`)."""
    return pb.StartConversation(
        conversation=conversation_name(conversation) if conversation else "",
        title=title,
        mode=pb.CONVERSATION_MODE_ASSISTANT,
        agents=[agent_name(agent)],
        prompt=prompt,
        tags=list(tags),
        max_iterations=max_iterations,
        budget=pb.Budget(max_total_tokens=max_total_tokens),
    )


def simulation_start(
    scenario: str,
    *,
    agents: Sequence[str] = (),
    inline_agents: Sequence[pb.Agent] = (),
    max_turns: int = 0,
    stop_keywords: Sequence[str] = (),
    min_sentiment: float | None = None,
    max_sentiment: float | None = None,
    timeout_s: float | None = None,
    max_total_tokens: int = 0,
    human: pb.HumanParticipant | None = None,
    human_turn_timeout_s: float | None = None,
    end_on_human_timeout: bool = False,
    speaker_selection: pb.SpeakerSelection.ValueType = pb.SPEAKER_SELECTION_UNSPECIFIED,
    max_turn_tokens: int = 0,
    title: str = "",
    tags: Sequence[str] = (),
) -> pb.StartConversation:
    """A `StartConversation` of a simulation: the stored `agents` and the `inline_agents` (as
    SuggestAgents returns them) take turns over `scenario`; with `human`, a person takes a turn
    every round."""
    termination = pb.TerminationPolicy(max_turns=max_turns, stop_keywords=list(stop_keywords))
    if min_sentiment is not None:
        termination.min_sentiment = min_sentiment
    if max_sentiment is not None:
        termination.max_sentiment = max_sentiment
    if timeout_s is not None:
        termination.timeout.FromTimedelta(timedelta(seconds=timeout_s))
    options = pb.SimulationOptions(
        speaker_selection=speaker_selection,
        on_human_timeout=(
            pb.HUMAN_TIMEOUT_ACTION_END if end_on_human_timeout else pb.HUMAN_TIMEOUT_ACTION_SKIP
        ),
        max_turn_tokens=max_turn_tokens,
    )
    if human is not None:
        options.human.CopyFrom(human)
    if human_turn_timeout_s is not None:
        options.human_turn_timeout.FromTimedelta(timedelta(seconds=human_turn_timeout_s))
    return pb.StartConversation(
        title=title,
        mode=pb.CONVERSATION_MODE_SIMULATION,
        agents=[agent_name(agent) for agent in agents],
        inline_agents=list(inline_agents),
        prompt=scenario,
        termination=termination,
        budget=pb.Budget(max_total_tokens=max_total_tokens),
        human_in_the_loop=human is not None,
        simulation=options,
        tags=list(tags),
    )


def workflow_plan(data: Any) -> pb.WorkflowPlan:
    """A `WorkflowPlan` from its JSON/YAML form (`{"steps": [{"id": ..., "agent": ...,
    "instruction": ..., "depends_on": [...], "timeout": "30s", ...}]}`); ValueError, naming the
    field, for anything that is not one."""
    plan = pb.WorkflowPlan()
    try:
        json_format.ParseDict(data, plan)
    except json_format.ParseError as error:
        raise ValueError(f"not a workflow plan: {error}") from None
    return plan


def workflow_start(
    task: str = "",
    *,
    plan: pb.WorkflowPlan | None = None,
    agents: Sequence[str] = (),
    max_parallel_steps: int = 0,
    max_total_tokens: int = 0,
    title: str = "",
    tags: Sequence[str] = (),
) -> pb.StartConversation:
    """A `StartConversation` of a workflow: the given `plan`, or one the planner makes of
    `task` over `agents` (every agent of the tenant when empty)."""
    start = pb.StartConversation(
        title=title,
        mode=pb.CONVERSATION_MODE_WORKFLOW,
        agents=[agent_name(agent) for agent in agents],
        prompt=task,
        budget=pb.Budget(max_total_tokens=max_total_tokens),
        workflow=pb.WorkflowOptions(max_parallel_steps=max_parallel_steps),
        tags=list(tags),
    )
    if plan is not None:
        start.plan.CopyFrom(plan)
    return start


def approval_name(approval: str) -> str:
    """`approvals/{id}` from a name or a bare id."""
    return approval if approval.startswith("approvals/") else f"approvals/{approval}"


def _event_id(event: pb.ConversationEvent) -> int | None:
    # An event always carries its log sequence; 0 would hold no place in the log.
    return event.event_id or None


class _Watched:
    """What a stream of conversation events delivered so far."""

    def __init__(self, conversation: str = "", after_event_id: int = 0) -> None:
        # `conversations/{id}`, once known (a new run names it in its first event).
        self.conversation = conversation
        # Id of the last event yielded.
        self.last_event_id = after_event_id
        # How many times the stream was re-opened after a drop.
        self.resumes = 0
        self.done: pb.Done | None = None
        self.error: status_pb2.Status | None = None
        self.tool_calls: list[pb.ToolCall] = []
        self.citations: list[common_pb2.Citation] = []
        self._tokens: list[str] = []

    @property
    def text(self) -> str:
        """The text streamed by the latest turn."""
        return "".join(self._tokens)

    @property
    def finished(self) -> bool:
        return self.done is not None or self.error is not None

    def take(self, event: pb.ConversationEvent) -> None:
        if event.conversation:
            self.conversation = event.conversation
        if event.event_id:
            self.last_event_id = event.event_id
        kind = event.WhichOneof("kind")
        if kind == "turn_started":
            # A new turn (or a restarted one, whose earlier tokens are superseded).
            self._tokens.clear()
            self.citations.clear()
        elif kind == "token":
            self._tokens.append(event.token.text)
        elif kind == "tool_call":
            self.tool_calls.append(event.tool_call)
        elif kind == "citation":
            self.citations.append(event.citation)
        elif kind == "done":
            self.done = event.done
        elif kind == "error":
            self.error = event.error


class EventStream(_Watched):
    """Events of a conversation as an async iterator that resumes itself, up to the terminal
    event (see the module docstring)."""

    def __init__(
        self,
        stub: pb_grpc.OrchestrationServiceAsyncStub,
        conversation: str,
        after_event_id: int,
        *,
        timeout: float | None,
        metadata: Metadata | None,
        policy: RetryPolicy,
        first: Callable[[], StreamCall[Any]] | None = None,
    ) -> None:
        super().__init__(conversation, after_event_id)
        self._stub = stub
        self._timeout = timeout
        self._metadata = metadata
        self._policy = policy
        # The call that opens the stream the first time (RunConversation); later openings
        # re-attach with StreamConversation.
        self._first = first
        self._last_error: CallistoError | None = None
        self._call: StreamCall[Any] | None = None
        self._iterator: AsyncGenerator[pb.ConversationEvent, None] | None = None

    def _open(self, after: int) -> StreamCall[Any]:
        if self._first is not None:
            first, self._first = self._first, None
            self._call = first()
        elif not self.conversation:
            # Dropped before the run said which conversation it is: nothing to re-attach to.
            assert self._last_error is not None
            raise self._last_error
        else:
            request = pb.StreamConversationRequest(name=self.conversation, after_event_id=after)
            self._call = self._stub.StreamConversation(
                request, timeout=self._timeout, metadata=self._metadata
            )
        return self._call

    def _resumed(self, _after: int, error: CallistoError) -> None:
        self._last_error = error
        self.resumes += 1

    async def _events(self) -> AsyncGenerator[pb.ConversationEvent, None]:
        responses = resume_stream(
            self._open,
            position=lambda response: _event_id(response.event),
            after=self.last_event_id,
            policy=self._policy,
            on_resume=self._resumed,
        )
        try:
            async for response in responses:
                event: pb.ConversationEvent = response.event
                self.take(event)
                yield event
                if event.WhichOneof("kind") in TERMINAL_KINDS:
                    return
        finally:
            await responses.aclose()

    def __aiter__(self) -> AsyncIterator[pb.ConversationEvent]:
        if self._iterator is None:
            self._iterator = self._events()
        return self._iterator

    async def __anext__(self) -> pb.ConversationEvent:
        return await self.__aiter__().__anext__()

    async def complete(self) -> EventStream:
        """Reads the stream to its terminal event; returns itself (`.text`, `.done`, ...)."""
        async for _ in self:
            pass
        return self

    async def aclose(self) -> None:
        """Stops reading (for `run()`, this cancels the call, and so the run)."""
        if self._iterator is not None:
            await self._iterator.aclose()
        elif self._call is not None:
            self._call.cancel()


class ConverseSession(_Watched):
    """One `Converse` stream; `async with client.orchestration.converse(start=...) as session`.

    The first message (start or attach) is sent when the session opens. Turns, approvals and
    cancels go on the stream; while the stream is down they go as unary calls instead.
    """

    def __init__(
        self,
        owner: OrchestrationClient,
        first: pb.ConverseRequest,
        *,
        metadata: Metadata | None,
        policy: RetryPolicy,
    ) -> None:
        attach = first.attach if first.WhichOneof("action") == "attach" else None
        super().__init__(
            attach.conversation if attach else "", attach.after_event_id if attach else 0
        )
        self._owner = owner
        self._first = first
        self._metadata = metadata
        self._policy = policy
        self._call: Any = None
        self._closed = False
        self._watch_again = False

    @property
    def _stub(self) -> pb_grpc.OrchestrationServiceAsyncStub:
        return self._owner.stub

    def _new_call(self) -> Any:
        # No request iterator: the call is written to with `write()` (grpc.aio's other mode),
        # so a turn is sent when the user types it.
        return self._stub.Converse(None, metadata=self._metadata)

    async def open(self) -> ConverseSession:
        if self._call is None:
            self._call = self._new_call()
            await self._call.write(self._first)
        return self

    async def _reattach(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = self._new_call()
        await self._call.write(
            pb.ConverseRequest(
                attach=pb.AttachConversation(
                    conversation=self.conversation, after_event_id=self.last_event_id
                )
            )
        )

    async def events(self) -> AsyncIterator[pb.ConversationEvent]:
        """The run's events up to its terminal one, re-attaching after a dropped stream."""
        await self.open()
        if self._watch_again:
            # A turn sent after the last run ended starts a new run: watch from where we were.
            self._watch_again = False
            await self._reattach()
        failures = 0
        while not self.finished:
            try:
                async for response in self._call:
                    event: pb.ConversationEvent = response.event
                    if event.event_id and event.event_id <= self.last_event_id:
                        continue  # replayed after a re-attach
                    failures = 0
                    self.take(event)
                    yield event
                    if self.finished:
                        return
                # Ended cleanly without a terminal event: the service has nothing (more) to
                # show (no run in that conversation, or attached after its end).
                return
            except grpc.RpcError as raw:
                if self._closed:
                    return
                error = from_rpc_error(raw)
            failures += 1
            if not (error.retryable and self.conversation) or failures >= self._policy.max_attempts:
                raise error
            self.resumes += 1
            await asyncio.sleep(self._policy.delay(failures, error))
            await self._reattach()

    async def _send(self, request: pb.ConverseRequest) -> bool:
        """Writes `request` on the stream; False when the stream is not there to take it."""
        await self.open()
        try:
            await self._call.write(request)
        except _WRITE_REFUSED:
            return False
        return True

    async def send_turn(self, text: str, *, author: str = "") -> None:
        """Sends a human turn. After the run ended, the turn starts a new run of the same
        conversation, and `events()` then shows that run."""
        if self.finished:
            await self._owner.submit_turn(self.conversation, text, author=author)
            self.done, self.error, self._watch_again = None, None, True
            return
        turn = pb.HumanTurn(text=text, author=author)
        if not await self._send(pb.ConverseRequest(turn=turn)):
            await self._owner.submit_turn(self.conversation, text, author=author)

    async def approve(
        self,
        approval_id: str,
        decision: pb.ApprovalDecision.ValueType = pb.APPROVAL_DECISION_APPROVE,
        *,
        modified_output: str = "",
        comment: str = "",
        reviewer: str = "",
    ) -> None:
        """Answers a pending approval (from an `awaiting_input` event)."""
        approval = pb.Approval(
            approval_id=approval_id,
            decision=decision,
            modified_output=modified_output,
            comment=comment,
            reviewer=reviewer,
        )
        if not await self._send(pb.ConverseRequest(approval=approval)):
            await self._owner.submit_approval(self.conversation, approval)

    async def cancel(self, reason: str = "") -> None:
        """Asks the service to stop the run; the events then end with `done(cancelled)`."""
        if not await self._send(pb.ConverseRequest(cancel=pb.Cancel(reason=reason))):
            await self._owner.cancel(self.conversation, reason)

    async def close(self) -> None:
        """Stops watching; the run itself goes on (only a cancel stops it)."""
        self._closed = True
        if self._call is not None:
            try:
                await self._call.done_writing()
            except _WRITE_REFUSED:
                pass
            self._call.cancel()

    async def __aenter__(self) -> ConverseSession:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class OrchestrationClient(WebhooksMixin, ArtifactsMixin, Facade):
    """The orchestration service (`callisto.orchestration.v1.OrchestrationService`)."""

    @property
    def stub(self) -> pb_grpc.OrchestrationServiceAsyncStub:
        return pb_grpc.OrchestrationServiceStub(self._client.channel)

    # Agents

    async def create_agent(
        self,
        agent: pb.Agent | None = None,
        *,
        agent_id: str = "",
        display_name: str = "",
        system_prompt: str = "",
        role: str = "",
        company: str = "",
        tools: Sequence[str] = (),
        model: str = "",
        knowledge_tags: Sequence[str] = (),
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.Agent:
        """Creates an agent (the keyword fields fill a missing `agent`)."""
        if agent is None:
            agent = pb.Agent(
                display_name=display_name,
                system_prompt=system_prompt,
                role=role,
                company=company,
                tools=list(tools),
                model=model,
                knowledge_tags=list(knowledge_tags),
            )
        response = await self._unary(
            self.stub.CreateAgent,
            pb.CreateAgentRequest(agent=agent, agent_id=agent_id),
            idempotent=False,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.CreateAgentResponse,
        )
        return response.agent

    async def get_agent(
        self, agent: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> pb.Agent:
        """An agent at its latest revision, or at the one `agents/{id}@{revision}` names."""
        response = await self._unary(
            self.stub.GetAgent,
            pb.GetAgentRequest(name=agent_name(agent)),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.GetAgentResponse,
        )
        return response.agent

    def list_agents(
        self,
        *,
        page_size: int = 0,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[pb.Agent]:
        """Every agent of the tenant."""

        async def fetch(token: str) -> pb.ListAgentsResponse:
            return await self._unary(
                self.stub.ListAgents,
                pb.ListAgentsRequest(page_size=page_size, page_token=token),
                idempotent=True,
                timeout=timeout,
                metadata=metadata,
                response_type=pb.ListAgentsResponse,
            )

        return paged(fetch, lambda r: r.agents, lambda r: r.next_page_token)

    async def update_agent(
        self,
        agent: pb.Agent,
        *,
        update_mask: Sequence[str] | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.Agent:
        """Updates an agent (conditionally when `agent.etag` is set); returns its new revision.
        Without `update_mask`, the fields set in `agent` are updated."""
        request = pb.UpdateAgentRequest(
            agent=agent,
            update_mask=None
            if update_mask is None
            else field_mask_pb2.FieldMask(paths=update_mask),
        )
        response = await self._unary(
            self.stub.UpdateAgent,
            request,
            idempotent=False,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.UpdateAgentResponse,
        )
        return response.agent

    def list_agent_revisions(
        self,
        agent: str,
        *,
        page_size: int = 0,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[pb.Agent]:
        """Every revision of an agent, newest first (each named `agents/{id}@{revision}`)."""

        async def fetch(token: str) -> pb.ListAgentRevisionsResponse:
            return await self._unary(
                self.stub.ListAgentRevisions,
                pb.ListAgentRevisionsRequest(
                    name=agent_name(agent), page_size=page_size, page_token=token
                ),
                idempotent=True,
                timeout=timeout,
                metadata=metadata,
                response_type=pb.ListAgentRevisionsResponse,
            )

        return paged(fetch, lambda r: r.agents, lambda r: r.next_page_token)

    async def delete_agent(
        self, agent: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> None:
        await self._unary(
            self.stub.DeleteAgent,
            pb.DeleteAgentRequest(name=agent_name(agent)),
            idempotent=False,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.DeleteAgentResponse,
        )

    async def list_tools(
        self, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> list[pb.Tool]:
        """Every tool of the registry, with the JSON Schema of its arguments."""
        response = await self._unary(
            self.stub.ListTools,
            pb.ListToolsRequest(),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.ListToolsResponse,
        )
        return list(response.tools)

    async def suggest_agents(
        self,
        scenario: str,
        *,
        agent_count: int = 0,
        participate: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.SuggestAgentsResponse:
        """Two to five agents suggested for a scenario (not created), with the path that made
        them (`source`) and, with `participate`, the human participant."""
        return await self._unary(
            self.stub.SuggestAgents,
            pb.SuggestAgentsRequest(
                scenario=scenario, agent_count=agent_count, participate=participate
            ),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.SuggestAgentsResponse,
        )

    # Plans

    async def validate_plan(
        self,
        plan: pb.WorkflowPlan,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> list[list[str]]:
        """Checks a workflow plan without running it; its stages (step ids that may run at
        the same time, entry steps first). InvalidArgument with every problem otherwise."""
        response = await self._unary(
            self.stub.ValidatePlan,
            pb.ValidatePlanRequest(plan=plan),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.ValidatePlanResponse,
        )
        return [list(stage.step_ids) for stage in response.stages]

    # Runs

    def run(
        self,
        start: pb.StartConversation,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        policy: RetryPolicy = RESUME_POLICY,
    ) -> EventStream:
        """Starts a run (RunConversation); iterate the result for its events. Nothing is sent
        until it is iterated. `assistant_start(agent, prompt)` builds a common `start`."""
        stub = self.stub
        request = pb.RunConversationRequest(start=start)

        def first() -> StreamCall[Any]:
            return stub.RunConversation(request, timeout=timeout, metadata=metadata)

        return EventStream(
            stub,
            start.conversation,
            0,
            timeout=timeout,
            metadata=metadata,
            policy=policy,
            first=first,
        )

    def stream(
        self,
        conversation: str,
        after_event_id: int = 0,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        policy: RetryPolicy = RESUME_POLICY,
    ) -> EventStream:
        """The events of a conversation after `after_event_id` (StreamConversation), live."""
        return EventStream(
            self.stub,
            conversation_name(conversation),
            after_event_id,
            timeout=timeout,
            metadata=metadata,
            policy=policy,
        )

    def converse(
        self,
        *,
        start: pb.StartConversation | None = None,
        attach: str | None = None,
        after_event_id: int = 0,
        metadata: Metadata | None = None,
        policy: RetryPolicy = RESUME_POLICY,
    ) -> ConverseSession:
        """A Converse session that starts a run (`start`) or re-attaches to the conversation
        `attach` after `after_event_id`; open it with `async with` (or `await .open()`)."""
        if (start is None) == (attach is None):
            raise ValueError("pass exactly one of start= and attach=")
        if start is not None:
            first = pb.ConverseRequest(start=start)
        else:
            assert attach is not None
            first = pb.ConverseRequest(
                attach=pb.AttachConversation(
                    conversation=conversation_name(attach), after_event_id=after_event_id
                )
            )
        return ConverseSession(self, first, metadata=metadata, policy=policy)

    async def submit_turn(
        self,
        conversation: str,
        text: str,
        *,
        author: str = "",
        end_conversation: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> int:
        """Sends a human turn to a running conversation; returns the id of its event. With
        `end_conversation`, a simulation ends after it (`text` may then be empty)."""
        request = pb.SubmitInputRequest(
            name=conversation_name(conversation),
            turn=pb.HumanTurn(text=text, author=author, end_conversation=end_conversation),
        )
        return await self._submit(request, timeout, metadata)

    async def submit_approval(
        self,
        conversation: str,
        approval: pb.Approval,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> int:
        """Answers a pending approval; returns the id of the event that recorded it."""
        request = pb.SubmitInputRequest(name=conversation_name(conversation), approval=approval)
        return await self._submit(request, timeout, metadata)

    async def answer_approval(
        self,
        approval: str,
        decision: pb.ApprovalDecision.ValueType,
        *,
        modified_output: str = "",
        comment: str = "",
        reviewer: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> int:
        """Approves, rejects or modifies a pending approval by its name or id (its
        conversation is looked up); returns the id of its `approval_decided` event."""
        found = await self.get_approval(approval, timeout=timeout, metadata=metadata)
        answer = pb.Approval(
            approval_id=found.name,
            decision=decision,
            modified_output=modified_output,
            comment=comment,
            reviewer=reviewer,
        )
        return await self.submit_approval(
            found.conversation, answer, timeout=timeout, metadata=metadata
        )

    def list_approvals(
        self,
        *,
        conversation: str = "",
        page_size: int = 0,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[pb.StepApproval]:
        """The tenant's pending approvals, newest first (of one conversation if given)."""
        name = conversation_name(conversation) if conversation else ""

        async def fetch(token: str) -> pb.ListApprovalsResponse:
            return await self._unary(
                self.stub.ListApprovals,
                pb.ListApprovalsRequest(page_size=page_size, page_token=token, conversation=name),
                idempotent=True,
                timeout=timeout,
                metadata=metadata,
                response_type=pb.ListApprovalsResponse,
            )

        return paged(fetch, lambda r: r.approvals, lambda r: r.next_page_token)

    async def get_approval(
        self, approval: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> pb.StepApproval:
        """An approval, pending or decided, with its audit history."""
        response = await self._unary(
            self.stub.GetApproval,
            pb.GetApprovalRequest(name=approval_name(approval)),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.GetApprovalResponse,
        )
        return response.approval

    async def _submit(
        self, request: pb.SubmitInputRequest, timeout: float | None, metadata: Metadata | None
    ) -> int:
        response = await self._unary(
            self.stub.SubmitInput,
            request,
            idempotent=False,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.SubmitInputResponse,
        )
        return response.event_id

    async def cancel(
        self,
        conversation: str,
        reason: str = "",
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> int:
        """Stops a running conversation; returns the id of the event that recorded it."""
        response = await self._unary(
            self.stub.CancelConversation,
            pb.CancelConversationRequest(name=conversation_name(conversation), reason=reason),
            idempotent=False,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.CancelConversationResponse,
        )
        return response.event_id

    async def submit_feedback(
        self,
        message: str,
        rating: Rating,
        comment: str = "",
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> persistence_pb2.Message:
        """Rates an answer (`conversations/{c}/messages/{m}`, from its `turn_ended` event):
        `orchestration.UP` or `orchestration.DOWN`, with a comment. Rating again replaces it,
        so the call is retried."""
        response = await self._unary(
            self.stub.SubmitFeedback,
            pb.SubmitFeedbackRequest(name=message, rating=rating, comment=comment),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.SubmitFeedbackResponse,
        )
        return response.message

    # Read-outs of stored conversations

    async def get_conversation_metrics(
        self,
        conversation: str,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.ConversationMetrics:
        """A conversation's figures: turns, sentiment and its trend, tokens, cost, keyword hits,
        retrieval use, outcome (the same live and replayed)."""
        response = await self._unary(
            self.stub.GetConversationMetrics,
            pb.GetConversationMetricsRequest(name=conversation_name(conversation)),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.GetConversationMetricsResponse,
        )
        return response.metrics

    async def download_conversation(
        self,
        conversation: str,
        format: pb.ExportFormat.ValueType = pb.EXPORT_FORMAT_MARKDOWN,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> httpbody_pb2.HttpBody:
        """A conversation rendered as a document: `content_type` and `data` (Markdown, PDF or
        JSON)."""
        return await self._unary(
            self.stub.DownloadConversation,
            pb.DownloadConversationRequest(name=conversation_name(conversation), format=format),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=httpbody_pb2.HttpBody,
        )
