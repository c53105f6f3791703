"""Generate and ListModels against the real service and a real tritonserver running toy_llm."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from generation_support import chat_messages, extras, violations

from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2, generation_pb2_grpc

Stub = generation_pb2_grpc.GenerationServiceStub


async def collect(
    stub: Stub, request: generation_pb2.GenerateRequest, metadata: tuple[tuple[str, str], ...]
) -> list[generation_pb2.GenerateResponse]:
    return [response async for response in stub.Generate(request, metadata=metadata, timeout=30)]


def request_for(text: str, **parameters: object) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        model="models/toy_llm",
        messages=chat_messages(text),
        parameters=generation_pb2.SamplingParameters(**parameters),  # type: ignore[arg-type]
    )


def check_stream(responses: list[generation_pb2.GenerateResponse]) -> str:
    """Gap-free sequences, deltas only before exactly one terminal; returns the text."""
    assert [r.sequence for r in responses] == list(range(1, len(responses) + 1))
    kinds = [r.WhichOneof("event") for r in responses]
    assert kinds[:-1] == ["delta"] * (len(responses) - 1), kinds
    assert kinds[-1] in ("result", "error")
    return "".join(r.delta.text for r in responses[:-1])


async def test_generate_streams_the_exact_text_in_order_with_usage(
    stub: Stub, api_key: str
) -> None:
    responses = await collect(stub, request_for("alpha beta gamma", max_tokens=5, seed=1), extras())
    assert check_stream(responses) == "beta gamma alpha beta gamma "
    result = responses[-1].result
    assert result.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (5, 5)
    assert result.usage.total_tokens == 10
    assert sum(r.delta.token_count for r in responses[:-1]) == 5
    assert result.model == "models/toy_llm"
    assert 0 < result.ttft_ms <= result.duration_ms


async def test_the_first_token_is_sent_alone_and_later_ones_are_coalesced(
    stub: Stub, api_key: str
) -> None:
    words = " ".join(f"w{i}" for i in range(50))
    responses = await collect(stub, request_for(words, max_tokens=400), extras())
    text = check_stream(responses)
    deltas = [r.delta for r in responses[:-1]]
    assert text == "".join(f"w{i % 50} " for i in range(400))
    assert deltas[0].token_count == 1
    assert sum(d.token_count for d in deltas) == 400
    # toy_llm streams thousands of tokens per second: a 5 ms flush merges many of them.
    assert len(deltas) < 200, len(deltas)
    assert responses[-1].result.tokens_per_second > 0


async def test_a_stop_sequence_ends_the_stream_with_finish_reason_stop(
    stub: Stub, api_key: str
) -> None:
    responses = await collect(
        stub, request_for("one two three four", max_tokens=20, stop=["two thr"]), extras()
    )
    assert check_stream(responses) == "one "
    result = responses[-1].result
    assert result.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert result.usage.completion_tokens == 3


async def test_a_model_failure_mid_stream_ends_with_a_terminal_internal_error(
    stub: Stub, api_key: str
) -> None:
    responses = await collect(stub, request_for("a b c", max_tokens=10), extras(fail_after=2))
    assert check_stream(responses) == "a b "
    error = responses[-1].error
    assert error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "toy_llm failed after 2 tokens" in error.message


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (generation_pb2.GenerateRequest(model="llm", messages=chat_messages("hi")), {"model"}),
        (generation_pb2.GenerateRequest(model="models/toy_llm"), {"messages"}),
        (
            generation_pb2.GenerateRequest(
                model="models/toy_llm",
                messages=[
                    generation_pb2.ChatMessage(content="hi"),
                    generation_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="  "),
                ],
            ),
            {"messages[0].role", "messages[1].content"},
        ),
        (request_for("hi", max_tokens=-1), {"parameters.max_tokens"}),
        (request_for("hi", max_tokens=100_000), {"parameters.max_tokens"}),
        (
            request_for("hi", temperature=2.5, top_p=0.0),
            {"parameters.temperature", "parameters.top_p"},
        ),
        (request_for("hi", top_p=1.5), {"parameters.top_p"}),
        (request_for("hi", repetition_penalty=0.9), {"parameters.repetition_penalty"}),
        (request_for("hi", repetition_penalty=2.5), {"parameters.repetition_penalty"}),
        (request_for("hi", stop=["a", "b", "c", "d", "e"]), {"parameters.stop"}),
        (request_for("hi", stop=["x" * 65]), {"parameters.stop[0]"}),
    ],
    ids=[
        "model-format", "no-messages", "role-and-content", "negative-max-tokens",
        "max-tokens-limit", "temperature-and-top-p", "top-p", "low-repetition-penalty",
        "high-repetition-penalty", "too-many-stops", "long-stop",
    ],
)  # fmt: skip
async def test_bad_parameters_are_invalid_argument_with_field_violations(
    stub: Stub, api_key: str, request_: generation_pb2.GenerateRequest, fields: set[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub, request_, extras())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields <= set(violations(caught.value)), violations(caught.value)


async def test_a_prompt_longer_than_the_context_window_is_invalid_argument_on_messages(
    stub: Stub, api_key: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub, request_for("x " * 3000, max_tokens=4), extras())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(caught.value)
    assert "messages" in found and "context window" in found["messages"]


async def test_an_unknown_model_is_not_found(stub: Stub, api_key: str) -> None:
    request = generation_pb2.GenerateRequest(model="models/nope", messages=chat_messages("hi"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub, request, extras())
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_calls_without_an_api_key_are_unauthenticated(anonymous_stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(anonymous_stub, request_for("hi"), ())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_list_models_reports_tritons_repository(stub: Stub, api_key: str) -> None:
    models = {
        m.name: m
        for m in (
            await stub.ListModels(generation_pb2.ListModelsRequest(), metadata=extras())
        ).models
    }
    toy = models["models/toy_llm"]
    assert toy.ready and toy.streaming and toy.context_length == 2048
    assert list(toy.versions) == ["1"]


async def test_fifty_concurrent_streams_all_complete_correctly(stub: Stub, api_key: str) -> None:
    async def one(index: int) -> None:
        words = " ".join(f"s{index}w{i}" for i in range(7))
        responses = await collect(stub, request_for(words, max_tokens=60, seed=index), extras())
        expected = "".join(f"s{index}w{(index + i) % 7} " for i in range(60))
        assert check_stream(responses) == expected
        assert responses[-1].result.usage.completion_tokens == 60

    await asyncio.gather(*(one(i) for i in range(60)))
