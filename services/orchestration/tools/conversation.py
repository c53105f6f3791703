"""`get_conversation`: the most recent turns of the conversation the agent is answering in."""

from __future__ import annotations

from collections import deque
from typing import Any

from callisto.api.common.v1 import common_pb2
from callisto.api.persistence.v1 import persistence_pb2
from callisto.services.orchestration.tools.errors import ToolInputError
from callisto.services.orchestration.tools.registry import ToolContext, ToolResult, ToolSpec

MAX_TURNS = 20
DEFAULT_TURNS = 10
# A long message is shown by its beginning; the model needs the gist, not every word.
MAX_TEXT = 2000
PAGE_SIZE = 200

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "limit": {
            "type": "integer",
            "description": (
                f"How many of the latest messages to return ({DEFAULT_TURNS} when omitted)."
            ),
            "minimum": 1,
            "maximum": MAX_TURNS,
        }
    },
    "additionalProperties": False,
}


def _role(role: common_pb2.Role.ValueType) -> str:
    return common_pb2.Role.Name(role).removeprefix("ROLE_").lower()


def _turn(message: persistence_pb2.Message) -> dict[str, Any]:
    text = message.text if len(message.text) <= MAX_TEXT else message.text[: MAX_TEXT - 1] + "…"
    return {
        "position": message.position,
        "role": _role(message.role),
        "author": message.author,
        "text": text,
    }


async def get_conversation(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
    if not context.conversation:
        raise ToolInputError("this call belongs to no conversation")
    limit = int(arguments.get("limit", DEFAULT_TURNS))
    # Messages come oldest first; keep only the last `limit` while paging through.
    latest: deque[persistence_pb2.Message] = deque(maxlen=limit)
    async for message in context.backends.persistence.list_messages(
        context.conversation, page_size=PAGE_SIZE
    ):
        latest.append(message)
    turns = [_turn(message) for message in latest]
    return ToolResult(
        data={"conversation": context.conversation, "messages": turns},
        summary=f"{len(turns)} recent message{'s' if len(turns) != 1 else ''}",
    )


SPEC = ToolSpec(
    name="get_conversation",
    description=(
        "Returns the latest messages of this conversation (role, author, text), oldest first. "
        "Use it when the question refers to something said earlier ('that session', 'as I "
        "mentioned')."
    ),
    parameters=PARAMETERS,
    handler=get_conversation,
    timeout_s=5.0,
)
