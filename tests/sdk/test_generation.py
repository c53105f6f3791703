"""Generation helpers against the real generation service and tritonserver's toy_llm:
`generate` yields deltas then the result, deadlines and errors raise typed errors, and a chat
session runs generations side by side and cancels one mid-stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

import callisto
from callisto import errors
from callisto.api.generation.v1 import generation_pb2 as pb
from callisto.mesh.processes import ServiceProcess

pytestmark = pytest.mark.timeout(600)


def slow(delay_ms: int) -> tuple[tuple[str, str], ...]:
    """toy_llm's extra request fields: sleep `delay_ms` before each token."""
    return (("x-callisto-model-extras", json.dumps({"delay_ms": delay_ms})),)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gen(sdk_generation: ServiceProcess, api_key: str) -> AsyncIterator[callisto.Client]:
    async with await callisto.Client.connect(sdk_generation.address, api_key=api_key) as client:
        yield client


async def test_generate_yields_deltas_then_the_result(gen: callisto.Client) -> None:
    generation = gen.generation.generate(
        "alpha beta gamma", model="toy_llm", system="be brief", max_tokens=5, seed=1
    )
    items = [item async for item in generation]
    assert all(isinstance(item, pb.TokenDelta) for item in items[:-1])
    result = items[-1]
    assert isinstance(result, pb.GenerationResult)
    assert generation.text == "beta gamma alpha beta gamma "
    assert result.finish_reason == pb.FINISH_REASON_LENGTH
    assert result.usage.completion_tokens == 5
    assert generation.result is result


async def test_complete_runs_a_generation_to_its_result(gen: callisto.Client) -> None:
    generation = gen.generation.generate("one two three four", max_tokens=20, stop=["two thr"])
    result = await generation.complete()
    assert generation.text == "one "
    assert result.finish_reason == pb.FINISH_REASON_STOP


async def test_an_invalid_request_raises_invalid_argument_with_violations(
    gen: callisto.Client,
) -> None:
    with pytest.raises(errors.InvalidArgument) as raised:
        await gen.generation.generate("x", model="not a model name").complete()
    assert "model" in raised.value.field_violations


async def test_a_generation_deadline_raises_deadline_exceeded(gen: callisto.Client) -> None:
    with pytest.raises(errors.DeadlineExceeded):
        await gen.generation.generate(
            "w " * 8, max_tokens=2000, timeout=0.5, metadata=slow(20)
        ).complete()


async def test_chat_runs_two_generations_and_cancels_one(gen: callisto.Client) -> None:
    async with gen.generation.chat(metadata=slow(20)) as chat:
        keep = await chat.start("k1 k2 k3", max_tokens=40)
        drop = await chat.start("d1 d2 d3", max_tokens=2000)
        tokens = 0
        async for item in drop:
            if isinstance(item, pb.TokenDelta):
                tokens += item.token_count
                if tokens >= 5:
                    await drop.cancel()
        kept = await keep.complete()
    assert drop.result is not None
    assert drop.result.finish_reason == pb.FINISH_REASON_CANCELLED
    assert drop.result.usage.completion_tokens < 2000
    assert kept.finish_reason == pb.FINISH_REASON_LENGTH
    assert keep.text == "k1 k2 k3 " * 13 + "k1 "


async def test_a_bad_chat_start_raises_on_its_generation_only(gen: callisto.Client) -> None:
    async with gen.generation.chat() as chat:
        bad = await chat.start("", max_tokens=4)
        good = await chat.start("x y", max_tokens=3)
        with pytest.raises(errors.InvalidArgument):
            await bad.complete()
        assert (await good.complete()).usage.completion_tokens == 3


async def test_list_models_names_the_served_models(gen: callisto.Client) -> None:
    models = await gen.generation.list_models()
    assert "models/toy_llm" in [model.name for model in models]
