"""AnalyzeSentiment against the real generation service and a real tritonserver serving the
`sentiment` model (VADER): the tone of sales turns, batches in order, validation with field
paths, unknown and unloaded models, Triton down and back, and HTTP/JSON through real Envoy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import pytest
import pytest_asyncio
from generation_support import MODEL_ENV, generation_env, violations

import callisto
from callisto import errors
from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2, generation_pb2_grpc
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import ServiceProcess, free_port
from callisto.mesh.triton import TritonServer, default_model_repository, ensure_triton_environment

Stub = generation_pb2_grpc.GenerationServiceStub

POSITIVE = "We'd be delighted to sign, this offer is excellent"
NEUTRAL = "The shipment arrives Tuesday"
NEGATIVE = "This price is unacceptable and your support has been terrible"
EMBEDDER_ENV = {"CALLISTO_EMBEDDER_THREADS": "1"}


def request(*texts: str, model: str = "") -> generation_pb2.AnalyzeSentimentRequest:
    return generation_pb2.AnalyzeSentimentRequest(texts=list(texts), model=model)


async def field_violations(
    stub: Stub, message: generation_pb2.AnalyzeSentimentRequest
) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AnalyzeSentiment(message, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    return violations(caught.value)


async def test_scores_follow_the_tone_of_sales_turns(generation_client: callisto.Client) -> None:
    positive, neutral, negative = await generation_client.generation.analyze_sentiment(
        [POSITIVE, NEUTRAL, NEGATIVE], timeout=30
    )
    assert positive.label == common_pb2.SENTIMENT_LABEL_POSITIVE
    assert positive.score > 0.3
    assert neutral.label == common_pb2.SENTIMENT_LABEL_NEUTRAL
    assert -0.05 < neutral.score < 0.05
    assert negative.label == common_pb2.SENTIMENT_LABEL_NEGATIVE
    assert negative.score < -0.3


async def test_the_response_names_the_default_model_and_a_bare_name_is_accepted(
    stub: Stub, generation_client: callisto.Client
) -> None:
    response = await stub.AnalyzeSentiment(request(POSITIVE), timeout=30)
    assert response.model == "models/sentiment"
    named = await stub.AnalyzeSentiment(request(POSITIVE, model="models/sentiment"), timeout=30)
    assert list(named.sentiments) == list(response.sentiments)
    bare = await generation_client.generation.analyze_sentiment(
        [POSITIVE], model="sentiment", timeout=30
    )
    assert bare == list(response.sentiments)


async def test_empty_and_blank_texts_are_neutral_zero(stub: Stub) -> None:
    response = await stub.AnalyzeSentiment(request("", "   \n"), timeout=30)
    assert [(s.label, s.score) for s in response.sentiments] == [
        (common_pb2.SENTIMENT_LABEL_NEUTRAL, 0.0)
    ] * 2


async def test_64_texts_at_once_come_back_in_the_order_given(stub: Stub) -> None:
    tones = [POSITIVE, NEUTRAL, NEGATIVE]
    # Distinct texts (a numbered prefix) so a reordering anywhere in the batch would show.
    texts = [f"Note {index}: {tones[index % 3]}" for index in range(64)]
    batch = await stub.AnalyzeSentiment(request(*texts), timeout=60)
    assert len(batch.sentiments) == 64
    singles = await asyncio.gather(
        *(stub.AnalyzeSentiment(request(text), timeout=60) for text in texts[:6])
    )
    assert [single.sentiments[0] for single in singles] == list(batch.sentiments[:6])
    labels = [s.label for s in batch.sentiments]
    expected = [
        common_pb2.SENTIMENT_LABEL_POSITIVE,
        common_pb2.SENTIMENT_LABEL_NEUTRAL,
        common_pb2.SENTIMENT_LABEL_NEGATIVE,
    ]
    assert labels == [expected[index % 3] for index in range(64)]


async def test_concurrent_callers_each_get_their_own_answers(stub: Stub) -> None:
    texts = [POSITIVE, NEUTRAL, NEGATIVE] * 8
    responses = await asyncio.gather(
        *(stub.AnalyzeSentiment(request(text), timeout=60) for text in texts)
    )
    reference = await stub.AnalyzeSentiment(request(POSITIVE, NEUTRAL, NEGATIVE), timeout=60)
    for index, response in enumerate(responses):
        assert list(response.sentiments) == [reference.sentiments[index % 3]]


async def test_texts_are_validated_with_field_paths(stub: Stub) -> None:
    assert "texts" in await field_violations(stub, request())
    assert "texts" in await field_violations(stub, request(*["fine"] * 65))
    long = await field_violations(stub, request("fine", "", "x" * 16385))
    assert set(long) == {"texts[2]"}
    # 17 texts at the per-text limit are 278528 characters: over the 262144 in all.
    assert set(await field_violations(stub, request(*["y" * 16384] * 17))) == {"texts"}
    assert set(await field_violations(stub, request("ok", "bin\x00ary"))) == {"texts[1]"}
    # Every violation at once, with the model's.
    both = await field_violations(stub, request("z" * 16385, model="sentiment"))
    assert set(both) == {"texts[0]", "model"}


async def test_the_limits_themselves_are_accepted(stub: Stub) -> None:
    # 16 texts of 16384 characters: 262144 in all, exactly the limit.
    response = await stub.AnalyzeSentiment(request(*["good " * 3276 + "good"] * 16), timeout=60)
    assert len(response.sentiments) == 16
    assert all(s.label == common_pb2.SENTIMENT_LABEL_POSITIVE for s in response.sentiments)


@pytest.mark.parametrize("model", ["sentiment", "models/", "models/a b", "other/sentiment"])
async def test_a_malformed_model_is_invalid_argument(stub: Stub, model: str) -> None:
    assert set(await field_violations(stub, request(POSITIVE, model=model))) == {"model"}


async def test_a_model_that_is_not_a_sentiment_model_is_invalid_argument(stub: Stub) -> None:
    assert set(await field_violations(stub, request(POSITIVE, model="models/toy_llm"))) == {"model"}


async def test_an_unknown_model_is_not_found(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AnalyzeSentiment(request(POSITIVE, model="models/no_such_model"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_model_in_the_repository_but_not_loaded_is_unavailable_as_list_models_says(
    stub: Stub,
) -> None:
    # The generation tests' Triton loads toy_llm and sentiment only; embedder stays unloaded.
    listed = await stub.ListModels(generation_pb2.ListModelsRequest(), timeout=30)
    ready = {model.name: model.ready for model in listed.models}
    assert ready["models/embedder"] is False
    assert ready["models/sentiment"] is True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AnalyzeSentiment(request(POSITIVE, model="models/embedder"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert errors.from_rpc_error(caught.value).retry_delay is not None


async def test_a_caller_without_a_key_is_refused(
    anonymous_stub: generation_pb2_grpc.GenerationServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await anonymous_stub.AnalyzeSentiment(request(POSITIVE), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- over HTTP/JSON through the real Envoy gateway ----------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def http(generation_gateway: EnvoyGateway, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=generation_gateway.http_url,
        headers={"authorization": f"Bearer {api_key}"},
        timeout=30,
    ) as client:
        yield client


async def test_sentiment_over_http_json_through_envoy(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/sentiment:analyze", json={"texts": [POSITIVE, NEGATIVE]})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["model"] == "models/sentiment"
    positive, negative = body["sentiments"]
    assert positive["label"] == "SENTIMENT_LABEL_POSITIVE" and positive["score"] > 0.3
    assert negative["label"] == "SENTIMENT_LABEL_NEGATIVE" and negative["score"] < -0.3


async def test_invalid_sentiment_requests_over_http_are_400_with_field_violations(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post("/v1/sentiment:analyze", json={"texts": ["ok", "x" * 16385]})
    assert response.status_code == 400, response.text
    details = response.json()["details"]
    fields = [v["field"] for d in details for v in d.get("fieldViolations", [])]
    assert fields == ["texts[1]"]


# --- a Triton of this module's own: another non-streaming model; down and back -------------

OWN_MODELS = ["sentiment", "embedder"]


@pytest.fixture(scope="module")
def outage_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """sentiment and the embedder (a loaded, non-streaming model of another contract); the
    outage test stops and restarts it."""
    workdir = tmp_path_factory.mktemp("sentiment-outage-triton")
    environment = ensure_triton_environment(with_llm=False, with_embedder=True)
    server = TritonServer(environment, log_path=workdir / "tritonserver.log")
    server.start(default_model_repository(), OWN_MODELS, {**MODEL_ENV, **EMBEDDER_ENV})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def outage_generation(
    outage_triton: TritonServer,
    service_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    logs = tmp_path_factory.mktemp("sentiment-outage-generation")
    service = ServiceProcess(
        "generation",
        free_port(),
        # No toy_llm here: health waits for the sentiment model instead.
        env={
            **generation_env(service_env, outage_triton.grpc_url),
            "CALLISTO_GENERATION_DEFAULT_MODEL": "models/sentiment",
        },
        log_path=logs / "generation.log",
    )
    with service.serving(60):
        yield service


async def test_a_loaded_model_of_another_contract_is_invalid_argument_on_model(
    outage_generation: ServiceProcess, api_key: str
) -> None:
    async with await callisto.Client.connect(outage_generation.address, api_key=api_key) as client:
        stub = client.stub(generation_pb2_grpc.GenerationServiceStub)
        listed = await stub.ListModels(generation_pb2.ListModelsRequest(), timeout=30)
        embedder = next(m for m in listed.models if m.name == "models/embedder")
        assert embedder.ready and not embedder.streaming
        wrong = await field_violations(stub, request(POSITIVE, model="models/embedder"))
        assert set(wrong) == {"model"}
        right = await stub.AnalyzeSentiment(request(POSITIVE), timeout=30)
        assert right.sentiments[0].label == common_pb2.SENTIMENT_LABEL_POSITIVE


async def test_triton_down_is_unavailable_with_retry_info_and_it_recovers(
    outage_triton: TritonServer,
    outage_generation: ServiceProcess,
    api_key: str,
) -> None:
    async with await callisto.Client.connect(outage_generation.address, api_key=api_key) as client:
        stub = client.stub(generation_pb2_grpc.GenerationServiceStub)
        before = await stub.AnalyzeSentiment(request(NEGATIVE), timeout=30)
        assert before.sentiments[0].label == common_pb2.SENTIMENT_LABEL_NEGATIVE

        await asyncio.to_thread(outage_triton.stop)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.AnalyzeSentiment(request(NEGATIVE), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert errors.from_rpc_error(caught.value).retry_delay is not None

        # Restarted on the same ports: the service finds it again by itself.
        await asyncio.to_thread(
            outage_triton.start,
            default_model_repository(),
            OWN_MODELS,
            {**MODEL_ENV, **EMBEDDER_ENV},
        )
        assert list((await scored_once_back(stub)).sentiments) == list(before.sentiments)


async def scored_once_back(stub: Stub) -> generation_pb2.AnalyzeSentimentResponse:
    """The first answer after a restart: the channel reconnects within its backoff (<= 1 s),
    so a few UNAVAILABLE answers may come first, each with RetryInfo."""
    last: grpc.aio.AioRpcError | None = None
    for _ in range(60):
        try:
            return await stub.AnalyzeSentiment(request(NEGATIVE), timeout=30)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            last = error
            await asyncio.sleep(0.25)
    raise AssertionError(f"never answered after the restart: {last}")
