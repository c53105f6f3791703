"""The models of deploy/triton, served by a real tritonserver, over Triton's gRPC protocol."""

from __future__ import annotations

import asyncio
import json
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

from callisto.mesh.triton import TritonServer


@dataclass
class Stream:
    """Everything one streamed request returned."""

    tokens: list[str] = field(default_factory=list)
    prompt_tokens: int = -1
    completion_tokens: int = -1
    finish_reason: str = ""
    error: str = ""

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def _request(body: dict[str, Any] | str) -> list[grpcclient.InferInput]:
    raw = body if isinstance(body, str) else json.dumps(body)
    tensor = grpcclient.InferInput("request", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([raw.encode("utf-8")], dtype=np.object_))
    return [tensor]


def _scalar(result: grpcclient.InferResult, name: str) -> Any:
    return result.as_numpy(name).reshape(-1)[0]


class StreamClient:
    """A tritonclient gRPC stream whose responses land in a queue."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def send(self, model: str, body: dict[str, Any] | str) -> None:
        self.client.async_stream_infer(model, _request(body), enable_empty_final_response=True)

    def next(self, timeout: float = 30.0) -> tuple[Any, Any]:
        return self.responses.get(timeout=timeout)

    def collect(self, timeout: float = 60.0) -> Stream:
        out = Stream()
        deadline = time.monotonic() + timeout
        while True:
            result, error = self.next(timeout=max(0.1, deadline - time.monotonic()))
            if error is not None:
                out.error = str(error)
                return out
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            if response.outputs:
                text = _scalar(result, "text_output").decode("utf-8")
                out.prompt_tokens = int(_scalar(result, "prompt_tokens"))
                out.completion_tokens = int(_scalar(result, "completion_tokens"))
                reason = _scalar(result, "finish_reason").decode("utf-8")
                if reason:
                    out.finish_reason = reason
                if text:
                    out.tokens.append(text)
            if final:
                return out

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def _generate(url: str, model: str, body: dict[str, Any] | str) -> Stream:
    stream = StreamClient(url)
    try:
        stream.send(model, body)
        return stream.collect()
    finally:
        stream.close()


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
        **extra,
    }


def test_toy_llm_streams_the_exact_token_sequence_with_usage(triton: TritonServer) -> None:
    result = _generate(triton.grpc_url, "toy_llm", _chat("alpha beta gamma", max_tokens=5, seed=1))
    assert result.error == ""
    assert result.tokens == ["beta ", "gamma ", "alpha ", "beta ", "gamma "]
    assert (result.prompt_tokens, result.completion_tokens) == (5, 5)
    assert result.finish_reason == "length"


def test_toy_llm_stops_at_a_stop_sequence_spanning_tokens(triton: TritonServer) -> None:
    body = _chat("one two three four", max_tokens=20, stop=["two thr"])
    result = _generate(triton.grpc_url, "toy_llm", body)
    assert result.error == ""
    assert result.text == "one "
    assert result.finish_reason == "stop"
    assert result.completion_tokens == 3


def test_cancelling_the_stream_stops_token_production(
    triton: TritonServer, toy_events: Path
) -> None:
    tag = f"cancel-{time.monotonic_ns()}"
    stream = StreamClient(triton.grpc_url)
    stream.send("toy_llm", _chat("w " * 8, max_tokens=2000, delay_ms=20, tag=tag))
    received = 0
    for _ in range(3):
        _, error = stream.next()
        assert error is None
        received += 1
    stream.close(cancel=True)
    deadline = time.monotonic() + 10
    event: dict[str, Any] | None = None
    while event is None and time.monotonic() < deadline:
        time.sleep(0.1)
        if toy_events.exists():
            for line in toy_events.read_text().splitlines():
                if json.loads(line)["tag"] == tag:
                    event = json.loads(line)
    assert event is not None, "toy_llm never finished the cancelled request"
    assert event["finish_reason"] == "cancelled"
    assert event["produced"] - received <= 3


def test_a_model_failure_mid_stream_arrives_as_an_internal_error(triton: TritonServer) -> None:
    result = _generate(triton.grpc_url, "toy_llm", _chat("a b c", max_tokens=10, fail_after=2))
    assert result.tokens == ["a ", "b "]
    assert "internal: toy_llm failed after 2 tokens" in result.error


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "invalid_argument: request is not valid JSON"),
        ({"messages": [], "max_tokens": 4}, "invalid_argument: messages must be a non-empty list"),
        (_chat("hi", max_tokens=0), "invalid_argument: max_tokens must be >= 1"),
        (_chat("x " * 3000, max_tokens=4), "invalid_argument: prompt is 3002 tokens; the context"),
    ],
)
def test_bad_requests_are_rejected_with_invalid_argument(
    triton: TritonServer, body: dict[str, Any] | str, message: str
) -> None:
    result = _generate(triton.grpc_url, "toy_llm", body)
    assert message in result.error
    assert result.tokens == []


def _embed(url: str, texts: list[str]) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("text", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    try:
        vectors: np.ndarray = client.infer("embedder", [tensor]).as_numpy("embedding")
    finally:
        client.close()
    return vectors


def test_embedder_returns_normalised_vectors_that_rank_by_meaning(triton: TritonServer) -> None:
    vectors = _embed(
        triton.grpc_url,
        [
            "The cat sits on the mat.",
            "A kitten is resting on a rug.",
            "Quarterly revenue grew by eight percent.",
        ],
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > unrelated + 0.2


async def test_concurrent_embedding_requests_are_batched_together(triton: TritonServer) -> None:
    client = aioclient.InferenceServerClient(triton.grpc_url)
    before = await client.get_inference_statistics("embedder")

    async def embed(i: int) -> np.ndarray:
        tensor = aioclient.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[f"sentence number {i}".encode()]], dtype=np.object_))
        vector: np.ndarray = (await client.infer("embedder", [tensor])).as_numpy("embedding")
        return vector

    try:
        vectors = await asyncio.gather(*(embed(i) for i in range(48)))
        after = await client.get_inference_statistics("embedder")
    finally:
        await client.close()
    assert all(v.shape == (1, 384) for v in vectors)
    stats_before, stats_after = before.model_stats[0], after.model_stats[0]
    inferences = stats_after.inference_count - stats_before.inference_count
    executions = stats_after.execution_count - stats_before.execution_count
    assert inferences == 48
    assert executions < inferences / 2, f"{executions} executions for {inferences} inferences"


@pytest.mark.llm
def test_llm_streams_an_answer_with_usage_counts(triton: TritonServer) -> None:
    if "llm" not in triton.models:
        pytest.fail("the llama-cpp-python wheel is not built; the real LLM was not loaded")
    body = _chat("Name a primary colour.", max_tokens=24, temperature=0.0, seed=7)
    result = _generate(triton.grpc_url, "llm", body)
    assert result.error == ""
    assert result.text.strip()
    assert result.finish_reason in {"stop", "length"}
    assert 0 < result.completion_tokens <= 24
    assert result.completion_tokens >= len(result.tokens)
    assert result.prompt_tokens > 5


@pytest.mark.llm
def test_llm_reports_its_context_window_in_the_model_config(triton: TritonServer) -> None:
    if "llm" not in triton.models:
        pytest.fail("the llama-cpp-python wheel is not built; the real LLM was not loaded")
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    config = client.get_model_config("llm", as_json=True)["config"]
    client.close()
    assert int(config["parameters"]["context_length"]["string_value"]) == 2048


@pytest.mark.llm
def test_llm_serves_concurrent_streams_one_after_another(triton: TritonServer) -> None:
    if "llm" not in triton.models:
        pytest.fail("the llama-cpp-python wheel is not built; the real LLM was not loaded")
    streams = [StreamClient(triton.grpc_url) for _ in range(3)]
    try:
        for i, stream in enumerate(streams):
            stream.send("llm", _chat(f"Say a word about number {i}.", max_tokens=6, seed=i))
        results = [stream.collect() for stream in streams]
    finally:
        for stream in streams:
            stream.close()
    for result in results:
        assert result.error == ""
        assert result.text.strip()
        assert result.finish_reason in {"stop", "length"}
        assert 0 < result.completion_tokens <= 6


@pytest.mark.llm
def test_llm_rejects_a_prompt_longer_than_its_context_window(triton: TritonServer) -> None:
    if "llm" not in triton.models:
        pytest.fail("the llama-cpp-python wheel is not built; the real LLM was not loaded")
    result = _generate(triton.grpc_url, "llm", _chat("word " * 3000, max_tokens=4))
    assert result.error.startswith("invalid_argument: prompt is ")
    assert result.error.endswith("tokens; the context window is 2048")


@pytest.mark.llm
def test_llm_keeps_text_held_back_for_a_stop_sequence_when_generation_ends(
    triton: TritonServer,
) -> None:
    if "llm" not in triton.models:
        pytest.fail("the llama-cpp-python wheel is not built; the real LLM was not loaded")
    # Greedy decoding: the same request gives the same text, with or without the stop list.
    ended = _chat("Reply with the single word: yes", max_tokens=64, temperature=0.0, seed=3)
    budget = _chat("Count from one to twenty in words.", max_tokens=5, temperature=0.0, seed=3)
    for body, finish_reason in ((ended, "stop"), (budget, "length")):
        plain = _generate(triton.grpc_url, "llm", body)
        assert plain.error == ""
        assert plain.finish_reason == finish_reason, plain
        assert len(plain.text) >= 2
        # The answer ends with the first two characters of this stop sequence, so they are
        # held back until the generation ends; they must still arrive.
        stop = plain.text[-2:] + "\N{SNOWMAN}"
        held = _generate(triton.grpc_url, "llm", {**body, "stop": [stop]})
        assert held.error == ""
        assert held.finish_reason == finish_reason
        assert held.text == plain.text
