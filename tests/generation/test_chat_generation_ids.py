"""Chat streams: a start that reuses a running generation's id never reads as that one's end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from generation_support import chat_messages, extras

from callisto.api.generation.v1 import generation_pb2, generation_pb2_grpc


async def test_a_duplicate_generation_id_is_rejected_without_ending_the_running_generation(
    stub: generation_pb2_grpc.GenerationServiceStub, api_key: str
) -> None:
    start = generation_pb2.StartGeneration(
        generation_id="g1",
        model="models/toy_llm",
        messages=chat_messages("one two"),
        parameters=generation_pb2.SamplingParameters(max_tokens=6),
    )
    first_delta = asyncio.Event()

    async def requests() -> AsyncIterator[generation_pb2.ChatRequest]:
        yield generation_pb2.ChatRequest(start=start)
        await first_delta.wait()
        yield generation_pb2.ChatRequest(start=start)

    responses: list[generation_pb2.ChatResponse] = []
    # toy_llm sleeps 30 ms before each token: the duplicate arrives while g1 streams.
    call = stub.Chat(requests(), metadata=extras(delay_ms=30), timeout=30)
    async for response in call:
        responses.append(response)
        if response.WhichOneof("event") == "delta":
            first_delta.set()
    g1 = [r.WhichOneof("event") for r in responses if r.generation_id == "g1"]
    assert g1 == ["delta"] * (len(g1) - 1) + ["result"], g1
    assert "".join(r.delta.text for r in responses if r.generation_id == "g1") == ("one two " * 3)
    [rejection] = [r for r in responses if r.generation_id == ""]
    assert rejection.error.code == 3  # INVALID_ARGUMENT
    assert "'g1' is already used" in rejection.error.message
