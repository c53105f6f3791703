"""Triton dies mid-stream: a clean terminal UNAVAILABLE, health NOT_SERVING, and recovery on its own
once Triton is back on the same port (no restart of the generation service)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from generation_support import chat_messages, extras, generation_env, start_triton
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

import callisto
from callisto import errors
from callisto.api.generation.v1 import generation_pb2, generation_pb2_grpc
from callisto.mesh.processes import ServiceProcess, free_port
from callisto.mesh.triton import TritonServer, default_model_repository

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def own_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A Triton of this module's own: the test kills it."""
    workdir = tmp_path_factory.mktemp("outage-triton")
    server = start_triton(workdir, workdir / "events.jsonl", with_llm=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def own_generation(
    own_triton: TritonServer, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    logs = tmp_path_factory.mktemp("outage-generation")
    service = ServiceProcess(
        "generation",
        free_port(),
        env=generation_env(service_env, own_triton.grpc_url),
        log_path=logs / "generation.log",
    )
    with service.serving(60):
        yield service


@pytest_asyncio.fixture(loop_scope="session")
async def channel(own_generation: ServiceProcess, api_key: str) -> AsyncIterator[grpc.aio.Channel]:
    async with await callisto.Client.connect(own_generation.address, api_key=api_key) as client:
        yield client.channel


async def wait_health(channel: grpc.aio.Channel, wanted: int, within: float) -> float:
    health = health_pb2_grpc.HealthStub(channel)
    started = time.monotonic()
    while time.monotonic() - started < within:
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        if reply.status == wanted:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"health never became {wanted} within {within} s")


def has_retry_info(status: status_pb2.Status) -> bool:
    return errors.from_status(status).retry_delay is not None


async def test_triton_dying_mid_stream_ends_cleanly_and_the_service_recovers(
    own_triton: TritonServer,
    channel: grpc.aio.Channel,
    api_key: str,
    tmp_path: Path,
) -> None:
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    request = generation_pb2.GenerateRequest(
        model="models/toy_llm",
        messages=chat_messages("a b c"),
        parameters=generation_pb2.SamplingParameters(max_tokens=2000),
    )
    responses: list[generation_pb2.GenerateResponse] = []
    call = stub.Generate(request, metadata=extras(delay_ms=20), timeout=30)
    async for response in call:
        responses.append(response)
        if len(responses) == 3:
            os.killpg(own_triton.pid, signal.SIGKILL)
    assert await call.code() == grpc.StatusCode.OK
    assert [r.sequence for r in responses] == list(range(1, len(responses) + 1))
    terminal = responses[-1]
    assert terminal.WhichOneof("event") == "error"
    assert terminal.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert has_retry_info(terminal.error)

    await wait_health(channel, NOT_SERVING, within=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.Generate(request, metadata=extras(), timeout=10):
            pass
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert errors.from_rpc_error(caught.value).retry_delay is not None

    # A restarted TritonServer keeps its ports: the service must find it again by itself.
    grpc_url = own_triton.grpc_url
    own_triton.stop()
    await asyncio.to_thread(
        own_triton.start,
        default_model_repository(),
        ["toy_llm"],
        {"CALLISTO_TOY_LLM_EVENTS": str(tmp_path / "events.jsonl")},
    )
    assert own_triton.grpc_url == grpc_url
    await wait_health(channel, SERVING, within=15)
    small = generation_pb2.GenerateRequest(
        model="models/toy_llm",
        messages=chat_messages("x y"),
        parameters=generation_pb2.SamplingParameters(max_tokens=4),
    )
    after = [r async for r in stub.Generate(small, metadata=extras(), timeout=10)]
    assert "".join(r.delta.text for r in after[:-1]) == "x y x y "
    assert after[-1].result.usage.completion_tokens == 4


async def test_shutdown_ends_running_streams_with_a_terminal_unavailable(
    own_triton: TritonServer,
    service_env: dict[str, str],
    api_key: str,
    tmp_path: Path,
) -> None:
    service = ServiceProcess(
        "generation",
        free_port(),
        env=generation_env(service_env, own_triton.grpc_url),
        log_path=tmp_path / "generation.log",
    )
    service.start()
    try:
        await asyncio.to_thread(service.wait_healthy, 60)
        async with await callisto.Client.connect(service.address, api_key=api_key) as client:
            stub = client.stub(generation_pb2_grpc.GenerationServiceStub)
            request = generation_pb2.GenerateRequest(
                model="models/toy_llm",
                messages=chat_messages("a b c"),
                parameters=generation_pb2.SamplingParameters(max_tokens=2000),
            )
            responses: list[generation_pb2.GenerateResponse] = []
            call = stub.Generate(request, metadata=extras(delay_ms=20), timeout=30)
            async for response in call:
                responses.append(response)
                if len(responses) == 3:
                    service.send_signal(signal.SIGTERM)
            terminal = responses[-1]
            assert terminal.WhichOneof("event") == "error", terminal
            assert terminal.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert has_retry_info(terminal.error)
            assert [r.sequence for r in responses] == list(range(1, len(responses) + 1))
        assert await asyncio.to_thread(service.wait, 10) == 0
    finally:
        service.stop()
