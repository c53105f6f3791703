"""A fixed-seed barrage of hostile requests at every generation RPC (Generate, the bidi Chat,
ListModels, AnalyzeSentiment): each answer is OK or a client error (never INTERNAL/UNKNOWN),
every stream ends with exactly one terminal message per generation, every sentiment answer has
one label and score per text, and the service stays SERVING and still generates."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import grpc
from generation_support import chat_messages
from grpc_health.v1 import health_pb2
from hostile_support import (
    Hostile,
    Metadata,
    call_unary,
    check_rpc_error,
    check_status,
    describe,
    send_undecodable,
    stream_requests,
)

import callisto
from callisto.api.generation.v1 import generation_pb2 as pb
from callisto.api.generation.v1 import generation_pb2_grpc as pb_grpc
from callisto.client import auth_metadata, blocking_channel
from callisto.mesh.processes import ServiceProcess

MODELS = ("models/toy_llm", "models/nope", "models/../toy_llm", "models/toy_llm\x00", "models/*")
GENERATION_IDS = ("g1", "g1", "g2", "", "-x", "a" * 129, "g\x00", "g 1", "ünï")
SENTIMENT_MODELS = ("", "models/sentiment", "models/toy_llm", "models/nope", "sentiment", "models/")
EXTRAS = (None, "not json", "[]", '{"messages": []}', '{"max_tokens": -1}', "{}")
ROUNDS = 120
TIMEOUT_S = 20.0


# The callers of the barrage: two tenants, a key that does not exist, and no key at all.
def identities(api_key: str, other_api_key: str) -> list[str | None]:
    return [api_key, other_api_key, "nope", None]


def hostile_generate(source: Hostile) -> pb.GenerateRequest:
    request = source.request(pb.GenerateRequest())
    assert isinstance(request, pb.GenerateRequest)
    if source.rng.random() < 0.6:
        request.model = source.choice(MODELS)
    if source.rng.random() < 0.5:
        # Mostly valid conversations, so the hostile parameters reach the model too.
        del request.messages[:]
        request.messages.extend(chat_messages(source.string()[:200] or "hi"))
    if source.rng.random() < 0.7:
        request.parameters.max_tokens = source.rng.choice((0, 1, 4, -1, 2**31 - 1, 100_000))
    return request


def with_extras(source: Hostile, metadata: Metadata) -> Metadata:
    extras = source.rng.choice(EXTRAS)
    return metadata if extras is None else (*metadata, ("x-callisto-model-extras", extras))


def hostile_sentiment(source: Hostile) -> pb.AnalyzeSentimentRequest:
    request = source.request(pb.AnalyzeSentimentRequest())
    assert isinstance(request, pb.AnalyzeSentimentRequest)
    if source.rng.random() < 0.6:
        request.model = source.choice(SENTIMENT_MODELS)
    return request


async def sentiment(
    stub: pb_grpc.GenerationServiceAsyncStub,
    request: pb.AnalyzeSentimentRequest,
    metadata: Metadata,
) -> grpc.StatusCode:
    """A client error, or one sentiment per text with a label and a score in [-1, 1]."""
    code, reply = await call_unary(stub, "AnalyzeSentiment", request, metadata)
    if code != grpc.StatusCode.OK:
        return code
    assert isinstance(reply, pb.AnalyzeSentimentResponse)
    what = f"AnalyzeSentiment({describe(request)})"
    assert len(reply.sentiments) == len(request.texts), what
    for item in reply.sentiments:
        assert item.label != 0 and -1.0 <= item.score <= 1.0, what
    return code


async def generate(
    stub: pb_grpc.GenerationServiceAsyncStub, request: pb.GenerateRequest, metadata: Metadata
) -> None:
    """Deltas, then exactly one terminal message (result or error) last; or a client error."""
    what = f"Generate({describe(request)})"
    terminals = 0
    try:
        async for response in stub.Generate(request, metadata=metadata, timeout=TIMEOUT_S):
            assert terminals == 0, f"{what}: a message after the terminal one"
            event = response.WhichOneof("event")
            assert event is not None, f"{what}: a response without an event"
            if event == "error":
                check_status(response.error, what)
            terminals += event != "delta"
    except grpc.aio.AioRpcError as error:
        assert terminals == 0, f"{what}: a status after the terminal message"
        check_rpc_error(error, what)
        return
    assert terminals == 1, f"{what}: {terminals} terminal messages"


async def chat(stub: pb_grpc.GenerationServiceStub, source: Hostile, metadata: Metadata) -> None:
    """A malformed bidi stream: hostile starts, duplicate ids, cancels of unknown ids, requests
    with no action. Every generation ends with exactly one result or error."""
    requests: list[pb.ChatRequest] = []
    for _ in range(source.rng.randrange(0, 6)):
        roll = source.rng.random()
        if roll < 0.15:
            requests.append(pb.ChatRequest())
        elif roll < 0.35:
            cancel = pb.CancelGeneration(generation_id=source.choice(GENERATION_IDS))
            requests.append(pb.ChatRequest(cancel=cancel))
        else:
            hostile = hostile_generate(source)
            start = pb.StartGeneration(
                generation_id=source.choice(GENERATION_IDS),
                model=hostile.model,
                messages=hostile.messages,
                parameters=hostile.parameters,
            )
            requests.append(pb.ChatRequest(start=start))
    what = "Chat(" + ", ".join(describe(r)[:200] for r in requests) + ")"
    started = {r.start.generation_id for r in requests if r.HasField("start")}
    terminals: dict[str, int] = defaultdict(int)
    responses, error = await asyncio.to_thread(stream_requests, stub.Chat, requests, metadata)
    for response in responses:
        assert isinstance(response, pb.ChatResponse)
        event = response.WhichOneof("event")
        assert event is not None, f"{what}: a response without an event"
        if event == "delta":
            assert terminals[response.generation_id] == 0, f"{what}: a delta after the end"
            continue
        if event == "error":
            check_status(response.error, what)
        terminals[response.generation_id] += 1
    if error is not None:
        check_rpc_error(error, what)
        return
    for generation_id in started:
        assert terminals[generation_id] >= 1, f"{what}: {generation_id!r} never ended"


async def test_hostile_requests_get_client_errors_and_the_service_keeps_serving(
    stub: pb_grpc.GenerationServiceAsyncStub,
    generation: ServiceProcess,
    api_key: str,
    other_api_key: str,
) -> None:
    keys = identities(api_key, other_api_key)
    source = Hostile(7, ("models",), MODELS)
    clients = [await callisto.Client.connect(generation.address, api_key=key) for key in keys]
    stubs = [client.stub(pb_grpc.GenerationServiceStub) for client in clients]
    # Chat goes over blocking channels (see hostile_support.stream_requests).
    blocking = [blocking_channel(generation.address, api_key=key) for key in keys]
    chat_stubs = [pb_grpc.GenerationServiceStub(channel) for channel in blocking]
    sentiment_codes: set[grpc.StatusCode] = set()
    for round_index in range(ROUNDS):
        caller = round_index % len(keys)
        metadata = with_extras(source, ())
        caller_stub = stubs[caller]
        *_, sentiment_code = await asyncio.gather(
            generate(caller_stub, hostile_generate(source), metadata),
            chat(chat_stubs[caller], source, metadata),
            call_unary(caller_stub, "ListModels", source.request(pb.ListModelsRequest()), metadata),
            sentiment(caller_stub, hostile_sentiment(source), metadata),
        )
        sentiment_codes.add(sentiment_code)
    # The barrage reached the model as well as the validation.
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= sentiment_codes

    for channel in blocking:
        channel.close()
    for client in clients:
        await client.close()
    generation.check_alive()
    assert generation.health() == health_pb2.HealthCheckResponse.SERVING
    reply = [
        response
        async for response in stub.Generate(
            pb.GenerateRequest(
                model="models/toy_llm",
                messages=chat_messages("still there?"),
                parameters=pb.SamplingParameters(max_tokens=4),
            ),
        )
    ]
    assert reply[-1].HasField("result")


async def test_undecodable_request_bodies_are_invalid_argument_for_every_rpc(
    generation: ServiceProcess, api_key: str
) -> None:
    service = pb.DESCRIPTOR.services_by_name["GenerationService"]
    calls = await asyncio.to_thread(
        send_undecodable, generation.address, service, auth_metadata(api_key)
    )
    assert calls >= len(service.methods)
    # Without a valid key the body is never looked at.
    anonymous = auth_metadata("cal_nope")
    await asyncio.to_thread(send_undecodable, generation.address, service, anonymous, False)
    generation.check_alive()
