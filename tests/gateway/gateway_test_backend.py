"""A small real grpc.aio GenerationService for exercising the gateway, not the model.

It streams `max_tokens` (default 3) numbered deltas and a result, answers ListModels after the
`x-test-delay-ms` metadata's delay, and fails the ways the gateway
must translate: INVALID_ARGUMENT with a BadRequest detail for an empty prompt, NOT_FOUND for an
unknown model, ABORTED (with RetryInfo and ErrorInfo) for `models/busy`, UNAUTHENTICATED for
`models/private` without an `authorization` header, and ABORTED after the first delta for
`models/fail-midstream`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2, generation_pb2_grpc

SERVICE = "callisto.generation.v1.GenerationService"
KNOWN_MODELS = ("models/echo", "models/fail-midstream")


def _status(code: int, message: str, *details: Message) -> grpc.Status:
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    grpc_status: grpc.Status = rpc_status.to_status(status)
    return grpc_status


async def _abort(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> NoReturn:
    # The status detail travels in the grpc-status-details-bin trailer that the gateway converts.
    await context.abort(status.code, status.details, status.trailing_metadata)


class GatewayTestGenerationService(generation_pb2_grpc.GenerationServiceServicer):
    """Deterministic answers, so tests can assert exact bodies."""

    def __init__(self) -> None:
        # Request metadata of every ListModels call, to see what the gateway forwards.
        self.list_models_metadata: list[dict[str, str | bytes]] = []

    async def ListModels(
        self,
        request: generation_pb2.ListModelsRequest,
        context: grpc.aio.ServicerContext[
            generation_pb2.ListModelsRequest, generation_pb2.ListModelsResponse
        ],
    ) -> generation_pb2.ListModelsResponse:
        metadata = dict(context.invocation_metadata() or ())
        self.list_models_metadata.append(metadata)
        # A slow call, for route timeouts.
        delay_ms = metadata.get("x-test-delay-ms")
        if isinstance(delay_ms, str):
            await asyncio.sleep(int(delay_ms) / 1000)
        return generation_pb2.ListModelsResponse(
            models=[
                generation_pb2.Model(name=name, ready=True, versions=["1"], streaming=True)
                for name in KNOWN_MODELS
            ]
        )

    async def Generate(
        self,
        request: generation_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[
            generation_pb2.GenerateRequest, generation_pb2.GenerateResponse
        ],
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        if not request.messages:
            violation = error_details_pb2.BadRequest.FieldViolation(
                field="messages", description="at least one message is required"
            )
            await _abort(
                context,
                _status(
                    code_pb2.INVALID_ARGUMENT,
                    "messages is empty",
                    error_details_pb2.BadRequest(field_violations=[violation]),
                ),
            )
        if request.model == "models/busy":
            await _abort(
                context,
                _status(
                    code_pb2.ABORTED,
                    "the model is busy",
                    error_details_pb2.RetryInfo(retry_delay=Duration(seconds=2)),
                    error_details_pb2.ErrorInfo(reason="MODEL_BUSY", domain="callisto.dev"),
                ),
            )
        if request.model == "models/private":
            metadata = dict(context.invocation_metadata() or ())
            if metadata.get("authorization") != "Bearer let-me-in":
                await _abort(context, _status(code_pb2.UNAUTHENTICATED, "no valid credentials"))
        elif request.model not in KNOWN_MODELS:
            await _abort(context, _status(code_pb2.NOT_FOUND, f"no model {request.model!r}"))
        count = request.parameters.max_tokens or 3
        for sequence in range(1, count + 1):
            yield generation_pb2.GenerateResponse(
                sequence=sequence,
                delta=generation_pb2.TokenDelta(text=f"token-{sequence}", token_count=1),
            )
            if request.model == "models/fail-midstream":
                await _abort(context, _status(code_pb2.ABORTED, "the model failed mid-stream"))
        yield generation_pb2.GenerateResponse(
            sequence=count + 1,
            result=generation_pb2.GenerationResult(
                finish_reason=generation_pb2.FINISH_REASON_STOP,
                usage=common_pb2.TokenUsage(prompt_tokens=1, completion_tokens=count),
                model=request.model,
            ),
        )

    async def Chat(
        self,
        request_iterator: AsyncIterator[generation_pb2.ChatRequest],
        context: grpc.aio.ServicerContext[generation_pb2.ChatRequest, generation_pb2.ChatResponse],
    ) -> AsyncIterator[generation_pb2.ChatResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of the gateway tests")
        yield generation_pb2.ChatResponse()  # makes this an async generator, like Generate


@dataclass(frozen=True)
class GatewayTestBackend:
    server: grpc.aio.Server
    port: int
    service: GatewayTestGenerationService


async def start_gateway_test_backend(host: str = "127.0.0.1") -> GatewayTestBackend:
    """Start the backend with health and reflection on a free port."""
    server = grpc.aio.server()
    service = GatewayTestGenerationService()
    generation_pb2_grpc.add_GenerationServiceServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # grpcio-reflection registers both grpc.reflection.v1alpha and v1.
    reflection.enable_server_reflection(
        (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    return GatewayTestBackend(server, port, service)


@dataclass(frozen=True)
class HealthOnlyBackend:
    """A server that serves nothing but grpc.health.v1, for one named service."""

    server: grpc.aio.Server
    port: int


async def start_health_only_backend(
    service: str, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
) -> HealthOnlyBackend:
    """Health says SERVING for the server ("") and `status` for `service`, so a caller can tell
    which upstream answered."""
    server = grpc.aio.server()
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(service, status)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return HealthOnlyBackend(server, port)
