"""A real Envoy in front of a real grpc.aio server: what HTTP, gRPC and gRPC-Web clients see."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from gateway_test_backend import SERVICE, GatewayTestBackend
from gateway_test_support import ALLOWED_ORIGIN, HEALTH_ONLY_SERVICE, gateway_for
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callisto import errors
from callisto.api.generation.v1 import generation_pb2, generation_pb2_grpc
from callisto.gateway.config import HEALTH_SERVICE_HEADER
from callisto.mesh.gateway import EnvoyGateway

GENERATE = "/v1/models/echo:generate"
PROMPT = {"messages": [{"role": "ROLE_USER", "content": "hi"}]}


def grpcurl_binary() -> str:
    return str(Path(sys.executable).parent / "grpcurl")


async def test_server_stream_is_newline_delimited_json_by_default(gateway: EnvoyGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.post(GENERATE, json=PROMPT)
    assert response.status_code == 200
    lines = response.text.strip().split("\n")
    events = [json.loads(line) for line in lines]
    assert [e["delta"]["text"] for e in events[:3]] == ["token-1", "token-2", "token-3"]
    assert events[3]["result"]["finishReason"] == "FINISH_REASON_STOP"
    # Sequence numbers are int64: the proto3 JSON mapping writes them as strings.
    assert [e["sequence"] for e in events] == ["1", "2", "3", "4"]


async def test_server_stream_is_server_sent_events_when_accepted(gateway: EnvoyGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.post(GENERATE, json=PROMPT, headers={"accept": "text/event-stream"})
    assert response.status_code == 200
    frames = [frame for frame in response.text.split("\n\n") if frame]
    assert all(frame.startswith("data: ") for frame in frames), response.text
    events = [json.loads(frame.removeprefix("data: ")) for frame in frames]
    assert [e["sequence"] for e in events] == ["1", "2", "3", "4"]


async def test_stream_messages_arrive_one_by_one(gateway: EnvoyGateway) -> None:
    body = {**PROMPT, "parameters": {"maxTokens": 5}}
    async with (
        httpx.AsyncClient(base_url=gateway.http_url) as client,
        client.stream("POST", GENERATE, json=body) as response,
    ):
        lines = [json.loads(line) async for line in response.aiter_lines() if line]
    assert len(lines) == 6


async def test_unary_rpc_is_transcoded_with_primitive_fields(gateway: EnvoyGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.get("/v1/models", params={"utm_source": "ignored"})
    assert response.status_code == 200
    models = response.json()["models"]
    assert models[0]["name"] == "models/echo"
    assert models[0]["contextLength"] == 0  # always_print_primitive_fields


async def test_invalid_argument_becomes_400_with_bad_request_detail(
    gateway: EnvoyGateway,
) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.post(GENERATE, json={"messages": []})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    status = response.json()
    assert status["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status["message"] == "messages is empty"
    [detail] = status["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert detail["fieldViolations"][0]["field"] == "messages"


@pytest.mark.parametrize(
    ("model", "headers", "http_status", "grpc_code"),
    [
        ("models/missing", {}, 404, grpc.StatusCode.NOT_FOUND),
        ("models/busy", {}, 409, grpc.StatusCode.ABORTED),
        ("models/private", {}, 401, grpc.StatusCode.UNAUTHENTICATED),
        ("models/private", {"authorization": "Bearer wrong"}, 401, grpc.StatusCode.UNAUTHENTICATED),
        ("models/private", {"authorization": "Bearer let-me-in"}, 200, grpc.StatusCode.OK),
    ],
)
async def test_grpc_status_becomes_http_status_with_json_body(
    gateway: EnvoyGateway,
    model: str,
    headers: dict[str, str],
    http_status: int,
    grpc_code: grpc.StatusCode,
) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.post(f"/v1/{model}:generate", json=PROMPT, headers=headers)
    assert response.status_code == http_status
    if grpc_code != grpc.StatusCode.OK:
        assert response.json()["code"] == grpc_code.value[0]


async def test_retry_info_and_error_info_are_rendered_as_json(gateway: EnvoyGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.post("/v1/models/busy:generate", json=PROMPT)
    retry_info, error_info = response.json()["details"]
    assert retry_info == {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}
    assert error_info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert error_info["reason"] == "MODEL_BUSY"


async def test_not_found_becomes_404(gateway: EnvoyGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.post("/v1/models/missing:generate", json=PROMPT)
    assert response.status_code == 404
    assert response.json()["code"] == grpc.StatusCode.NOT_FOUND.value[0]


async def test_unknown_http_path_is_404_not_forwarded(gateway: EnvoyGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.get("/v1/no-such-thing")
    assert response.status_code == 404


async def test_error_after_stream_started_arrives_in_http1_trailers(
    gateway: EnvoyGateway,
) -> None:
    # Once the 200 and the first message are out, the gRPC status can only travel as trailers:
    # the JSON body stays a clean stream of messages and the chunked body ends with
    # grpc-status / grpc-message / grpc-status-details-bin (raw, not converted to JSON).
    body = json.dumps(PROMPT).encode()
    reader, writer = await asyncio.open_connection(
        gateway.spec.listen_address, gateway.spec.listen_port
    )
    writer.write(
        b"POST /v1/models/fail-midstream:generate HTTP/1.1\r\nhost: gateway\r\n"
        b"content-type: application/json\r\nconnection: close\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, chunked = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b'"text":"token-1"' in chunked
    assert b'"result"' not in chunked
    trailers = chunked.partition(b"\r\n0\r\n")[2]
    assert b"grpc-status: 10" in trailers
    assert b"grpc-message: the model failed mid-stream" in trailers


async def test_grpc_passes_through_with_deadline_and_trace_context(
    gateway_channel: grpc.aio.Channel,
) -> None:
    stub = generation_pb2_grpc.GenerationServiceStub(gateway_channel)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    call = stub.Generate(
        generation_pb2.GenerateRequest(
            model="models/echo",
            messages=[generation_pb2.ChatMessage(content="hi")],
        ),
        timeout=5,
        metadata=(("traceparent", traceparent),),
    )
    responses = [response async for response in call]
    assert [r.sequence for r in responses] == [1, 2, 3, 4]
    assert responses[-1].HasField("result")


async def test_grpc_error_detail_passes_through(gateway_channel: grpc.aio.Channel) -> None:
    stub = generation_pb2_grpc.GenerationServiceStub(gateway_channel)
    try:
        async for _ in stub.Generate(generation_pb2.GenerateRequest(model="models/echo")):
            pass
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Decoded from the grpc-status-details-bin trailer, which Envoy passed through untouched.
        assert list(errors.from_rpc_error(error).field_violations) == ["messages"]
    else:
        raise AssertionError("expected INVALID_ARGUMENT")


async def test_grpcurl_lists_services_through_reflection(gateway: EnvoyGateway) -> None:
    listing = await asyncio.to_thread(
        subprocess.run,
        [grpcurl_binary(), "-plaintext", gateway.grpc_target, "list"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert "callisto.generation.v1.GenerationService" in listing.stdout.split()
    call = await asyncio.to_thread(
        subprocess.run,
        [
            grpcurl_binary(),
            "-plaintext",
            "-d",
            "{}",
            gateway.grpc_target,
            "callisto.generation.v1.GenerationService/ListModels",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert json.loads(call.stdout)["models"][0]["name"] == "models/echo"


async def test_health_is_routed(gateway: EnvoyGateway) -> None:
    health = await asyncio.to_thread(
        subprocess.run,
        [grpcurl_binary(), "-plaintext", gateway.grpc_target, "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert json.loads(health.stdout)["status"] == "SERVING"


def grpc_web_frames(body: bytes) -> list[tuple[int, bytes]]:
    frames: list[tuple[int, bytes]] = []
    while body:
        flag, length = struct.unpack(">BI", body[:5])
        frames.append((flag, body[5 : 5 + length]))
        body = body[5 + length :]
    return frames


async def test_grpc_web_call_is_framed_with_trailers_in_body(gateway: EnvoyGateway) -> None:
    message = generation_pb2.ListModelsRequest().SerializeToString()
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.post(
            "/callisto.generation.v1.GenerationService/ListModels",
            content=struct.pack(">BI", 0, len(message)) + message,
            headers={
                "content-type": "application/grpc-web+proto",
                "x-grpc-web": "1",
                "origin": ALLOWED_ORIGIN,
            },
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    [(data_flag, data), (trailer_flag, trailers)] = grpc_web_frames(response.content)
    assert data_flag == 0
    assert generation_pb2.ListModelsResponse.FromString(data).models[0].name == "models/echo"
    assert trailer_flag == 0x80
    assert b"grpc-status:0" in trailers.replace(b" ", b"")


async def test_grpc_web_text_is_base64(gateway: EnvoyGateway) -> None:
    message = generation_pb2.ListModelsRequest().SerializeToString()
    frame = base64.b64encode(struct.pack(">BI", 0, len(message)) + message)
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.post(
            "/callisto.generation.v1.GenerationService/ListModels",
            content=frame,
            headers={
                "content-type": "application/grpc-web-text",
                "accept": "application/grpc-web-text",
                "x-grpc-web": "1",
            },
        )
    # Envoy answers in text only when the client accepts it; otherwise in binary.
    assert response.headers["content-type"].startswith("application/grpc-web-text")
    # Each chunk is base64 on its own (padded), so decode the padded segments one by one.
    segments = re.findall(rb"[A-Za-z0-9+/]+={0,2}", response.content)
    frames = grpc_web_frames(b"".join(base64.b64decode(segment) for segment in segments))
    assert frames[0][0] == 0
    assert frames[-1][0] == 0x80


async def test_cors_preflight_allows_grpc_web_and_authorization(gateway: EnvoyGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.options(
            "/callisto.generation.v1.GenerationService/ListModels",
            headers={
                "origin": ALLOWED_ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": "x-grpc-web,content-type,authorization",
            },
        )
    assert response.status_code == 200
    allowed = response.headers["access-control-allow-headers"]
    assert "x-grpc-web" in allowed
    assert "authorization" in allowed


async def test_access_log_is_json_with_traceparent(gateway: EnvoyGateway) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.get("/v1/models", headers={"traceparent": traceparent})
    assert response.status_code == 200
    for _ in range(50):  # the access log is flushed every log_flush_interval_ms
        entries = [
            json.loads(line)
            for line in gateway.access_log_path.read_text().splitlines()
            if line.startswith("{")
        ]
        if any(entry["traceparent"] == traceparent for entry in entries):
            break
        await asyncio.sleep(0.1)
    [entry] = [entry for entry in entries if entry["traceparent"] == traceparent]
    assert entry["response_code"] == 200
    assert entry["request_id"]


async def test_trace_context_and_request_id_reach_the_upstream_untouched(
    gateway: EnvoyGateway, backend: GatewayTestBackend
) -> None:
    traceparent = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"
    headers = {"traceparent": traceparent, "tracestate": "vendor=1", "x-request-id": "req-42"}
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.get("/v1/models", headers=headers)
    assert response.status_code == 200
    [seen] = [m for m in backend.service.list_models_metadata if m.get("x-request-id") == "req-42"]
    assert seen["traceparent"] == traceparent
    assert seen["tracestate"] == "vendor=1"


async def test_exhausted_rate_limit_is_429(backend_port: int, tmp_path: Path) -> None:
    gateway = gateway_for(
        backend_port, tmp_path, rate_limit_tokens=2, rate_limit_fill_interval_s=60
    )
    async with gateway, httpx.AsyncClient(base_url=gateway.http_url) as client:
        codes = [(await client.get("/v1/models")).status_code for _ in range(2)]
        limited = await client.get("/v1/models")
    assert codes == [200, 200]
    assert limited.status_code == 429
    assert limited.headers["x-local-rate-limit"] == "true"


async def test_oversized_json_body_is_refused(backend_port: int, tmp_path: Path) -> None:
    gateway = gateway_for(backend_port, tmp_path, max_request_body_bytes=1024)
    big = {"messages": [{"role": "ROLE_USER", "content": "x" * 4096}]}
    async with gateway, httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.post(GENERATE, json=big)
        small = await client.post(GENERATE, json=PROMPT)
    assert response.status_code == 413
    assert small.status_code == 200


async def health_check(channel: grpc.aio.Channel, service: str, **kwargs: Any) -> Any:
    stub = health_pb2_grpc.HealthStub(channel)
    return await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5, **kwargs)


async def test_health_of_each_service_is_answered_by_that_service(
    gateway_channel: grpc.aio.Channel,
) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    assert (await health_check(gateway_channel, SERVICE)).status == serving
    # Only the health-only backend knows this service, and it says NOT_SERVING.
    assert (await health_check(gateway_channel, HEALTH_ONLY_SERVICE)).status == not_serving
    # The server as a whole: answered by the reflection service's upstream.
    assert (await health_check(gateway_channel, "")).status == serving


async def test_health_of_an_unknown_service_is_not_found(
    gateway_channel: grpc.aio.Channel,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await health_check(gateway_channel, "callisto.nope.v1.NopeService")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    stub = health_pb2_grpc.HealthStub(gateway_channel)
    call = stub.Watch(health_pb2.HealthCheckRequest(service="callisto.nope.v1.NopeService"))
    first = await call.read()
    call.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


async def test_health_routing_header_from_the_client_is_ignored(
    gateway_channel: grpc.aio.Channel,
) -> None:
    # The body names generation; a forged routing header must not send it elsewhere.
    response = await health_check(
        gateway_channel, SERVICE, metadata=((HEALTH_SERVICE_HEADER, HEALTH_ONLY_SERVICE),)
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_watch_streams_from_the_named_service(
    gateway_channel: grpc.aio.Channel,
) -> None:
    stub = health_pb2_grpc.HealthStub(gateway_channel)
    for service, expected in (
        (HEALTH_ONLY_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING),
        (SERVICE, health_pb2.HealthCheckResponse.SERVING),
    ):
        call = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=10)
        first = await call.read()
        call.cancel()
        assert first.status == expected, service


async def test_grpcurl_health_check_names_the_service(gateway: EnvoyGateway) -> None:
    health = await asyncio.to_thread(
        subprocess.run,
        [
            grpcurl_binary(),
            "-plaintext",
            "-d",
            json.dumps({"service": HEALTH_ONLY_SERVICE}),
            gateway.grpc_target,
            "grpc.health.v1.Health/Check",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert json.loads(health.stdout)["status"] == "NOT_SERVING"


async def test_cors_answers_only_allowed_origins(gateway: EnvoyGateway) -> None:
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "x-grpc-web,content-type",
    }
    own = f"http://localhost:{gateway.spec.listen_port}"
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        answers = {
            origin: await client.options(
                "/callisto.generation.v1.GenerationService/ListModels",
                headers={"origin": origin, **preflight},
            )
            for origin in ("https://evil.example", ALLOWED_ORIGIN, own)
        }
        foreign_get = await client.get("/v1/models", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in answers["https://evil.example"].headers
    assert "access-control-allow-origin" not in foreign_get.headers
    assert answers[ALLOWED_ORIGIN].headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert answers[own].headers["access-control-allow-origin"] == own


async def test_rate_limit_is_per_api_key(backend_port: int, tmp_path: Path) -> None:
    gateway = gateway_for(
        backend_port, tmp_path, rate_limit_tokens=2, rate_limit_fill_interval_s=60
    )
    greedy = {"authorization": "Bearer cal_greedy"}
    other = {"authorization": "Bearer cal_other"}
    async with gateway, httpx.AsyncClient(base_url=gateway.http_url) as client:
        greedy_codes = [
            (await client.get("/v1/models", headers=greedy)).status_code for _ in range(3)
        ]
        other_codes = [
            (await client.get("/v1/models", headers=other)).status_code for _ in range(2)
        ]
        # Calls without a key have a bucket of their own, untouched by the keyed ones.
        anonymous = await client.get("/v1/models")
        async with grpc.aio.insecure_channel(gateway.grpc_target) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            request = generation_pb2.ListModelsRequest()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.ListModels(request, metadata=tuple(greedy.items()), timeout=5)
            third = {"authorization": "Bearer cal_third"}
            answer = await stub.ListModels(request, metadata=tuple(third.items()), timeout=5)
    assert greedy_codes == [200, 200, 429]
    assert other_codes == [200, 200]
    assert anonymous.status_code == 200
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert answer.models


async def test_grpc_web_health_check_is_routed_by_the_named_service(
    gateway: EnvoyGateway,
) -> None:
    message = health_pb2.HealthCheckRequest(service=HEALTH_ONLY_SERVICE).SerializeToString()
    async with httpx.AsyncClient(base_url=gateway.http_url) as client:
        response = await client.post(
            "/grpc.health.v1.Health/Check",
            content=base64.b64encode(struct.pack(">BI", 0, len(message)) + message),
            headers={"content-type": "application/grpc-web-text", "x-grpc-web": "1"},
        )
    assert response.status_code == 200
    [(data_flag, data), *_] = grpc_web_frames(response.content)
    assert data_flag == 0
    status = health_pb2.HealthCheckResponse.FromString(data).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_unary_timeout_bounds_calls_and_a_method_timeout_replaces_it(
    backend_port: int, tmp_path: Path
) -> None:
    slow = {"x-test-delay-ms": "1500"}
    plain = gateway_for(backend_port, tmp_path / "plain", unary_timeout_s=0.5)
    async with plain, httpx.AsyncClient(base_url=plain.http_url) as client:
        cut_off = await client.get("/v1/models", headers=slow)
        async with grpc.aio.insecure_channel(plain.grpc_target) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                # A longer deadline than the route allows is capped to the route's bound.
                await stub.ListModels(
                    generation_pb2.ListModelsRequest(), metadata=tuple(slow.items()), timeout=10
                )
    longer = gateway_for(
        backend_port,
        tmp_path / "longer",
        unary_timeout_s=0.5,
        stream_idle_timeout_s=1,  # shorter than the call: the method's bound covers idleness
        method_timeouts_s={f"{SERVICE}/ListModels": 10},
    )
    async with longer, httpx.AsyncClient(base_url=longer.http_url) as client:
        answered = await client.get("/v1/models", headers=slow)
        other = await client.post(GENERATE, json=PROMPT)
    assert cut_off.status_code == 504
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert answered.status_code == 200
    assert other.status_code == 200
