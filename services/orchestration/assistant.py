"""The assistant loop (CONVERSATION_MODE_ASSISTANT): understand → plan → execute → reflect →
respond with numbered, verified citations."""

from __future__ import annotations

from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.tools.registry import ToolRegistry
from callisto.services.orchestration.turns import ModelCaller, RunSink, TurnAnswer, TurnInput


async def answer_turn(
    turn: TurnInput,
    sink: RunSink,
    llm: ModelCaller,
    tools: ToolRegistry,
    backends: Backends,
) -> TurnAnswer:
    """Answers one human turn, emitting plan, tool_call, reflection, citation and token events
    through `sink`; the caller stores the answer (which emits `turn_ended`)."""
    raise NotImplementedError
