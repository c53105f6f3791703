"""A timing tap in front of the generation service, for the orchestration benchmark.

It is a real gRPC server that forwards every GenerationService call, byte for byte, to the real
generation service and notes when each token delta passes through it: the moment generation
hands a token on, on this machine's clock, which the benchmark compares with the moment the
token reaches a Converse client (token lag). While armed it also asks toy_llm, through the
generation service's `x-callisto-model-extras` header, to pace its plain-text answers
(`delay_ms` per token) and caps their `max_tokens`, so a turn streams like a real model and a
cancel lands mid-answer. Structured calls (a `response_format` or `tools`) pass unchanged.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callisto.api.generation.v1 import generation_pb2 as pb

SERVICE = "callisto.generation.v1.GenerationService"
EXTRAS_METADATA = "x-callisto-model-extras"
# Headers gRPC sets per hop; everything else (authorization, on-behalf-of, traceparent) goes on.
_HOP_HEADERS = {"content-type", "te", "user-agent", "grpc-accept-encoding", "grpc-timeout"}


@dataclass
class TappedCall:
    """One generation seen by the tap: when it started and each delta's arrival."""

    method: str
    started: float
    # No response_format and no tools: a plain-text answer (the ones pacing applies to).
    plain: bool
    # (time.perf_counter() when the delta passed, its text)
    deltas: list[tuple[float, str]] = field(default_factory=list)
    ended: float = 0.0
    tag: str = ""
    # The prompt's messages, joined by newlines (to tell which run a generation served).
    prompt: str = ""

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.deltas)


@dataclass
class Pacing:
    """How plain-text generations are shaped while the tap is armed."""

    delay_ms: float = 0.0
    max_tokens: int = 0  # 0 keeps the caller's


