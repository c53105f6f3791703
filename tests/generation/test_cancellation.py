"""Cancellation, deadlines and Chat: a cancel or an expired deadline stops the model in Triton."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from generation_support import chat_messages, extras

from callisto.api.generation.v1 import generation_pb2, generation_pb2_grpc

Stub = generation_pb2_grpc.GenerationServiceStub
# At most this many tokens may be produced after the cancel was sent.
MAX_AFTER_CANCEL = 3


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [dict(json.loads(line)) for line in path.read_text().splitlines()]


async def wait_for(
    path: Path, matches: Callable[[dict[str, Any]], bool], within: float = 10.0
) -> dict[str, Any]:
    """The first toy_llm event (one per finished request) that `matches`."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for event in await asyncio.to_thread(read_events, path):
            if matches(event):
                return event
        await asyncio.sleep(0.05)
    raise AssertionError("toy_llm never finished the request")


async def wait_for_event(path: Path, tag: str) -> dict[str, Any]:
    return await wait_for(path, lambda e: e["tag"] == tag)


def slow_request(max_tokens: int = 2000) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        model="models/toy_llm",
        messages=chat_messages("w " * 8),
        parameters=generation_pb2.SamplingParameters(max_tokens=max_tokens),
    )


async def test_cancelling_generate_stops_the_model(
    stub: Stub, api_key: str, toy_events: Path
) -> None:
    tag = f"generate-cancel-{time.monotonic_ns()}"
    call = stub.Generate(slow_request(), metadata=extras(delay_ms=20, tag=tag))
    received = 0
    async for response in call:
        received += response.delta.token_count
        if received >= 5:
            break
    call.cancel()
    event = await wait_for_event(toy_events, tag)
    assert event["finish_reason"] == "cancelled"
    assert event["produced"] - received <= MAX_AFTER_CANCEL, event


async def test_an_expired_deadline_is_deadline_exceeded_quickly_and_stops_the_model(
    stub: Stub, api_key: str, toy_events: Path
) -> None:
    tag = f"deadline-{time.monotonic_ns()}"
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Generate(
            slow_request(), metadata=extras(delay_ms=20, tag=tag), timeout=0.5
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The call ends at its deadline, not when the model would have finished (a bound on
    # behaviour, generous enough for a loaded machine, not a speed check).
    assert time.monotonic() - started < 5
    event = await wait_for_event(toy_events, tag)
    assert event["finish_reason"] == "cancelled"
    # 0.5 s at 20 ms a token is ~25 tokens; the model stopped right after the deadline.
    assert event["produced"] <= 25 + MAX_AFTER_CANCEL, event


class ChatSession:
    """A Chat stream: send requests, read responses per generation."""

    def __init__(self, stub: Stub, metadata: tuple[tuple[str, str], ...]) -> None:
        self.outgoing: asyncio.Queue[generation_pb2.ChatRequest | None] = asyncio.Queue()
        self.call = stub.Chat(self._requests(), metadata=metadata, timeout=60)
        self.responses: list[generation_pb2.ChatResponse] = []

    async def _requests(self) -> AsyncIterator[generation_pb2.ChatRequest]:
        while (message := await self.outgoing.get()) is not None:
            yield message

    def start(self, generation_id: str, text: str, max_tokens: int) -> None:
        self.outgoing.put_nowait(
            generation_pb2.ChatRequest(
                start=generation_pb2.StartGeneration(
                    generation_id=generation_id,
                    model="models/toy_llm",
                    messages=chat_messages(text),
                    parameters=generation_pb2.SamplingParameters(max_tokens=max_tokens),
                )
            )
        )

    def cancel(self, generation_id: str) -> None:
        self.outgoing.put_nowait(
            generation_pb2.ChatRequest(
                cancel=generation_pb2.CancelGeneration(generation_id=generation_id)
            )
        )

    async def read_until(self, done: Any) -> None:
        async for response in self.call:
            self.responses.append(response)
            if done(self):
                return

    def of(self, generation_id: str) -> list[generation_pb2.ChatResponse]:
        return [r for r in self.responses if r.generation_id == generation_id]

    def tokens(self, generation_id: str) -> int:
        return sum(r.delta.token_count for r in self.of(generation_id))

    def terminal(self, generation_id: str) -> generation_pb2.ChatResponse | None:
        ended = [r for r in self.of(generation_id) if r.WhichOneof("event") != "delta"]
        assert len(ended) <= 1
        return ended[0] if ended else None


async def test_chat_runs_two_generations_and_cancels_one(
    stub: Stub, api_key: str, toy_events: Path
) -> None:
    tag = f"chat-{time.monotonic_ns()}"
    chat = ChatSession(stub, extras(delay_ms=20, tag=tag))
    chat.start("keep", "k1 k2 k3", max_tokens=40)
    chat.start("drop", "d1 d2 d3", max_tokens=2000)
    await chat.read_until(lambda c: c.tokens("drop") >= 5)
    received_before_cancel = chat.tokens("drop")
    chat.cancel("drop")
    await chat.read_until(lambda c: c.terminal("drop") and c.terminal("keep"))
    chat.outgoing.put_nowait(None)
    async for response in chat.call:  # the stream ends once the caller half-closes
        chat.responses.append(response)

    assert [r.sequence for r in chat.responses] == list(range(1, len(chat.responses) + 1))
    keep, drop = chat.terminal("keep"), chat.terminal("drop")
    assert keep is not None and drop is not None
    assert keep.result.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert "".join(r.delta.text for r in chat.of("keep")) == "k1 k2 k3 " * 13 + "k1 "
    assert keep.result.usage.completion_tokens == 40
    assert drop.result.finish_reason == generation_pb2.FINISH_REASON_CANCELLED
    assert drop.result.usage.completion_tokens == chat.tokens("drop")
    # Both generations carry the same tag: the cancelled one is the one that did not finish.
    cancelled = await wait_for(
        toy_events, lambda e: e["tag"] == tag and e["finish_reason"] == "cancelled"
    )
    assert cancelled["produced"] - received_before_cancel <= MAX_AFTER_CANCEL, cancelled


async def test_chat_rejects_a_bad_start_without_ending_the_stream(stub: Stub, api_key: str) -> None:
    chat = ChatSession(stub, extras())
    chat.start("bad", "", max_tokens=4)
    chat.start("good", "x y", max_tokens=3)
    chat.cancel("unknown")
    chat.outgoing.put_nowait(None)
    await chat.read_until(lambda c: False)
    bad, good, unknown = chat.terminal("bad"), chat.terminal("good"), chat.terminal("unknown")
    assert bad is not None and bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert good is not None and good.result.usage.completion_tokens == 3
    assert unknown is not None and unknown.error.code == grpc.StatusCode.NOT_FOUND.value[0]
