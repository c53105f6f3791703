"""The run RPCs of OrchestrationService: Converse, RunConversation, StreamConversation,
SubmitInput, CancelConversation. Handlers validate and translate; `runs.RunManager` acts."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import duration_pb2

from callisto import errors as sdk
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.services.common.errors import FailedPrecondition, InvalidArgument
from callisto.services.common.validation import Violations, parse_name
from callisto.services.orchestration.model_extras import model_extras
from callisto.services.orchestration.relay import relayed
from callisto.services.orchestration.runs import RunManager

Context = grpc.aio.ServicerContext[Any, Any]
AGENT_NAME = re.compile(r"^agents/[a-z0-9][a-z0-9-]{0,62}(@[A-Za-z0-9_-]{1,64})?$")
PARTICIPANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
MAX_TITLE = 256
MAX_TAGS = 32
MAX_TAG = 128
MAX_REASON = 1024
MAX_ITERATIONS = 5
MAX_PARALLEL_STEPS = 16
APPROVAL_ID = re.compile(r"^(approvals/)?ap-[0-9a-f]{24}$")
MAX_COMMENT = 2000
MAX_REVIEWER = 128
# Simulation bounds (the contract in orchestration.proto).
MIN_PARTICIPANTS, MAX_PARTICIPANTS = 2, 5
MAX_TURNS = 200
MAX_STOP_KEYWORDS = 32
MAX_STOP_KEYWORD = 64
MAX_TIMEOUT_S = 24 * 3600
MAX_HUMAN_TIMEOUT_S = 7 * 24 * 3600
MIN_TURN_TOKENS, MAX_TURN_TOKENS = 16, 1024
MAX_LABEL = 200
CheckAgent = Callable[[Violations, pb.Agent, str], None]


class RunsRpc(pb_grpc.OrchestrationServiceServicer):
    def __init__(self, runs: RunManager) -> None:
        self._runs = runs
        # Cancels of runs whose RunConversation call the client cancelled, still in flight.
        self._cancels: set[asyncio.Task[None]] = set()

    async def RunConversation(
        self, request: pb.RunConversationRequest, context: Context
    ) -> AsyncIterator[pb.RunConversationResponse]:
        start = _check_start(
            request.start, "start", self._runs.settings.max_prompt_chars, self._runs.check_agent
        )
        conversation, after = await self._begin(start, context)
        finished = False
        try:
            async for event in self._watch(conversation, after):
                finished = finished or event.WhichOneof("kind") in ("done", "error")
                yield pb.RunConversationResponse(event=event)
        finally:
            # The client cancelling this call cancels the run (not a server shutting down:
            # its runs resume elsewhere), unless it started the run detached.
            if not finished and not self._runs.stopping and not request.start.detached:
                self._cancel_later(conversation, "the RunConversation call was cancelled")

    async def StreamConversation(
        self, request: pb.StreamConversationRequest, context: Context
    ) -> AsyncIterator[pb.StreamConversationResponse]:
        conversation = _conversation(request.name, "name")
        if request.after_event_id < 0:
            raise InvalidArgument.field("after_event_id", "must not be negative")
        async for event in self._watch(conversation, request.after_event_id):
            yield pb.StreamConversationResponse(event=event)

    async def Converse(
        self, request_iterator: AsyncIterator[pb.ConverseRequest], context: Context
    ) -> AsyncIterator[pb.ConverseResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        action = first.WhichOneof("action")
        if action == "start":
            start = _check_start(
                first.start, "start", self._runs.settings.max_prompt_chars, self._runs.check_agent
            )
            conversation, after = await self._begin(start, context)
        elif action == "attach":
            conversation = _conversation(first.attach.conversation, "attach.conversation")
            after = first.attach.after_event_id
            if after < 0:
                raise InvalidArgument.field("attach.after_event_id", "must not be negative")
        else:
            raise InvalidArgument.field(
                "action", "the first message of a Converse stream must be start or attach"
            )
        # Events and the answers to later client messages meet in one queue.
        out: asyncio.Queue[pb.ConversationEvent | BaseException | None] = asyncio.Queue()

        async def relay_events() -> None:
            try:
                async for event in self._watch(conversation, after, "attach.after_event_id"):
                    out.put_nowait(event)
                out.put_nowait(None)
            except Exception as error:
                out.put_nowait(error)

        async def follow_requests() -> None:
            try:
                async for message in request_iterator:
                    await self._converse_action(conversation, message)
            except Exception as error:
                out.put_nowait(error)

        tasks = [asyncio.create_task(relay_events()), asyncio.create_task(follow_requests())]
        try:
            while True:
                item = await out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield pb.ConverseResponse(event=item)
        finally:
            # Closing the stream stops watching; the run goes on.
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def SubmitInput(
        self, request: pb.SubmitInputRequest, context: Context
    ) -> pb.SubmitInputResponse:
        conversation = _conversation(request.name, "name")
        which = request.WhichOneof("input")
        if which == "approval":
            _check_approval(request.approval, "approval", self._runs.settings.max_prompt_chars)
            with _relaying():
                event_id = await self._runs.decide(conversation, request.approval)
            return pb.SubmitInputResponse(event_id=event_id)
        if which != "turn":
            raise InvalidArgument.field("turn", "is required")
        _check_turn(request.turn, "turn", self._runs.settings.max_prompt_chars)
        with _relaying():
            event_id = await self._runs.submit(conversation, request.turn)
        return pb.SubmitInputResponse(event_id=event_id)

    async def CancelConversation(
        self, request: pb.CancelConversationRequest, context: Context
    ) -> pb.CancelConversationResponse:
        conversation = _conversation(request.name, "name")
        if len(request.reason) > MAX_REASON:
            raise InvalidArgument.field("reason", f"must be at most {MAX_REASON} characters")
        with _relaying():
            event_id = await self._runs.cancel(conversation, request.reason)
        return pb.CancelConversationResponse(event_id=event_id)

    # Helpers

    async def _begin(self, start: pb.StartConversation, context: Context) -> tuple[str, int]:
        extras = model_extras(context, self._runs.settings.forward_model_extras)
        with _relaying():
            # Shielded: a caller gone mid-start must not leave a claimed run that nobody runs.
            return await asyncio.shield(self._runs.begin(start, extras))

    async def _watch(
        self, conversation: str, after: int, field: str = "after_event_id"
    ) -> AsyncIterator[pb.ConversationEvent]:
        try:
            async for event in self._runs.watch(conversation, after, field=field):
                yield event
        except sdk.CallistoError as error:
            raise relayed(error) from None

    async def _converse_action(self, conversation: str, message: pb.ConverseRequest) -> None:
        action = message.WhichOneof("action")
        limit = self._runs.settings.max_prompt_chars
        with _relaying():
            if action == "turn":
                _check_turn(message.turn, "turn", limit)
                await self._runs.submit(conversation, message.turn)
            elif action == "cancel":
                # A cancel that crosses the run's own end changes nothing: the stream still
                # delivers that end.
                with contextlib.suppress(FailedPrecondition):
                    await self._runs.cancel(conversation, message.cancel.reason[:MAX_REASON])
            elif action == "approval":
                _check_approval(message.approval, "approval", limit)
                await self._runs.decide(conversation, message.approval)
            else:
                raise InvalidArgument.field(
                    "action", "after the first message, send turn, approval or cancel"
                )

    def _cancel_later(self, conversation: str, reason: str) -> None:
        async def cancel() -> None:
            with contextlib.suppress(Exception):
                await self._runs.cancel(conversation, reason)

        task = asyncio.create_task(cancel())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)


@contextlib.contextmanager
def _relaying() -> Any:
    """Errors of the services a run calls keep their status (NOT_FOUND stays NOT_FOUND)."""
    try:
        yield
    except sdk.CallistoError as error:
        raise relayed(error) from None


def _check_approval(approval: pb.Approval, field: str, limit: int) -> None:
    v = Violations()
    v.check(
        bool(APPROVAL_ID.match(approval.approval_id)),
        f"{field}.approval_id",
        "must be the approval id of an awaiting_input (ap-…, or approvals/ap-…)",
    )
    v.check(
        approval.decision
        in (
            pb.APPROVAL_DECISION_APPROVE,
            pb.APPROVAL_DECISION_REJECT,
            pb.APPROVAL_DECISION_MODIFY,
        ),
        f"{field}.decision",
        "must be APPROVE, REJECT or MODIFY",
    )
    if approval.decision == pb.APPROVAL_DECISION_MODIFY:
        v.check(
            bool(approval.modified_output.strip()),
            f"{field}.modified_output",
            "is required to MODIFY: the output that replaces the step's",
        )
    elif approval.modified_output:
        v.add(f"{field}.modified_output", "only a MODIFY decision takes a modified output")
    v.check(
        len(approval.modified_output) <= limit,
        f"{field}.modified_output",
        f"must be at most {limit} characters",
    )
    v.check(
        "\x00" not in approval.modified_output + approval.comment + approval.reviewer,
        field,
        "must be text: it holds a NUL character",
    )
    v.check(
        len(approval.comment) <= MAX_COMMENT,
        f"{field}.comment",
        f"must be at most {MAX_COMMENT} characters",
    )
    v.check(
        len(approval.reviewer) <= MAX_REVIEWER,
        f"{field}.reviewer",
        f"must be at most {MAX_REVIEWER} characters",
    )
    v.raise_if_any()


def _conversation(name: str, field: str) -> str:
    parse_name(name, "conversations", field)
    return name


def _check_turn(turn: pb.HumanTurn, field: str, limit: int) -> None:
    v = Violations()
    v.check(
        bool(turn.text.strip()) or turn.end_conversation,
        f"{field}.text",
        "is required (it may be empty only with end_conversation)",
    )
    v.check(len(turn.text) <= limit, f"{field}.text", f"must be at most {limit} characters")
    if turn.author:
        v.check(
            bool(PARTICIPANT_ID.match(turn.author)),
            f"{field}.author",
            "must be 1-64 letters, digits, '_', '.', ':' or '-', starting with a letter or digit",
        )
    v.raise_if_any()


def _check_start(
    start: pb.StartConversation, field: str, limit: int, check_agent: CheckAgent
) -> pb.StartConversation:
    """The start, validated whole: every bad field is reported at once."""
    if start.mode == pb.CONVERSATION_MODE_SIMULATION:
        return _check_simulation(start, field, limit, check_agent)
    if start.mode == pb.CONVERSATION_MODE_WORKFLOW:
        return _check_workflow(start, field, limit)
    v = Violations()
    if start.mode not in (pb.CONVERSATION_MODE_UNSPECIFIED, pb.CONVERSATION_MODE_ASSISTANT):
        v.add(f"{field}.mode", "is not a known conversation mode")
    if len(start.agents) != 1:
        v.add(f"{field}.agents", "an assistant conversation takes exactly one agent")
    if start.inline_agents:
        v.add(f"{field}.inline_agents", "only simulations take inline agents")
    if start.HasField("simulation"):
        v.add(f"{field}.simulation", "only simulations take simulation options")
    if start.HasField("workflow"):
        v.add(f"{field}.workflow", "only workflows take workflow options")
    for index, agent in enumerate(start.agents):
        v.check(
            bool(AGENT_NAME.match(agent)),
            f"{field}.agents[{index}]",
            "must look like agents/{agent} or agents/{agent}@{revision}",
        )
    v.check(bool(start.prompt.strip()), f"{field}.prompt", "is required")
    v.check(len(start.prompt) <= limit, f"{field}.prompt", f"must be at most {limit} characters")
    v.check(
        0 <= start.max_iterations <= MAX_ITERATIONS,
        f"{field}.max_iterations",
        f"must be between 0 (the default, 2) and {MAX_ITERATIONS}",
    )
    _check_common(v, start, field)
    if start.conversation:
        try:
            parse_name(start.conversation, "conversations", f"{field}.conversation")
        except InvalidArgument as error:
            for violation in error.violations:
                v.add(violation.field, violation.description)
    if start.HasField("plan") and start.plan.steps:
        v.add(f"{field}.plan", "only workflow conversations take a plan")
    if start.human_in_the_loop:
        v.add(f"{field}.human_in_the_loop", "only simulations ask a human every round")
    v.raise_if_any()
    return start


def _check_workflow(start: pb.StartConversation, field: str, limit: int) -> pb.StartConversation:
    """A workflow's own fields; its plan is checked whole by the plan validator (which needs
    the tenant's agents) when the run begins."""
    v = Violations()
    planned = bool(start.plan.steps)
    if not planned:
        v.check(
            bool(start.prompt.strip()),
            f"{field}.prompt",
            "is required without a plan: the task the planner plans",
        )
    v.check(len(start.prompt) <= limit, f"{field}.prompt", f"must be at most {limit} characters")
    v.check("\x00" not in start.prompt, f"{field}.prompt", "must be text: it holds a NUL")
    if planned and start.agents:
        v.add(f"{field}.agents", "a given plan names its agents in its steps")
    for index, agent in enumerate(start.agents[: MAX_PARALLEL_STEPS * 4]):
        v.check(
            bool(AGENT_NAME.match(agent)),
            f"{field}.agents[{index}]",
            "must look like agents/{agent} or agents/{agent}@{revision}",
        )
    v.check(len(start.agents) <= 50, f"{field}.agents", "at most 50 agents")
    if start.conversation:
        v.add(f"{field}.conversation", "a workflow starts a conversation of its own")
    if start.inline_agents:
        v.add(f"{field}.inline_agents", "only simulations take inline agents")
    if start.HasField("simulation"):
        v.add(f"{field}.simulation", "only simulations take simulation options")
    if start.max_iterations:
        v.add(f"{field}.max_iterations", "only assistant conversations take max_iterations")
    if start.human_in_the_loop:
        v.add(f"{field}.human_in_the_loop", "a workflow asks people through approvals")
    v.check(
        0 <= start.workflow.max_parallel_steps <= MAX_PARALLEL_STEPS,
        f"{field}.workflow.max_parallel_steps",
        f"must be between 0 (the default, 4) and {MAX_PARALLEL_STEPS}",
    )
    _check_common(v, start, field)
    v.raise_if_any()
    return start


