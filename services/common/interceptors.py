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
from typing import Any, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate
from redis.exceptions import RedisError

from callisto.client import ON_BEHALF_OF
from callisto.services.common.auth import ApiKeyStore, bearer_key
from callisto.services.common.errors import (
    FieldViolation,
    InvalidArgument,
    MalformedRequest,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    as_callisto_error,
    grpc_code,
    status_from_exception,
)
from callisto.services.common.telemetry import (
    MALFORMED_REQUESTS,
    RPC_IN_FLIGHT,
    RPC_LATENCY,
    RPC_REQUESTS,
)
from callisto.services.common.tenancy import TENANT_PATTERN, bind_tenant, reset_tenant

log = logging.getLogger("callisto.rpc")

PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


async def abort_with_error(
    context: grpc.aio.ServicerContext[Any, Any], error: BaseException
) -> None:
    """Ends the call with the status of `error`, details in `grpc-status-details-bin`."""
    status = status_from_exception(error)
    await context.abort(
        grpc_code(status),
        status.message,
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every non-public handler: authenticate, bind the tenant, run, map errors, measure."""

    def __init__(self, keys: ApiKeyStore, *, propagate_trace_context: bool = False) -> None:
        self._keys = keys
        # The caller's `traceparent` becomes current for the whole call, access log included;
        # without an exporter this is all the tracing there is (no per-call span machinery).
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
        if handler is None:
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        behavior = (
            handler.unary_unary or handler.unary_stream or handler.stream_unary
        ) or handler.stream_stream
        call = _Call(
            self._keys,
            method,
            self._propagate,
            handler.request_deserializer,
            reports_malformed=getattr(behavior, REPORTS_MALFORMED, False),
        )
        # Health and reflection stay open to all and unlogged; they only decode like the rest.
        public = method.startswith(PUBLIC_PREFIXES)
        wrapped = _wrap_public(handler, call) if public else _wrap(handler, call)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


REPORTS_MALFORMED = "__callisto_reports_malformed_requests__"
F = TypeVar("F", bound=Callable[..., Any])


def reports_malformed_requests(handler: F) -> F:
    """Marks a request-streaming handler that answers an undecodable message itself (it reads
    `MalformedRequest` from its request iterator and reports it in its own response stream,
    after the results of what came before); unmarked handlers end with that error as their
    status."""
    setattr(handler, REPORTS_MALFORMED, True)
    return handler


class _Outcome:
    """What the wrapper learns about one call while it runs."""

    __slots__ = ("cancelled_for_it", "malformed", "task", "writing")

    def __init__(self) -> None:
        # An undecodable message of a request stream: it, not how the handler ends, answers.
        self.malformed: InvalidArgument | None = None
        # The task running the call, and whether it was cancelled to stop at the bad message.
        self.task = asyncio.current_task()
        self.cancelled_for_it = False
        # True while the task awaits context.write: cancelling it then would leave the send
        # pending in grpc's core, and no status could follow.
        self.writing = False


class _Call:
    """Per-method wrapper state: the method name, the key store and the method's metrics."""

    def __init__(
        self,
        keys: ApiKeyStore,
        method: str,
        propagate: bool,
        deserializer: Callable[[bytes], Any] | None,
        reports_malformed: bool = False,
    ) -> None:
        self.keys = keys
        # The handler answers an undecodable stream message itself (reports_malformed_requests).
        self.reports_malformed = reports_malformed
        self.method = method
        self.propagate = propagate
        self._in_flight = RPC_IN_FLIGHT.labels(method)
        self._latency = RPC_LATENCY.labels(method)
        self._malformed = MALFORMED_REQUESTS.labels(method)
        self._deserialize = deserializer
        message_type = getattr(deserializer, "__self__", None)
        descriptor = getattr(message_type, "DESCRIPTOR", None)
        self._request_type = getattr(descriptor, "full_name", "request")

    def parse(self, raw: Any) -> Any:
        """The request message of `raw` bytes; INVALID_ARGUMENT when they do not decode."""
        if self._deserialize is None or not isinstance(raw, bytes):
            return raw
        try:
            return self._deserialize(raw)
        except Exception as error:  # DecodeError, or whatever else a broken encoding raises
            self._malformed.inc()
            log.warning(
                "undecodable request",
                extra={
                    "fields": {
                        "method": self.method,
                        "bytes": len(raw),
                        "error": type(error).__name__,
                    }
                },
            )
            raise MalformedRequest(
                [FieldViolation("", f"is not a valid encoding of {self._request_type}")],
                message=f"the request body is not a valid protobuf {self._request_type}",
            ) from None

    async def parse_stream(
        self, raw_requests: AsyncIterator[Any], outcome: _Outcome
    ) -> AsyncIterator[Any]:
        """Decodes a request stream. An undecodable message ends the call with its error
        whatever the handler does with it: the read raises it, and a handler that reads in
        a task of its own gets its call cancelled, so it cannot wait forever."""
        async for raw in raw_requests:
            try:
                message = self.parse(raw)
            except MalformedRequest as error:
                if self.reports_malformed:
                    raise
                outcome.malformed = error
                task = outcome.task
                if task is not None and task is not asyncio.current_task() and not outcome.writing:
                    outcome.cancelled_for_it = True
                    task.cancel()
                raise
            yield message

    async def authenticate(self, metadata: dict[str, Any]) -> str:
        """The tenant the call acts for: a tenant key's own tenant (an on-behalf-of header
        next to it is ignored, so a forged one changes nothing), or the tenant a service
        principal names in `x-callisto-on-behalf-of`."""
        header = metadata.get("authorization")
        if not isinstance(header, str) or not header:
            raise Unauthenticated("missing `authorization: Bearer <api key>` metadata")
        key = bearer_key(header)
        if key is None:
            raise Unauthenticated("authorization must be `Bearer <api key>`")
        try:
            principal = await self.keys.verify_principal(key)
        except (RedisError, OSError) as error:
            raise Unavailable("cannot verify the API key right now", retry_after=1.0) from error
        if principal is None:
            raise Unauthenticated("invalid or revoked API key")
        on_behalf_of = metadata.get(ON_BEHALF_OF)
        if not principal.is_service:
            if on_behalf_of is not None:
                log.warning(
                    "on-behalf-of header from a tenant key ignored",
                    extra={"fields": {"method": self.method, "tenant": principal.tenant}},
                )
            return principal.tenant
        if not isinstance(on_behalf_of, str) or not TENANT_PATTERN.match(on_behalf_of):
            raise PermissionDenied(
                f"a service credential must name the tenant it acts for in `{ON_BEHALF_OF}`"
            )
        return on_behalf_of

    @contextlib.asynccontextmanager
    async def observe(self, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[_Outcome]:
        """Around one call: authenticate and bind the tenant, map errors, measure, log.

        Whatever ends the call (a status, a client gone, cancellation at server stop), the
        finally block counts and logs it and releases the in-flight gauge.
        """
        started = time.perf_counter()
        self._in_flight.inc()
        outcome = _Outcome()
        code, failure, token, trace = grpc.StatusCode.OK, None, None, None
        try:
            metadata = dict(context.invocation_metadata() or ())
            # The caller's W3C trace context becomes current, so logs carry its trace id and
            # outgoing calls (client interceptors) carry it on.
            if self.propagate and "traceparent" in metadata:
                trace = otel_context.attach(propagate.extract(metadata))
            token = bind_tenant(await self.authenticate(metadata))
            yield outcome
            if outcome.malformed is not None:
                raise outcome.malformed  # the handler swallowed it and ended normally
        except BaseException as error:
            if outcome.malformed is not None and error is not outcome.malformed:
                if outcome.cancelled_for_it and outcome.task is not None:
                    outcome.task.uncancel()
                if not _is_abort(error):
                    error = outcome.malformed
            code, failure = _code_of(error, context), error
            if code != grpc.StatusCode.CANCELLED and isinstance(error, Exception):
                if not _is_abort(error):
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


def _code_of(error: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    typed = as_callisto_error(error)
    if typed is not None:
        return typed.code
    # A client that went away (a blocked write then fails), or a call cancelled at server stop.
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)) or context.cancelled():
        return grpc.StatusCode.CANCELLED
    if type(error).__name__ == "ExecuteBatchError":
        # grpc.aio's failed send: the call is gone at the transport, whatever ended it.
        return grpc.StatusCode.CANCELLED
    if _is_abort(error):
        # The handler (or the request decoder) aborted with a status of its own.
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.INTERNAL


def _wrap(handler: Any, call: _Call) -> Any:
    """A handler that takes the raw request bytes and decodes them itself, so an undecodable
    body is a typed INVALID_ARGUMENT rather than grpc's UNKNOWN."""
    # The grpc stubs type handlers for the sync server; these are grpc.aio coroutines.
    options = {"request_deserializer": None, "response_serializer": handler.response_serializer}

    def requests(raw: Any, outcome: _Outcome) -> Any:
        if handler.request_streaming:
            return call.parse_stream(raw, outcome)
        return call.parse(raw)

    if handler.response_streaming:
        behavior = handler.unary_stream or handler.stream_stream

        # Written with context.write rather than as an async generator: a write that blocks on
        # flow control then runs in this coroutine, so a client that goes away or a server stop
        # cancels it here and the observer's finally always runs.
        async def streaming(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            async with call.observe(context) as outcome:
                responses = behavior(requests(raw, outcome), context)
                if not hasattr(responses, "__aiter__"):
                    await responses  # a handler that writes with context.write itself
                    return
                async with contextlib.aclosing(responses):
                    async for response in responses:
                        if outcome.malformed is not None:
                            break  # the call ends with the decoding error, nothing else
                        outcome.writing = True
                        try:
                            await context.write(response)
                        finally:
                            outcome.writing = False

        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(streaming, **options)
        return grpc.stream_stream_rpc_method_handler(streaming, **options)

    behavior_unary = handler.unary_unary or handler.stream_unary

    async def unary(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async with call.observe(context) as outcome:
            return await behavior_unary(requests(raw, outcome), context)

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **options)
    return grpc.stream_unary_rpc_method_handler(unary, **options)


def _wrap_public(handler: Any, call: _Call) -> Any:
    """A public handler (health, reflection) that decodes its requests itself: an undecodable
    body is INVALID_ARGUMENT here too. No authentication, metrics or log: probes are many."""
    options = {"request_deserializer": None, "response_serializer": handler.response_serializer}

    async def decoded(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return call.parse(raw)
        except InvalidArgument as error:
            await abort_with_error(context, error)

    async def decoded_stream(
        raw_requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for raw in raw_requests:
            yield await decoded(raw, context)

    if handler.unary_unary:

        async def unary_unary(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await handler.unary_unary(await decoded(raw, context), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **options)
    if handler.unary_stream:

        async def unary_stream(
            raw: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async for response in handler.unary_stream(await decoded(raw, context), context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, **options)
    if handler.stream_unary:

        async def stream_unary(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await handler.stream_unary(decoded_stream(raw, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **options)

    async def stream_stream(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async for response in handler.stream_stream(decoded_stream(raw, context), context):
            yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, **options)


def _is_abort(error: BaseException) -> bool:
    # context.abort() raises grpc.aio's internal AbortError; it has already set the status.
    return type(error).__name__ == "AbortError"