class GenerationTap:
    """Serve with `await tap.start()`; `calls` holds the generations seen since `clear()`;
    `pacing` (None when disarmed) shapes the plain ones."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.pacing: Pacing | None = None
        self.calls: list[TappedCall] = []
        self.port = 0
        self._channel: grpc.aio.Channel | None = None
        self._server: grpc.aio.Server | None = None
        self._counter = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        options = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
        self._channel = grpc.aio.insecure_channel(self.upstream, options=options)
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers([_Handlers(self)])
        # Envoy health-checks every upstream it routes to.
        checker = health_aio.HealthServicer()
        await checker.set("", health_pb2.HealthCheckResponse.SERVING)
        await checker.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(1)
        if self._channel is not None:
            await self._channel.close(None)

    def clear(self) -> None:
        self.calls = []

    # --- forwarding ---------------------------------------------------------------------

    def _metadata(
        self, context: grpc.aio.ServicerContext[Any, Any], plain: bool
    ) -> tuple[str, list[tuple[str, str | bytes]]]:
        """The caller's metadata to send on, plus pacing extras for a plain call when armed;
        returns (tag, metadata)."""
        metadata: list[tuple[str, str | bytes]] = [
            (k, v)
            for k, v in (context.invocation_metadata() or ())
            if not k.startswith(":") and k not in _HOP_HEADERS and k != EXTRAS_METADATA
        ]
        tag = ""
        if plain and self.pacing is not None:
            self._counter += 1
            tag = f"tap-{self._counter}-{time.monotonic_ns()}"
            extras: dict[str, Any] = {"tag": tag}
            if self.pacing.delay_ms:
                extras["delay_ms"] = self.pacing.delay_ms
            metadata.append((EXTRAS_METADATA, json.dumps(extras)))
        return tag, metadata

    def _cap(self, parameters: pb.SamplingParameters) -> None:
        if self.pacing is not None and self.pacing.max_tokens:
            current = parameters.max_tokens
            parameters.max_tokens = (
                min(current, self.pacing.max_tokens) if current else self.pacing.max_tokens
            )

    async def generate(
        self, request_bytes: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        assert self._channel is not None
        request = pb.GenerateRequest.FromString(request_bytes)
        plain = not request.HasField("response_format") and not request.tools
        if plain:
            self._cap(request.parameters)
            request_bytes = request.SerializeToString()
        tag, metadata = self._metadata(context, plain)
        call_record = TappedCall(
            "Generate", time.perf_counter(), plain, tag=tag, prompt=_prompt(request.messages)
        )
        self.calls.append(call_record)
        upstream = self._channel.unary_stream(f"/{SERVICE}/Generate", None, None)(
            request_bytes, metadata=metadata, timeout=context.time_remaining()
        )
        try:
            async for raw in upstream:
                response = pb.GenerateResponse.FromString(raw)
                if response.HasField("delta"):
                    call_record.deltas.append((time.perf_counter(), response.delta.text))
                yield raw
        except grpc.aio.AioRpcError as error:
            await _abort_like(context, error)
        finally:
            call_record.ended = time.perf_counter()
            upstream.cancel()

    async def chat(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        """A Chat stream: pacing applies to the whole stream (metadata is per stream), so it is
        asked for only when the caller's generations on it are plain; each plain generation's
        deltas are recorded by generation id."""
        assert self._channel is not None
        records: dict[str, TappedCall] = {}
        tag, metadata = self._metadata(context, plain=True)

        async def forward() -> AsyncIterator[bytes]:
            async for raw in requests:
                message = pb.ChatRequest.FromString(raw)
                if message.HasField("start"):
                    start = message.start
                    plain = not start.HasField("response_format") and not start.tools
                    if plain:
                        self._cap(start.parameters)
                        raw = message.SerializeToString()
                    record = TappedCall(
                        "Chat", time.perf_counter(), plain, tag=tag, prompt=_prompt(start.messages)
                    )
                    records[start.generation_id] = record
                    self.calls.append(record)
                yield raw

        upstream = self._channel.stream_stream(f"/{SERVICE}/Chat", None, None)(
            forward(), metadata=metadata, timeout=context.time_remaining()
        )
        try:
            async for raw in upstream:
                response = pb.ChatResponse.FromString(raw)
                record = records.get(response.generation_id)
                if record is not None:
                    if response.HasField("delta"):
                        record.deltas.append((time.perf_counter(), response.delta.text))
                    elif response.WhichOneof("event") is not None:
                        record.ended = time.perf_counter()
                yield raw
        except grpc.aio.AioRpcError as error:
            await _abort_like(context, error)
        finally:
            upstream.cancel()

    async def unary(
        self, method: str, request_bytes: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        assert self._channel is not None
        _, metadata = self._metadata(context, plain=False)
        try:
            reply: bytes = await self._channel.unary_unary(f"/{SERVICE}/{method}", None, None)(
                request_bytes, metadata=metadata, timeout=context.time_remaining()
            )
        except grpc.aio.AioRpcError as error:
            await _abort_like(context, error)
            raise
        return reply


def _prompt(messages: Sequence[pb.ChatMessage]) -> str:
    return "\n".join(message.content for message in messages)


async def _abort_like(
    context: grpc.aio.ServicerContext[Any, Any], error: grpc.aio.AioRpcError
) -> None:
    """Ends the call with the upstream's status, details and trailers (status details too)."""
    received: Any = error.trailing_metadata() or ()
    trailers = tuple((k, v) for k, v in received if not str(k).startswith(":"))
    await context.abort(error.code(), error.details() or "", trailing_metadata=trailers)


class _Handlers(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, tap: GenerationTap) -> None:
        self._tap = tap

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = str(handler_call_details.method)
        prefix = f"/{SERVICE}/"
        if not method.startswith(prefix):
            return None
        name = method[len(prefix) :]
        if name == "Generate":
            return grpc.unary_stream_rpc_method_handler(self._tap.generate)
        if name == "Chat":
            return grpc.stream_stream_rpc_method_handler(self._tap.chat)

        async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            return await self._tap.unary(name, request, context)

        return grpc.unary_unary_rpc_method_handler(unary)
