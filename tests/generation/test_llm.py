"""End to end with the real LLM (SmolLM2 through llama.cpp in Triton): never skipped; the session's
Triton loads `llm` whenever this test is selected (the environment builder compiles its wheel)."""

from __future__ import annotations

import pytest
from generation_support import chat_messages, extras

from callisto.api.generation.v1 import generation_pb2, generation_pb2_grpc
from callisto.mesh.triton import TritonServer


@pytest.mark.llm
async def test_the_real_llm_streams_a_non_empty_answer_with_usage(
    generation_triton: TritonServer,
    stub: generation_pb2_grpc.GenerationServiceStub,
    api_key: str,
) -> None:
    assert "llm" in generation_triton.models
    request = generation_pb2.GenerateRequest(
        model="models/llm",
        messages=chat_messages("Name a primary colour."),
        parameters=generation_pb2.SamplingParameters(max_tokens=24, temperature=0.0, seed=7),
    )
    responses = [r async for r in stub.Generate(request, metadata=extras(), timeout=120)]
    assert [r.sequence for r in responses] == list(range(1, len(responses) + 1))
    assert all(r.WhichOneof("event") == "delta" for r in responses[:-1])
    text = "".join(r.delta.text for r in responses[:-1])
    assert text.strip()
    result = responses[-1].result
    assert result.finish_reason in (
        generation_pb2.FINISH_REASON_STOP,
        generation_pb2.FINISH_REASON_LENGTH,
    )
    usage = result.usage
    assert 0 < usage.completion_tokens <= 24
    assert usage.completion_tokens >= sum(r.delta.token_count for r in responses[:-1]) > 0
    assert usage.prompt_tokens > 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert result.ttft_ms > 0 and result.duration_ms >= result.ttft_ms
    assert result.model == "models/llm"

    listed = await stub.ListModels(generation_pb2.ListModelsRequest(), metadata=extras())
    llm = next(m for m in listed.models if m.name == "models/llm")
    assert llm.ready and llm.streaming and llm.context_length == 2048


@pytest.mark.llm
async def test_a_repetition_penalty_changes_what_the_real_llm_says(
    stub: generation_pb2_grpc.GenerationServiceStub,
) -> None:
    # Greedy decoding of a prompt that invites repeating itself: the same text every time, and
    # another one once repeated tokens are penalised.
    async def say(**penalty: float) -> str:
        request = generation_pb2.GenerateRequest(
            model="models/llm",
            messages=chat_messages("Say sorry, sorry, sorry, again and again."),
            parameters=generation_pb2.SamplingParameters(
                max_tokens=40, temperature=0.0, seed=7, **penalty
            ),
        )
        responses = [r async for r in stub.Generate(request, metadata=extras(), timeout=120)]
        return "".join(r.delta.text for r in responses[:-1])

    plain = await say()
    assert plain and plain == await say(repetition_penalty=1.0)
    assert await say(repetition_penalty=1.8) != plain
