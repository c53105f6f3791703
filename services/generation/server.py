"""GenerationService handlers: validate, translate to the Triton backend, relay the token stream.

Every stream is deltas with gap-free sequence numbers, then exactly one terminal `result` or
`error`. Errors before the first message are raised (the interceptor turns them into the call's
status); after it, they become the terminal `error` message so a caller never sees a silent
truncation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2, generation_pb2_grpc
from callisto.services.common.errors import (
    CallistoError,
    DeadlineExceeded,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from callisto.services.common.health import DependencyCheck
from callisto.services.common.server import Runtime, ServiceDefinition
from callisto.services.common.validation import Violations
from callisto.services.generation.coalescing import Delta, Outcome, Relay
from callisto.services.generation.settings import GenerationSettings
from callisto.services.generation.triton import (
    ChatTurn,
    GenerationSpec,
    ModelFailed,
    ModelRejected,
    TritonBackend,
    TritonDeadline,
    TritonUnavailable,
    UnknownModel,
)

log = logging.getLogger("callisto.generation")

SERVICE_NAME = generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name
MODEL_NAME = re.compile(r"^models/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")
GENERATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
EXTRAS_METADATA = "x-callisto-model-extras"
MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 64
MAX_MESSAGES = 512
RETRY_AFTER_S = 1.0
ROLES = {
    common_pb2.ROLE_SYSTEM: "system",
    common_pb2.ROLE_USER: "user",
    common_pb2.ROLE_ASSISTANT: "assistant",
}
FINISH_REASONS = {
    "stop": generation_pb2.FINISH_REASON_STOP,
    "length": generation_pb2.FINISH_REASON_LENGTH,
    "cancelled": generation_pb2.FINISH_REASON_CANCELLED,
}
# The model's reasons for refusing a request, mapped to the request field they are about.
_REJECTION_FIELDS = (
    ("max_tokens", "parameters.max_tokens"),
    ("temperature", "parameters.temperature"),
    ("top_p", "parameters.top_p"),
    ("stop", "parameters.stop"),
    ("seed", "parameters.seed"),
)


@dataclass(frozen=True)
class Prepared:
    """A validated request: the Triton model name and what to ask it."""

    model: str
    spec: GenerationSpec


def _as_error(error: BaseException, prefix: str = "") -> CallistoError:
    """The typed error a backend failure surfaces as."""
    if isinstance(error, CallistoError):
        return error
    if isinstance(error, ModelRejected):
        reason = str(error)
        path = next((f for key, f in _REJECTION_FIELDS if reason.startswith(key)), "messages")
        return InvalidArgument([FieldViolation(prefix + path, reason)])
    if isinstance(error, UnknownModel):
        return NotFound(str(error), reason="MODEL_NOT_FOUND")
    if isinstance(error, TritonUnavailable):
        return Unavailable(
            f"the model server is unavailable: {error}",
            retry_after=RETRY_AFTER_S,
            reason="TRITON_UNAVAILABLE",
        )
    if isinstance(error, TritonDeadline):
        return DeadlineExceeded("the deadline expired while the model was generating")
    if isinstance(error, ModelFailed):
        return Internal(f"the model failed: {error}", reason="MODEL_FAILED")
    log.error("generation failed", exc_info=error)
    return Internal("internal error")


def _result(outcome: Outcome, model: str) -> generation_pb2.GenerationResult:
    return generation_pb2.GenerationResult(
        finish_reason=FINISH_REASONS.get(outcome.finish_reason, generation_pb2.FINISH_REASON_STOP),
        usage=common_pb2.TokenUsage(
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            total_tokens=outcome.prompt_tokens + outcome.completion_tokens,
        ),
        ttft_ms=round(outcome.ttft_ms, 3),
        tokens_per_second=round(outcome.tokens_per_second, 2),
        duration_ms=round(outcome.duration_ms, 3),
        model=model,
    )


def _delta(delta: Delta) -> generation_pb2.TokenDelta:
    return generation_pb2.TokenDelta(text=delta.text, token_count=delta.token_count)


@dataclass
class _Generation:
    """One generation in flight on a stream (Generate, or one of a Chat stream's)."""

    relay: Relay | None = None
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.relay is not None:
            self.relay.cancel()


@dataclass
class _ChatState:
    generations: dict[str, _Generation] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class GenerationServicer(generation_pb2_grpc.GenerationServiceServicer):
    def __init__(self, runtime: Runtime[GenerationSettings], backend: TritonBackend) -> None:
        self._runtime = runtime
        self._settings = runtime.settings
        self._backend = backend
        self._active: set[Relay] = set()
        self._interval = max(self._settings.flush_interval_ms, 0.0) / 1000.0

    # --- shutdown -------------------------------------------------------------------------

    async def abort_on_stop(self) -> None:
        """At shutdown every running generation ends with a terminal UNAVAILABLE."""
        await self._runtime.stopping.wait()
        for relay in list(self._active):
            relay.abort(
                Unavailable(
                    "the generation service is shutting down",
                    retry_after=RETRY_AFTER_S,
                    reason="SHUTTING_DOWN",
                )
            )

    # --- validation -----------------------------------------------------------------------

    async def _prepare(
        self,
        model_field: str,
        messages: Sequence[generation_pb2.ChatMessage],
        parameters: generation_pb2.SamplingParameters,
        extras: dict[str, Any] | None,
        prefix: str = "",
    ) -> Prepared:
        settings = self._settings
        violations = Violations()
        model_name = model_field or settings.default_model
        match = MODEL_NAME.match(model_name)
        if match is None:
            violations.add(prefix + "model", "must look like models/{model}, e.g. models/llm")
        if not messages:
            violations.add(prefix + "messages", "is required: at least one message")
        elif len(messages) > MAX_MESSAGES:
            violations.add(prefix + "messages", f"must hold at most {MAX_MESSAGES} messages")
        turns: list[ChatTurn] = []
        for index, message in enumerate(messages[:MAX_MESSAGES]):
            path = f"{prefix}messages[{index}]"
            role = ROLES.get(message.role)
            if message.role == common_pb2.ROLE_UNSPECIFIED:
                violations.add(path + ".role", "is required")
            elif role is None:
                violations.add(path + ".role", "must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT")
            if not message.content.strip():
                violations.add(path + ".content", "must not be empty")
            turns.append(ChatTurn(role or "user", message.content))
        if turns and not any(turn.role == "user" for turn in turns):
            violations.add(prefix + "messages", "must hold at least one ROLE_USER message")
        params = prefix + "parameters."
        max_tokens = parameters.max_tokens
        if max_tokens < 0:
            violations.add(params + "max_tokens", "must not be negative")
        elif max_tokens > settings.max_tokens_limit:
            violations.add(params + "max_tokens", f"must be at most {settings.max_tokens_limit}")
        temperature = parameters.temperature if parameters.HasField("temperature") else None
        if temperature is not None and not 0.0 <= temperature <= 2.0:
            violations.add(params + "temperature", "must be between 0 and 2")
        top_p = parameters.top_p if parameters.HasField("top_p") else None
        if top_p is not None and not 0.0 < top_p <= 1.0:
            violations.add(params + "top_p", "must be greater than 0 and at most 1")
        stops = list(parameters.stop)
        if len(stops) > MAX_STOP_SEQUENCES:
            violations.add(params + "stop", f"must hold at most {MAX_STOP_SEQUENCES} sequences")
        for index, stop in enumerate(stops):
            if not stop:
                violations.add(f"{params}stop[{index}]", "must not be empty")
            elif len(stop) > MAX_STOP_LENGTH:
                violations.add(
                    f"{params}stop[{index}]", f"must be at most {MAX_STOP_LENGTH} characters"
                )
        violations.raise_if_any()
        assert match is not None
        model = match.group(1)
        info = await self._model_info(model)
        if not info.ready:
            raise Unavailable(
                f"model {model_name} is not loaded in Triton",
                retry_after=RETRY_AFTER_S,
                reason="MODEL_NOT_READY",
            )
        max_tokens = max_tokens or settings.default_max_tokens
        if info.context_length:
            if parameters.max_tokens >= info.context_length:
                raise InvalidArgument.field(
                    params + "max_tokens",
                    f"must be below the model's context window of {info.context_length} tokens",
                )
            max_tokens = min(max_tokens, info.context_length - 1)
        return Prepared(
            model=model,
            spec=GenerationSpec(
                messages=turns,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                stop=tuple(stops),
                seed=parameters.seed if parameters.HasField("seed") else None,
                extra=extras,
            ),
        )

    async def _model_info(self, model: str) -> Any:
        try:
            return await self._backend.model(model)
        except UnknownModel as error:
            raise NotFound(
                f"model models/{model} does not exist", reason="MODEL_NOT_FOUND"
            ) from error
        except (TritonUnavailable, TritonDeadline) as error:
            raise _as_error(TritonUnavailable(str(error))) from error

    def _extras(self, context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, Any] | None:
        if not self._settings.model_extras:
            return None
        raw = dict(context.invocation_metadata() or ()).get(EXTRAS_METADATA)
        if not raw:
            return None
        try:
            extras = json.loads(raw)
        except ValueError as error:
            raise InvalidArgument.field(EXTRAS_METADATA, "must be a JSON object") from error
        if not isinstance(extras, dict):
            raise InvalidArgument.field(EXTRAS_METADATA, "must be a JSON object")
        reserved = {"messages", "max_tokens", "temperature", "top_p", "stop", "seed"}
        return {k: v for k, v in extras.items() if k not in reserved}

    # --- running --------------------------------------------------------------------------

    def _timeout(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return self._settings.default_timeout_seconds
        if remaining <= 0:
            raise DeadlineExceeded("the deadline expired before the generation started")
        return float(remaining)

    @contextlib.contextmanager
    def _slot(self, relay: Relay) -> Iterator[None]:
        self._active.add(relay)
        try:
            yield
        finally:
            self._active.discard(relay)

    def _admit(self) -> None:
        if self._runtime.stopping.is_set():
            raise Unavailable(
                "the generation service is shutting down",
                retry_after=RETRY_AFTER_S,
                reason="SHUTTING_DOWN",
            )
        if len(self._active) >= self._settings.max_concurrent:
            raise ResourceExhausted(
                f"{self._settings.max_concurrent} generations are already running; retry later",
                reason="TOO_MANY_GENERATIONS",
            )

    def _start(self, prepared: Prepared, timeout: float, started: float) -> Relay:
        stream = self._backend.stream(prepared.model, prepared.spec, timeout=timeout)
        return Relay(stream, interval=self._interval, started=started)

    # --- RPCs -----------------------------------------------------------------------------

    async def Generate(
        self,
        request: generation_pb2.GenerateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        started = time.perf_counter()
        prepared = await self._prepare(
            request.model, request.messages, request.parameters, self._extras(context)
        )
        self._admit()
        relay = self._start(prepared, self._timeout(context), started)
        model = f"models/{prepared.model}"
        sequence = 0
        with self._slot(relay):
            try:
                async with contextlib.aclosing(relay.deltas()) as deltas:
                    async for delta in deltas:
                        sequence += 1
                        yield generation_pb2.GenerateResponse(
                            sequence=sequence, delta=_delta(delta)
                        )
            except Exception as error:
                typed = _as_error(error)
                if sequence == 0:
                    raise typed from error
                yield generation_pb2.GenerateResponse(
                    sequence=sequence + 1, error=typed.to_status()
                )
                return
        assert relay.outcome is not None
        yield generation_pb2.GenerateResponse(
            sequence=sequence + 1, result=_result(relay.outcome, model)
        )

    async def Chat(
        self,
        request_iterator: AsyncIterator[generation_pb2.ChatRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[generation_pb2.ChatResponse]:
        extras = self._extras(context)
        outbox: asyncio.Queue[generation_pb2.ChatResponse | None] = asyncio.Queue()
        state = _ChatState()

        def terminal_error(generation_id: str, error: CallistoError) -> None:
            state.finished.add(generation_id)
            outbox.put_nowait(
                generation_pb2.ChatResponse(generation_id=generation_id, error=error.to_status())
            )

        async def generate(generation_id: str, start: generation_pb2.StartGeneration) -> None:
            run = state.generations[generation_id]
            started = time.perf_counter()
            try:
                prepared = await self._prepare(
                    start.model, start.messages, start.parameters, extras, prefix="start."
                )
                self._admit()
                # Each generation gets what is left of the Chat call's deadline when it starts.
                relay = self._start(prepared, self._timeout(context), started)
                run.relay = relay
                if run.cancelled:
                    relay.cancel()
                with self._slot(relay):
                    async with contextlib.aclosing(relay.deltas()) as deltas:
                        async for delta in deltas:
                            outbox.put_nowait(
                                generation_pb2.ChatResponse(
                                    generation_id=generation_id, delta=_delta(delta)
                                )
                            )
                assert relay.outcome is not None
                result = _result(relay.outcome, f"models/{prepared.model}")
                state.finished.add(generation_id)
                outbox.put_nowait(
                    generation_pb2.ChatResponse(generation_id=generation_id, result=result)
                )
            except asyncio.CancelledError:
                raise
            except Exception as error:
                terminal_error(generation_id, _as_error(error, prefix="start."))
            finally:
                state.generations.pop(generation_id, None)

        async def read_requests() -> None:
            try:
                async for message in request_iterator:
                    action = message.WhichOneof("action")
                    if action == "start":
                        start_generation(message.start)
                    elif action == "cancel":
                        cancel_generation(message.cancel.generation_id)
                    else:
                        terminal_error(
                            "", InvalidArgument.field("action", "must be start or cancel")
                        )
                if state.tasks:
                    await asyncio.gather(*list(state.tasks), return_exceptions=True)
            finally:
                outbox.put_nowait(None)

        def start_generation(start: generation_pb2.StartGeneration) -> None:
            generation_id = start.generation_id
            if not GENERATION_ID.match(generation_id):
                terminal_error(
                    generation_id,
                    InvalidArgument.field(
                        "start.generation_id",
                        "is required: 1-128 letters, digits and _ . : - (not starting with one)",
                    ),
                )
                return
            if generation_id in state.generations or generation_id in state.finished:
                terminal_error(
                    generation_id,
                    InvalidArgument.field("start.generation_id", "is already used on this stream"),
                )
                return
            state.generations[generation_id] = _Generation()
            task = asyncio.create_task(generate(generation_id, start), name="chat-generation")
            state.tasks.add(task)
            task.add_done_callback(state.tasks.discard)

        def cancel_generation(generation_id: str) -> None:
            run = state.generations.get(generation_id)
            if run is not None:
                run.cancel()
            elif generation_id not in state.finished:
                terminal_error(
                    generation_id,
                    NotFound(f"no generation {generation_id!r} was started on this stream"),
                )

        async def end_on_stop() -> None:
            # At shutdown the generations end with UNAVAILABLE (abort_on_stop), then the stream.
            await self._runtime.stopping.wait()
            await asyncio.gather(*list(state.tasks), return_exceptions=True)
            outbox.put_nowait(None)

        reader = asyncio.create_task(read_requests(), name="chat-reader")
        stop_watch = asyncio.create_task(end_on_stop(), name="chat-stop-watch")
        sequence = 0
        try:
            while True:
                response = await outbox.get()
                if response is None:
                    break
                sequence += 1
                response.sequence = sequence
                yield response
        finally:
            reader.cancel()
            stop_watch.cancel()
            for task in list(state.tasks):
                task.cancel()
            await asyncio.gather(reader, stop_watch, *list(state.tasks), return_exceptions=True)

    async def ListModels(
        self,
        request: generation_pb2.ListModelsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> generation_pb2.ListModelsResponse:
        try:
            models = await self._backend.models(refresh=True)
        except (TritonUnavailable, TritonDeadline, ModelFailed) as error:
            raise _as_error(TritonUnavailable(str(error))) from error
        return generation_pb2.ListModelsResponse(
            models=[
                generation_pb2.Model(
                    name=f"models/{info.name}",
                    ready=info.ready,
                    versions=list(info.versions),
                    context_length=info.context_length,
                    streaming=info.decoupled,
                )
                for info in models
            ]
        )


async def build(runtime: Runtime[GenerationSettings]) -> ServiceDefinition:
    settings = runtime.settings
    backend = TritonBackend(settings.triton_url)
    servicer = GenerationServicer(runtime, backend)
    watcher = asyncio.create_task(servicer.abort_on_stop(), name="generation-stop-watcher")
    default = MODEL_NAME.match(settings.default_model)
    default_model = default.group(1) if default else None

    async def triton_ready() -> bool:
        return await backend.ready(default_model)

    async def close() -> None:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await backend.close()

    return ServiceDefinition(
        service_names=[SERVICE_NAME],
        register=lambda server: generation_pb2_grpc.add_GenerationServiceServicer_to_server(
            servicer, server
        ),
        checks=[DependencyCheck("triton", triton_ready)],
        on_stop=[close],
    )
