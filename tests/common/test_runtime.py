"""The shared runtime, seen from outside a real service process: auth, tracing, metrics,
graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from hostile_support import send_undecodable
from redis.asyncio import Redis

from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2_grpc as pb_grpc
from callisto.client import auth_metadata
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.services.common.auth import KEY_PATTERN, ApiKeyStore
from callisto.services.common.pagination import KEY_NAME

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def _auth(key: str) -> tuple[tuple[str, str], ...]:
    return auth_metadata(key)


@pytest.fixture()
def traced_service(
    service_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[ServiceProcess, int]]:
    metrics_port = free_port()
    service = ServiceProcess(
        "persistence",
        free_port(),
        env={
            **service_env,
            "CALLISTO_LOG_LEVEL": "DEBUG",
            "CALLISTO_METRICS_PORT": str(metrics_port),
        },
        log_path=tmp_path / "service.log",
    )
    service.start()
    service.wait_healthy()
    yield service, metrics_port
    service.stop()


async def test_calls_without_a_valid_key_are_unauthenticated(persistence: ServiceProcess) -> None:
    async with grpc.aio.insecure_channel(persistence.address) as channel:
        stub = pb_grpc.PersistenceServiceStub(channel)
        for metadata in [(), (("authorization", "Basic abc"),), _auth("cal_0123456789abcdef_x")]:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.ListConversations(pb.ListConversationsRequest(), metadata=metadata)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_revoked_key_stops_working(
    persistence: ServiceProcess, redis_server: RedisServer
) -> None:
    redis = Redis.from_url(redis_server.url)
    store = ApiKeyStore(redis)
    key, info = await store.create("revokees")
    async with grpc.aio.insecure_channel(persistence.address) as channel:
        stub = pb_grpc.PersistenceServiceStub(channel)
        await stub.ListConversations(pb.ListConversationsRequest(), metadata=_auth(key))
        assert await store.revoke(info.key_id)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ListConversations(pb.ListConversationsRequest(), metadata=_auth(key))
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await redis.aclose()


async def test_keys_are_stored_only_as_hashes(redis_server: RedisServer) -> None:
    redis = Redis.from_url(redis_server.url)
    store = ApiKeyStore(redis)
    # The secret's alphabet contains `_`, the key's separator: the key format, not a split,
    # says where the secret starts. Keys are drawn until one's secret holds a `_`.
    for _ in range(200):
        key, _info = await store.create("hashed")
        match = KEY_PATTERN.match(key)
        assert match is not None
        secret = match.group(2)
        if "_" in secret:
            break
    assert "_" in secret and len(secret) == 43
    async for name in redis.scan_iter(match="callisto:auth:*"):
        if await redis.type(name) == b"hash":
            values = (await redis.hgetall(name)).values()
            assert all(secret.encode() not in value for value in values)
    await redis.aclose()


async def test_traceparent_reaches_the_logs_and_metrics_are_exported(
    traced_service: tuple[ServiceProcess, int], api_key: str
) -> None:
    service, metrics_port = traced_service
    traceparent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = pb_grpc.PersistenceServiceStub(channel)
        await stub.ListConversations(
            pb.ListConversationsRequest(),
            metadata=(*_auth(api_key), ("traceparent", traceparent)),
        )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in service.log_path.read_text().splitlines() if line]
        traced = [line for line in lines if line.get("trace_id") == TRACE_ID and "method" in line]
        if traced:
            break
        await asyncio.sleep(0.1)
    assert traced, "no log line carries the caller's trace id"
    assert traced[0]["method"].endswith("/ListConversations")
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    assert (
        'callisto_rpc_requests_total{code="OK",method="/callisto.persistence.v1.PersistenceService/ListConversations"}'
        in metrics
    )


async def test_sigterm_ends_open_streams_with_a_clean_status(
    traced_service: tuple[ServiceProcess, int], api_key: str
) -> None:
    service, _ = traced_service
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = pb_grpc.PersistenceServiceStub(channel)
        created = await stub.CreateConversation(
            pb.CreateConversationRequest(conversation=pb.Conversation(title="draining")),
            metadata=_auth(api_key),
        )
        stream = stub.SubscribeEvents(
            pb.SubscribeEventsRequest(parent=created.conversation.name), metadata=_auth(api_key)
        )
        await asyncio.sleep(0.3)  # the subscription is now following live
        service.send_signal(signal.SIGTERM)
        terminal = None
        async for response in stream:
            if response.WhichOneof("kind") in ("end", "error"):
                terminal = response
        assert terminal is not None and terminal.WhichOneof("kind") == "error"
        assert terminal.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
        assert await stream.code() == grpc.StatusCode.OK
    assert service.wait(10) == 0


async def _metrics(port: int) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"http://127.0.0.1:{port}/metrics")).text


def _log_lines(service: ServiceProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in service.log_path.read_text().splitlines() if line]


async def test_undecodable_bodies_are_invalid_argument_counted_and_logged(
    traced_service: tuple[ServiceProcess, int], api_key: str
) -> None:
    service, metrics_port = traced_service
    method = "/callisto.persistence.v1.PersistenceService/GetMessage"
    stream_method = "/callisto.persistence.v1.PersistenceService/SubscribeEvents"
    async with grpc.aio.insecure_channel(service.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await channel.unary_unary(method)(b"\x0f", metadata=_auth(api_key))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "DecodeError" not in (raised.value.details() or "")
        stream = channel.unary_stream(stream_method)(b"\x0a\x05ab", metadata=_auth(api_key))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stream:
                pass
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Health and reflection, open to everyone, decode the same way.
    for public in (
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    ):
        assert await asyncio.to_thread(send_undecodable, service.address, public, ())
    service.check_alive()
    metrics = await _metrics(metrics_port)
    for name in (method, stream_method):
        assert f'callisto_rpc_malformed_requests_total{{method="{name}"}} 1.0' in metrics
        assert f'callisto_rpc_requests_total{{code="INVALID_ARGUMENT",method="{name}"}}' in metrics
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        logged = {
            line.get("method")
            for line in _log_lines(service)
            if line.get("message") == "undecodable request" and line.get("level") == "warning"
        }
        if logged >= {method, stream_method}:
            break
        await asyncio.sleep(0.1)
    assert logged >= {method, stream_method}


SUBSCRIBE = "/callisto.persistence.v1.PersistenceService/SubscribeEvents"


async def _blocked_subscription(
    stub: pb_grpc.PersistenceServiceAsyncStub, api_key: str
) -> grpc.aio.UnaryStreamCall[pb.SubscribeEventsRequest, pb.SubscribeEventsResponse]:
    """A subscription whose replay outgrows every flow-control window: the client reads one
    message and then nothing, so the server's next writes block."""
    created = await stub.CreateConversation(
        pb.CreateConversationRequest(conversation=pb.Conversation(title="abandoned")),
        metadata=_auth(api_key),
    )
    big = pb.Event(type="blob")
    big.data.update({"x": "y" * 200_000})
    for _ in range(60):
        await stub.CreateEvent(
            pb.CreateEventRequest(parent=created.conversation.name, event=big),
            metadata=_auth(api_key),
        )
    stream = stub.SubscribeEvents(
        pb.SubscribeEventsRequest(parent=created.conversation.name), metadata=_auth(api_key)
    )
    await stream.read()
    await asyncio.sleep(1.0)  # the server fills the windows and blocks in a write
    return stream


