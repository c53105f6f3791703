"""The `sentiment` model of deploy/triton (VADER, Python backend, dynamic batching), served by a
real tritonserver of this module's own and called over Triton's gRPC protocol with ModelInfer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from callisto.mesh.triton import TritonServer, default_model_repository, ensure_triton_environment

POSITIVE = "We'd be delighted to sign, this offer is excellent"
NEUTRAL = "The shipment arrives Tuesday"
NEGATIVE = "This price is unacceptable and your support has been terrible"


@pytest.fixture(scope="module")
def sentiment_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    environment = ensure_triton_environment(with_llm=False, with_embedder=False)
    workdir: Path = tmp_path_factory.mktemp("sentiment-triton")
    server = TritonServer(environment, log_path=workdir / "tritonserver.log")
    server.start(default_model_repository(), ["sentiment"])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(sentiment_triton: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(sentiment_triton.grpc_url) as triton:
        yield triton


def text_input(texts: list[str], module: object = grpcclient) -> grpcclient.InferInput:
    tensor = module.InferInput("text", [len(texts), 1], "BYTES")  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_))
    return tensor  # type: ignore[no-any-return]


def score(client: grpcclient.InferenceServerClient, texts: list[str]) -> list[tuple[str, float]]:
    result = client.infer("sentiment", [text_input(texts)])
    labels = result.as_numpy("label")
    scores = result.as_numpy("score")
    assert labels is not None and scores is not None
    assert labels.shape == (len(texts), 1) and scores.shape == (len(texts), 1)
    assert scores.dtype == np.float32
    return [
        (label.decode(), float(value))
        for label, value in zip(labels.reshape(-1), scores.reshape(-1), strict=True)
    ]


def test_labels_and_scores_follow_the_tone_of_sales_turns(
    client: grpcclient.InferenceServerClient,
) -> None:
    (pos_label, pos), (neu_label, neu), (neg_label, neg) = score(
        client, [POSITIVE, NEUTRAL, NEGATIVE]
    )
    assert pos_label == "positive" and pos > 0.3
    assert neu_label == "neutral" and -0.05 < neu < 0.05
    assert neg_label == "negative" and neg < -0.3


def test_labels_agree_with_the_score_and_its_neutral_band(
    client: grpcclient.InferenceServerClient,
) -> None:
    texts = [POSITIVE, NEUTRAL, NEGATIVE, "good", "not bad", "ok", "awful!!!", "meh", "fine :)"]
    for label, value in score(client, texts):
        assert -1.0 <= value <= 1.0
        expected = "positive" if value >= 0.05 else "negative" if value <= -0.05 else "neutral"
        assert label == expected, (label, value)


def test_empty_and_blank_texts_are_neutral_zero(client: grpcclient.InferenceServerClient) -> None:
    assert score(client, ["", "  \t\n"]) == [("neutral", 0.0), ("neutral", 0.0)]


def test_a_text_past_the_limit_is_cut_before_scoring(
    client: grpcclient.InferenceServerClient,
) -> None:
    # The first 16384 characters are neutral; what follows them (the model's max_chars) is not read.
    head = ("The shipment arrives Tuesday. " * 600)[:16384]
    [(label, value)] = score(client, [head + " terrible awful horrible" * 50])
    assert (label, value) == ("neutral", 0.0)
    [(label, value)] = score(client, [head[:-200] + " terrible awful horrible" * 5])
    assert label == "negative" and value < -0.3


def test_a_full_batch_of_64_keeps_the_order(client: grpcclient.InferenceServerClient) -> None:
    tones = [POSITIVE, NEUTRAL, NEGATIVE]
    results = score(client, [tones[i % 3] for i in range(64)])
    assert [label for label, _ in results] == [
        ["positive", "neutral", "negative"][i % 3] for i in range(64)
    ]


def test_a_batch_larger_than_max_batch_size_is_refused(
    client: grpcclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer("sentiment", [text_input(["x"] * 65)])
    assert "batch" in str(caught.value).lower()


def test_the_model_batches_dynamically_and_is_not_decoupled(
    client: grpcclient.InferenceServerClient,
) -> None:
    config = client.get_model_config("sentiment", as_json=True)["config"]
    assert config["max_batch_size"] == 64
    assert config["dynamic_batching"]["preferred_batch_size"] == [16, 64]
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) <= 5000
    assert not config.get("model_transaction_policy", {}).get("decoupled", False)


async def test_concurrent_single_text_requests_each_get_their_own_answer(
    sentiment_triton: TritonServer,
) -> None:
    texts = [f"{i}: {[POSITIVE, NEUTRAL, NEGATIVE][i % 3]}" for i in range(48)]
    async with aioclient.InferenceServerClient(sentiment_triton.grpc_url) as triton:
        results = await asyncio.gather(
            *(triton.infer("sentiment", [text_input([t], aioclient)]) for t in texts)
        )
    labels = [result.as_numpy("label").reshape(-1)[0].decode() for result in results]
    assert labels == [["positive", "neutral", "negative"][i % 3] for i in range(48)]
