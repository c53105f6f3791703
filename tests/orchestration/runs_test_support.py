"""Helpers the run tests share: agents made through CreateAgent, toy_llm extras for a run,
reading a run's events, and toy_llm's per-request records."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc

EXTRAS = "x-callisto-model-extras"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_agent(client: callisto.Client, prefix: str = "runs-agent") -> str:
    """A fresh agent of the client's tenant (no tools, so a turn is a few toy generations)."""
    agent = await client.orchestration.create_agent(
        agent_id=new_id(prefix), display_name="Run test agent", system_prompt="Be brief."
    )
    return str(agent.name)


def slow(delay_ms: int, tag: str = "") -> tuple[tuple[str, str], ...]:
    """Call metadata that makes every generation of the run sleep `delay_ms` per token (and
    tags toy_llm's record of it)."""
    extras: dict[str, Any] = {"delay_ms": delay_ms}
    if tag:
        extras["tag"] = tag
    return ((EXTRAS, json.dumps(extras)),)


def start(agent: str, prompt: str, **fields: Any) -> pb.StartConversation:
    return pb.StartConversation(
        agents=[agent], prompt=prompt, mode=pb.CONVERSATION_MODE_ASSISTANT, **fields
    )


def kind(event: pb.ConversationEvent) -> str:
    return str(event.WhichOneof("kind"))


def kinds(events: Sequence[pb.ConversationEvent]) -> list[str]:
    return [kind(event) for event in events]


def ids(events: Sequence[pb.ConversationEvent]) -> list[int]:
    return [int(event.event_id) for event in events]


def is_terminal(event: pb.ConversationEvent) -> bool:
    return kind(event) in ("done", "error")


async def read_until(
    stream: AsyncIterator[Any], count: int | None = None, *, within_s: float = 120
) -> list[pb.ConversationEvent]:
    """Events of a stream of responses (each with `.event`): `count` of them, or up to the
    terminal one."""
    events: list[pb.ConversationEvent] = []

    async def read() -> None:
        async for response in stream:
            events.append(response.event)
            if is_terminal(response.event) or (count is not None and len(events) >= count):
                return

    await asyncio.wait_for(read(), within_s)
    return events


async def watch(
    stub: pb_grpc.OrchestrationServiceAsyncStub, conversation: str, after: int = 0
) -> list[pb.ConversationEvent]:
    """Every event of the run after `after`, over StreamConversation, to the terminal one."""
    call = stub.StreamConversation(
        pb.StreamConversationRequest(name=conversation, after_event_id=after)
    )
    try:
        return await read_until(call)
    finally:
        call.cancel()


async def wait_for_kind(
    stream: AsyncIterator[Any], wanted: str, *, within_s: float = 120
) -> list[pb.ConversationEvent]:
    """Events of a stream up to and including the first of kind `wanted`."""
    events: list[pb.ConversationEvent] = []

    async def read() -> None:
        async for response in stream:
            events.append(response.event)
            if kind(response.event) == wanted:
                return
            assert not is_terminal(response.event), kinds(events)

    await asyncio.wait_for(read(), within_s)
    return events


def assert_consecutive(events: Sequence[pb.ConversationEvent], after: int) -> None:
    """Event ids follow `after` one by one: no gap, no duplicate."""
    assert ids(events) == list(range(after + 1, after + 1 + len(events))), ids(events)


def _records(path: Path, tag: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [record for record in records if record.get("tag") == tag]


async def toy_event(
    path: Path, tag: str, finish_reason: str = "", within_s: float = 15
) -> dict[str, Any]:
    """toy_llm's record of a finished request tagged `tag` (the first that ended with
    `finish_reason`, when given: a run makes several tagged generations)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        tagged = await asyncio.to_thread(_records, path, tag)
        matching = [r for r in tagged if r["finish_reason"] == finish_reason or not finish_reason]
        if matching:
            return matching[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"toy_llm recorded no request tagged {tag} ending {finish_reason!r}")