def _in_flight(metrics: str, method: str) -> float | None:
    prefix = f'callisto_rpc_in_flight{{method="{method}"}} '
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


def _logged_calls(service: ServiceProcess, method: str) -> list[dict[str, object]]:
    return [
        line
        for line in _log_lines(service)
        if line.get("method") == method and line.get("message") in ("rpc", "rpc failed")
    ]


async def test_a_stream_abandoned_while_its_write_blocks_is_finished_and_logged(
    traced_service: tuple[ServiceProcess, int], api_key: str
) -> None:
    service, metrics_port = traced_service
    async with grpc.aio.insecure_channel(service.address) as channel:
        stream = await _blocked_subscription(pb_grpc.PersistenceServiceStub(channel), api_key)
        assert _in_flight(await _metrics(metrics_port), SUBSCRIBE) == 1.0
        stream.cancel()  # the client goes away; the server is still blocked writing
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _in_flight(await _metrics(metrics_port), SUBSCRIBE) == 0.0:
                break
            await asyncio.sleep(0.1)
        assert _in_flight(await _metrics(metrics_port), SUBSCRIBE) == 0.0
    calls = _logged_calls(service, SUBSCRIBE)
    assert [call["code"] for call in calls] == ["CANCELLED"]


async def test_a_stream_blocked_in_a_write_at_server_stop_is_finished_and_logged(
    traced_service: tuple[ServiceProcess, int], api_key: str
) -> None:
    service, _ = traced_service
    async with grpc.aio.insecure_channel(service.address) as channel:
        stream = await _blocked_subscription(pb_grpc.PersistenceServiceStub(channel), api_key)
        service.send_signal(signal.SIGTERM)
        assert service.wait(15) == 0
        stream.cancel()
    calls = _logged_calls(service, SUBSCRIBE)
    assert [call["code"] for call in calls] == ["CANCELLED"]