def _check_common(v: Violations, start: pb.StartConversation, field: str) -> None:
    """Budget, title and tags, the same for every mode."""
    v.check(
        start.budget.max_total_tokens >= 0,
        f"{field}.budget.max_total_tokens",
        "must not be negative (0 is no limit)",
    )
    v.check(len(start.title) <= MAX_TITLE, f"{field}.title", f"at most {MAX_TITLE} characters")
    v.check(len(start.tags) <= MAX_TAGS, f"{field}.tags", f"at most {MAX_TAGS} tags")
    for index, tag in enumerate(start.tags):
        v.check(
            0 < len(tag.strip()) and len(tag) <= MAX_TAG,
            f"{field}.tags[{index}]",
            f"must be 1-{MAX_TAG} characters, not blank",
        )


def _seconds(duration: duration_pb2.Duration) -> float:
    return float(duration.seconds) + duration.nanos / 1e9


def _valid_duration(duration: duration_pb2.Duration) -> bool:
    """A well-formed, non-negative protobuf Duration."""
    return bool(
        duration.seconds >= 0 and 0 <= duration.nanos < 1_000_000_000 and duration.seconds < 2**40
    )


def _check_simulation(
    start: pb.StartConversation, field: str, limit: int, check_agent: CheckAgent
) -> pb.StartConversation:
    v = Violations()
    count = len(start.agents) + len(start.inline_agents)
    v.check(
        MIN_PARTICIPANTS <= count <= MAX_PARTICIPANTS,
        f"{field}.agents",
        f"a simulation takes {MIN_PARTICIPANTS}-{MAX_PARTICIPANTS} agents (agents and "
        f"inline_agents together; the human does not count), not {count}",
    )
    for index, agent in enumerate(start.agents[: MAX_PARTICIPANTS + 1]):
        v.check(
            bool(AGENT_NAME.match(agent)),
            f"{field}.agents[{index}]",
            "must look like agents/{agent} or agents/{agent}@{revision}",
        )
    for index, inline in enumerate(start.inline_agents[: MAX_PARTICIPANTS + 1]):
        check_agent(v, inline, f"{field}.inline_agents[{index}]")
    v.check(bool(start.prompt.strip()), f"{field}.prompt", "is required (the scenario)")
    v.check(len(start.prompt) <= limit, f"{field}.prompt", f"must be at most {limit} characters")
    if start.conversation:
        v.add(f"{field}.conversation", "a simulation starts a conversation of its own")
    if start.max_iterations:
        v.add(f"{field}.max_iterations", "only assistant conversations take max_iterations")
    if start.HasField("plan"):
        v.add(f"{field}.plan", "only workflow conversations take a plan")
    _check_common(v, start, field)
    policy = start.termination
    where = f"{field}.termination"
    v.check(
        0 <= policy.max_turns <= MAX_TURNS,
        f"{where}.max_turns",
        f"must be between 0 (the default, 10) and {MAX_TURNS}",
    )
    v.check(
        len(policy.stop_keywords) <= MAX_STOP_KEYWORDS,
        f"{where}.stop_keywords",
        f"at most {MAX_STOP_KEYWORDS} keywords",
    )
    for index, keyword in enumerate(policy.stop_keywords[:MAX_STOP_KEYWORDS]):
        v.check(
            bool(keyword.strip()) and len(keyword) <= MAX_STOP_KEYWORD,
            f"{where}.stop_keywords[{index}]",
            f"must be 1-{MAX_STOP_KEYWORD} characters, not blank",
        )
    for name in ("min_sentiment", "max_sentiment"):
        if policy.HasField(name):
            value = getattr(policy, name)
            v.check(-1.0 <= value <= 1.0, f"{where}.{name}", "must be between -1 and 1")
    if policy.HasField("timeout"):
        v.check(
            _valid_duration(policy.timeout) and _seconds(policy.timeout) <= MAX_TIMEOUT_S,
            f"{where}.timeout",
            "must be between 0 (no limit) and 24 hours",
        )
    options = start.simulation
    v.check(
        options.speaker_selection in pb.SpeakerSelection.values(),
        f"{field}.simulation.speaker_selection",
        "is not a known speaker selection",
    )
    v.check(
        options.on_human_timeout in pb.HumanTimeoutAction.values(),
        f"{field}.simulation.on_human_timeout",
        "is not a known human timeout action",
    )
    if options.HasField("human"):
        if not start.human_in_the_loop:
            v.add(f"{field}.simulation.human", "needs human_in_the_loop")
        human = options.human
        if human.id:
            v.check(
                bool(PARTICIPANT_ID.match(human.id)),
                f"{field}.simulation.human.id",
                "must be 1-64 letters, digits, '_', '.', ':' or '-', starting with a letter or "
                "digit",
            )
        for name in ("display_name", "role", "company"):
            v.check(
                len(getattr(human, name)) <= MAX_LABEL,
                f"{field}.simulation.human.{name}",
                f"must be at most {MAX_LABEL} characters",
            )
    if options.HasField("human_turn_timeout"):
        timeout = options.human_turn_timeout
        v.check(
            _valid_duration(timeout) and 0 < _seconds(timeout) <= MAX_HUMAN_TIMEOUT_S,
            f"{field}.simulation.human_turn_timeout",
            "must be more than 0 and at most 7 days",
        )
    v.check(
        options.max_turn_tokens == 0
        or MIN_TURN_TOKENS <= options.max_turn_tokens <= MAX_TURN_TOKENS,
        f"{field}.simulation.max_turn_tokens",
        f"must be 0 (the default) or {MIN_TURN_TOKENS}-{MAX_TURN_TOKENS}",
    )
    v.raise_if_any()
    return start
