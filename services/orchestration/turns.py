"""What a turn of a run needs from the run around it, and what it gives back.

The run (`runs.py`) owns the event log, checkpoints, budgets and cancellation; a turn (the
assistant loop in `assistant.py`, later a simulation or workflow step) only emits events
through a `RunSink` and calls models through a `ModelCaller`, so it never touches the log or
the budget directly and the same turn code runs live, resumed or replayed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.services.orchestration.tools.registry import ToolOutcome

# Called with each piece of text a streamed generation produces.
OnText = Callable[[str], Awaitable[None]]


class RunSink(Protocol):
    """Where a turn reports what it does; every call appends to the conversation's log."""

    async def emit(self, event: pb.ConversationEvent) -> int:
        """Appends `event` (its `kind` set; id, conversation and time are filled in) and
        returns its event id. Pending tokens are flushed first, so order is kept."""
        ...

    async def token(self, speaker: str, text: str) -> None:
        """Streams answer text: the first piece of a turn is appended at once, later ones are
        coalesced for a few milliseconds into one `token` event."""
        ...


class BudgetExhausted(Exception):
    """The run's token budget cannot pay for another model call; the run ends `done(budget)`."""


class ModelCaller(Protocol):
    """Calls the generation service for a run: caps `max_tokens` by what the budget has left
    (raising `BudgetExhausted` when it has nothing), accounts usage and cost per model, and
    stops the generation inside Triton when the calling task is cancelled."""

    async def generate(
        self,
        request: generation_pb2.GenerateRequest,
        *,
        on_text: OnText | None = None,
    ) -> generation_pb2.GenerationResult:
        """The terminal result of one generation (`parsed` / `tool_calls` when asked for);
        `on_text` gets the streamed text as it comes. Errors raise `callisto.errors`."""
        ...


@dataclass
class TurnInput:
    """One human turn for an assistant to answer."""

    tenant: str
    # `conversations/{conversation}`.
    conversation: str
    # The agent at the revision the run uses (`name` is `agents/{agent}`, `revision_id` set).
    agent: pb.Agent
    # Participant id the agent speaks as.
    speaker: str
    # 1-based turn number within the run.
    turn: int
    user_text: str
    # Earlier turns of the conversation, oldest first (system prompt not included).
    history: list[generation_pb2.ChatMessage] = field(default_factory=list)
    # Most plan/execute rounds.
    max_iterations: int = 2
    # Prefix of the idempotency keys of the turn's tool calls; the conversation and turn when
    # empty (a workflow step's names its run, step and attempt).
    call_key: str = ""


@dataclass
class TurnAnswer:
    """What the assistant answered; the run stores it as the assistant message."""

    text: str
    # Every source `[n]` in `text` refers to, with `marker` = n, in marker order.
    citations: list[common_pb2.Citation]
    usage: common_pb2.TokenUsage
    # Time spent inside generation for the turn, milliseconds.
    generation_ms: float
    model: str
    tool_calls: list[ToolOutcome] = field(default_factory=list)
    # Tools that failed after their retries (the answer says it could not use them).
    unavailable: list[str] = field(default_factory=list)
