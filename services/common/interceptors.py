"""The one server interceptor every service runs: authentication and tenant binding, error
mapping, metrics and an access log.

Handlers raise typed `CallistoError`s; this is the only place that turns them (and anything
unexpected) into a gRPC status with `google.rpc` details in the trailers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate
from redis.exceptions import RedisError

from callisto.services.common.auth import ApiKeyStore, bearer_key
from callisto.services.common.errors import (
    Unauthenticated,
    Unavailable,
    as_callisto_error,
    status_from_exception,
)
from callisto.services.common.telemetry import RPC_IN_FLIGHT, RPC_LATENCY, RPC_REQUESTS
from callisto.services.common.tenancy import bind_tenant, reset_tenant

log = logging.getLogger("callisto.rpc")

PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


async def abort_with_error(
    context: grpc.aio.ServicerContext[Any, Any], error: BaseException
) -> None:
    """Ends the call with the status of `error`, details in `grpc-status-details-bin`."""
    status = status_from_exception(error)
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
    await context.abort(
        code,
        status.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every non-public handler: authenticate, bind the tenant, run, map errors, measure."""

    def __init__(self, keys: ApiKeyStore, *, propagate_trace_context: bool = False) -> None:
        self._keys = keys
        # Without an exporter the OpenTelemetry interceptor only carries `traceparent`; doing
        # that here instead saves its per-call span machinery.
        self._propagate = propagate_trace_context
        # The wrapped handler per method, built once: grpc.aio asks for a handler on every call.
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(handler, _Call(self._keys, method, self._propagate))
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class _Call:
    """Per-method wrapper state: the method name, the key store and the method's metrics."""

    def __init__(self, keys: ApiKeyStore, method: str, propagate: bool) -> None:
        self.keys = keys
        self.method = method
        self.propagate = propagate
        self._in_flight = RPC_IN_FLIGHT.labels(method)
        self._latency = RPC_LATENCY.labels(method)

    async def authenticate(self, metadata: dict[str, Any]) -> str:
        header = metadata.get("authorization")
        if not isinstance(header, str) or not header:
            raise Unauthenticated("missing `authorization: Bearer <api key>` metadata")
        key = bearer_key(header)
        if key is None:
            raise Unauthenticated("authorization must be `Bearer <api key>`")
        try:
            tenant = await self.keys.verify(key)
        except (RedisError, OSError) as error:
            raise Unavailable("cannot verify the API key right now", retry_after=1.0) from error
        if tenant is None:
            raise Unauthenticated("invalid or revoked API key")
        return tenant

    @contextlib.asynccontextmanager
    async def observe(self, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        """Around one call: authenticate and bind the tenant, map errors, measure, log."""
        started = time.perf_counter()
        self._in_flight.inc()
        metadata = dict(context.invocation_metadata() or ())
        # The caller's W3C trace context becomes current, so logs carry its trace id and
        # outgoing calls (client interceptors) carry it on.
        trace = (
            otel_context.attach(propagate.extract(metadata))
            if self.propagate and "traceparent" in metadata
            else None
        )
        code, failure, token = grpc.StatusCode.OK, None, None
        try:
            token = bind_tenant(await self.authenticate(metadata))
            yield
        except BaseException as error:
            code, failure = _code_of(error), error
            if isinstance(error, Exception) and not _is_abort(error):
                await abort_with_error(context, error)
            raise
        finally:
            if token is not None:
                reset_tenant(token)
            self._finish(started, code, failure)
            if trace is not None:
                otel_context.detach(trace)

    def _finish(self, started: float, code: grpc.StatusCode, error: BaseException | None) -> None:
        elapsed = time.perf_counter() - started
        RPC_REQUESTS.labels(self.method, code.name).inc()
        self._latency.observe(elapsed)
        self._in_flight.dec()
        fields = {"method": self.method, "code": code.name, "duration_ms": round(elapsed * 1000, 3)}
        if error is not None and code == grpc.StatusCode.INTERNAL:
            log.error("rpc failed", exc_info=error, extra={"fields": fields})
        elif code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
            log.debug("rpc", extra={"fields": fields})
        else:
            log.info("rpc", extra={"fields": {**fields, "error": str(error)}})


def _code_of(error: BaseException) -> grpc.StatusCode:
    typed = as_callisto_error(error)
    if typed is not None:
        return typed.code
    # A closed response stream (GeneratorExit) is a client that went away.
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def _wrap(handler: Any, call: _Call) -> Any:
    # The grpc stubs type handlers for the sync server; these are grpc.aio coroutines.
    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.response_streaming:
        behavior = handler.unary_stream or handler.stream_stream

        async def streaming(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async with call.observe(context):
                async for response in behavior(request, context):
                    yield response

        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(streaming, **options)
        return grpc.stream_stream_rpc_method_handler(streaming, **options)

    behavior_unary = handler.unary_unary or handler.stream_unary

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async with call.observe(context):
            return await behavior_unary(request, context)

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **options)
    return grpc.stream_unary_rpc_method_handler(unary, **options)


def _is_abort(error: BaseException) -> bool:
    # context.abort() raises grpc.aio's internal AbortError; it has already set the status.
    return type(error).__name__ == "AbortError"