async def test_page_tokens_hold_across_the_deployment_and_no_further(
    traced_service: tuple[ServiceProcess, int],
    persistence: ServiceProcess,
    service_env: dict[str, str],
    redis_server: RedisServer,
    api_key: str,
    tmp_path: Path,
) -> None:
    service, _ = traced_service
    for _ in range(2):
        async with grpc.aio.insecure_channel(persistence.address) as channel:
            await pb_grpc.PersistenceServiceStub(channel).CreateConversation(
                pb.CreateConversationRequest(conversation=pb.Conversation(title="p")),
                metadata=_auth(api_key),
            )
    async with grpc.aio.insecure_channel(persistence.address) as channel:
        first = await pb_grpc.PersistenceServiceStub(channel).ListConversations(
            pb.ListConversationsRequest(page_size=1), metadata=_auth(api_key)
        )
    assert first.next_page_token
    # The key was made once for the deployment, in the Redis every service shares.
    redis = Redis.from_url(redis_server.url)
    assert len(await redis.get(KEY_NAME) or b"") == 64
    await redis.aclose()
    follow = pb.ListConversationsRequest(page_size=1, page_token=first.next_page_token)
    async with grpc.aio.insecure_channel(service.address) as channel:
        second = await pb_grpc.PersistenceServiceStub(channel).ListConversations(
            follow, metadata=_auth(api_key)
        )
    assert second.conversations[0].name != first.conversations[0].name

    # A deployment with a key of its own does not take the tokens of this one.
    other = ServiceProcess(
        "persistence",
        free_port(),
        env={**service_env, "CALLISTO_PAGE_TOKEN_SECRET": "another deployment's secret"},
        log_path=tmp_path / "other.log",
    )
    other.start()
    try:
        other.wait_healthy()
        async with grpc.aio.insecure_channel(other.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await pb_grpc.PersistenceServiceStub(channel).ListConversations(
                    follow, metadata=_auth(api_key)
                )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        other.stop()


async def test_with_span_export_on_streams_still_work_and_are_finished(
    service_env: dict[str, str], api_key: str, tmp_path: Path
) -> None:
    metrics_port = free_port()
    service = ServiceProcess(
        "persistence",
        free_port(),
        env={
            **service_env,
            "CALLISTO_OTEL_EXPORTER": "console",
            "CALLISTO_LOG_LEVEL": "DEBUG",
            "CALLISTO_METRICS_PORT": str(metrics_port),
        },
        log_path=tmp_path / "service.log",
    )
    service.start()
    try:
        service.wait_healthy()
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = pb_grpc.PersistenceServiceStub(channel)
            created = await stub.CreateConversation(
                pb.CreateConversationRequest(
                    conversation=pb.Conversation(
                        title="traced", status=pb.CONVERSATION_STATUS_COMPLETED
                    )
                ),
                metadata=_auth(api_key),
            )
            request = pb.SubscribeEventsRequest(parent=created.conversation.name)
            replies = [r async for r in stub.SubscribeEvents(request, metadata=_auth(api_key))]
            assert replies[-1].WhichOneof("kind") == "end"
            stream = await _blocked_subscription(stub, api_key)
            stream.cancel()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if _in_flight(await _metrics(metrics_port), SUBSCRIBE) == 0.0:
                    break
                await asyncio.sleep(0.1)
            assert _in_flight(await _metrics(metrics_port), SUBSCRIBE) == 0.0
    finally:
        service.stop()
    assert "SubscribeEvents" in service.log_path.read_text()  # the exported span
