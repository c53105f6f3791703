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
import math
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2, generation_pb2_grpc
from callisto.services.common.errors import (
    CallistoError,
    DeadlineExceeded,
    FailedPrecondition,
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
from callisto.services.generation.structured import (
    OutputInvalid,
    ToolCallOut,
    ToolSpec,
    call_text,
    check_schema,
    check_tools,
    order_properties,
    parse_json,
    parse_tool_output,
    schema_instruction,
    tool_envelope,
    tools_instruction,
)
from callisto.services.generation.triton import (
    ChatTurn,
    GenerationSpec,
    ModelFailed,
    ModelRejected,
    SentimentScore,
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
# AnalyzeSentiment bounds (the contract in generation.proto).
MAX_SENTIMENT_TEXTS = 64
MAX_SENTIMENT_TEXT_CHARS = 16384
MAX_SENTIMENT_TOTAL_CHARS = 262144
SENTIMENT_LABELS = {
    "negative": common_pb2.SENTIMENT_LABEL_NEGATIVE,
    "neutral": common_pb2.SENTIMENT_LABEL_NEUTRAL,
    "positive": common_pb2.SENTIMENT_LABEL_POSITIVE,
}
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
    "tool_calls": generation_pb2.FINISH_REASON_TOOL_CALLS,
}
# Request fields that `x-callisto-model-extras` may not override.
RESERVED_EXTRAS = {
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "repetition_penalty",
    "stop",
    "seed",
    "json_schema",
}
MAX_TOOL_CALLS = 32
# Nesting of a JSON value from a Struct (a schema, tool arguments): well above any usable schema.
MAX_JSON_DEPTH = 64
TOOL_MODES = {
    generation_pb2.TOOL_CHOICE_MODE_UNSPECIFIED: "auto",
    generation_pb2.TOOL_CHOICE_MODE_AUTO: "auto",
    generation_pb2.TOOL_CHOICE_MODE_NONE: "none",
    generation_pb2.TOOL_CHOICE_MODE_REQUIRED: "required",
}
# The model's reasons for refusing a request, mapped to the request field they are about.
_REJECTION_FIELDS = (
    ("max_tokens", "parameters.max_tokens"),
    ("temperature", "parameters.temperature"),
    ("top_p", "parameters.top_p"),
    ("repetition_penalty", "parameters.repetition_penalty"),
    ("stop", "parameters.stop"),
    ("seed", "parameters.seed"),
    ("json_schema", "response_format.json_schema"),
)


@dataclass(frozen=True)
class Structure:
    """What the answer must be: JSON valid against `schema`, or a call of one of `tools`."""

    schema: dict[str, Any]
    tools: tuple[ToolSpec, ...] = ()
    allow_answer: bool = False


@dataclass(frozen=True)
class Prepared:
    """A validated request: the Triton model name, what to ask it, and the answer's shape."""

    model: str
    spec: GenerationSpec
    structure: Structure | None = None


@dataclass(frozen=True)
class Answer:
    """The terminal result's answer: text, the parsed JSON value, or tool calls."""

    text: str
    parsed: Any = None
    has_parsed: bool = False
    tool_calls: tuple[ToolCallOut, ...] = ()


# GenerateRequest and StartGeneration share the fields of a generation.
GenerationRequest = generation_pb2.GenerateRequest | generation_pb2.StartGeneration


class _NotJson(Exception):
    """A Struct holds what JSON cannot: NaN, Infinity, a value with no kind, runaway nesting."""

    def __init__(self, path: str, description: str) -> None:
        super().__init__(description)
        self.path = path
        self.description = description


def _json_object(value: struct_pb2.Struct, path: str, violations: Violations) -> dict[str, Any]:
    """A Struct as plain JSON; a violation (and an empty object) when it is not JSON.

    Struct numbers are doubles: integral ones become ints, since the grammar needs
    `minLength: 3`, not 3.0, and `const: 1` must print as the model will write it.
    """
    try:
        return _object(value, path, 0)
    except _NotJson as error:
        violations.add(error.path, error.description)
        return {}


def _object(value: struct_pb2.Struct, path: str, depth: int) -> dict[str, Any]:
    # Sorted: a Struct's map order differs between processes, and the prompt must not.
    fields = sorted(value.fields.items())
    return {key: _value(item, f"{path}.{key}", depth + 1) for key, item in fields}


def _value(value: struct_pb2.Value, path: str, depth: int) -> Any:
    if depth > MAX_JSON_DEPTH:
        raise _NotJson(path, f"nests deeper than {MAX_JSON_DEPTH} levels")
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise _NotJson(path, "must be a finite number")
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _object(value.struct_value, path, depth)
    if kind == "list_value":
        return [
            _value(item, f"{path}[{index}]", depth + 1)
            for index, item in enumerate(value.list_value.values)
        ]
    if kind == "null_value":
        return None
    raise _NotJson(path, "must hold a value: null, a number, a string, a bool, an object or a list")


def _answer(structure: Structure | None, outcome: Outcome, text: str) -> tuple[str, Answer]:
    """The finish reason and the answer; raises when a structured answer is cut or invalid."""
    if structure is None or outcome.finish_reason == "cancelled":
        return outcome.finish_reason, Answer(text)
    if outcome.finish_reason == "length":
        raise FailedPrecondition(
            f"max_tokens ended the generation after {outcome.completion_tokens} tokens, before "
            "the JSON answer was complete; raise parameters.max_tokens",
            reason="OUTPUT_TRUNCATED",
        )
    try:
        if structure.tools:
            answer, calls = parse_tool_output(
                text, structure.tools, allow_answer=structure.allow_answer
            )
            if calls:
                return "tool_calls", Answer("", tool_calls=tuple(calls))
            return outcome.finish_reason, Answer(answer)
        parsed = parse_json(text, structure.schema)
    except OutputInvalid as error:
        raise Internal(str(error), reason="MODEL_OUTPUT_INVALID") from error
    return outcome.finish_reason, Answer(text, parsed=parsed, has_parsed=True)


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


def _result(
    prepared: Prepared, outcome: Outcome, texts: Sequence[str]
) -> generation_pb2.GenerationResult:
    finish_reason, answer = _answer(prepared.structure, outcome, "".join(texts))
    result = generation_pb2.GenerationResult(
        finish_reason=FINISH_REASONS.get(finish_reason, generation_pb2.FINISH_REASON_STOP),
        usage=common_pb2.TokenUsage(
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            total_tokens=outcome.prompt_tokens + outcome.completion_tokens,
        ),
        ttft_ms=round(outcome.ttft_ms, 3),
        tokens_per_second=round(outcome.tokens_per_second, 2),
        duration_ms=round(outcome.duration_ms, 3),
        model=f"models/{prepared.model}",
        text=answer.text,
    )
    if answer.has_parsed:
        json_format.ParseDict(answer.parsed, result.parsed)
    for call in answer.tool_calls:
        arguments = struct_pb2.Struct()
        arguments.update(call.arguments)
        result.tool_calls.append(
            generation_pb2.ToolCall(id=call.id, name=call.name, arguments=arguments)
        )
    return result


def _turns(
    messages: Sequence[generation_pb2.ChatMessage], prefix: str, violations: Violations
) -> list[ChatTurn]:
    """The prompt as the model takes it. Chat templates of small models know only system, user
    and assistant: past tool calls are written as the envelope the model answers with, and a
    tool's result becomes a user turn that names the call."""
    turns: list[ChatTurn] = []
    calls: dict[str, str] = {}  # tool call id -> tool name, from earlier assistant turns
    for index, message in enumerate(messages):
        path = f"{prefix}messages[{index}]"
        role = ROLES.get(message.role)
        content = message.content
        if message.role == common_pb2.ROLE_UNSPECIFIED:
            violations.add(path + ".role", "is required")
        elif message.role == common_pb2.ROLE_TOOL:
            role = "user"
            if not message.tool_call_id:
                violations.add(path + ".tool_call_id", "is required on a ROLE_TOOL message")
            name = calls.get(message.tool_call_id, "")
            content = f"Result of tool call {message.tool_call_id} {name}:\n{content}"
        elif role is None:
            violations.add(
                path + ".role", "must be ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL"
            )
        if message.tool_call_id and message.role != common_pb2.ROLE_TOOL:
            violations.add(path + ".tool_call_id", "is allowed only on a ROLE_TOOL message")
        if message.tool_calls:
            if message.role != common_pb2.ROLE_ASSISTANT:
                violations.add(path + ".tool_calls", "are allowed only on a ROLE_ASSISTANT message")
            if len(message.tool_calls) > MAX_TOOL_CALLS:
                violations.add(path + ".tool_calls", f"must hold at most {MAX_TOOL_CALLS} calls")
            written = []
            for number, call in enumerate(message.tool_calls[:MAX_TOOL_CALLS]):
                if not call.id or not call.name:
                    violations.add(f"{path}.tool_calls[{number}]", "needs an id and a name")
                calls[call.id] = call.name
                arguments = _json_object(
                    call.arguments, f"{path}.tool_calls[{number}].arguments", violations
                )
                written.append(call_text(call.name, arguments))
            content = "\n".join([content, *written] if content.strip() else written)
        elif not message.content.strip():
            violations.add(path + ".content", "must not be empty")
        turns.append(ChatTurn(role or "user", content))
    if turns and not any(message.role == common_pb2.ROLE_USER for message in messages):
        violations.add(prefix + "messages", "must hold at least one ROLE_USER message")
    return turns


def _structure(request: GenerationRequest, prefix: str, violations: Violations) -> Structure | None:
    """The answer's shape from `response_format` or `tools`, each schema checked."""
    has_format = request.HasField("response_format")
    tools = [
        ToolSpec(
            tool.name,
            tool.description,
            order_properties(
                _json_object(tool.parameters, f"{prefix}tools[{index}].parameters", violations)
            ),
        )
        for index, tool in enumerate(request.tools)
    ]
    choice = request.tool_choice
    which = choice.WhichOneof("choice")
    if has_format and tools:
        violations.add(prefix + "tools", "cannot be combined with response_format")
        return None
    if has_format:
        path = prefix + "response_format.json_schema"
        if not request.response_format.HasField("json_schema"):
            violations.add(path, "is required")
            return None
        if not request.response_format.json_schema.fields:
            violations.add(path, "must not be empty: give the answer's type")
            return None
        schema = order_properties(
            _json_object(request.response_format.json_schema, path, violations)
        )
        if schema:
            check_schema(schema, path, violations)
        name = request.response_format.name
        if name and not re.match(r"^[A-Za-z0-9_-]{1,64}$", name):
            violations.add(prefix + "response_format.name", "must be 1-64 letters, digits, _ or -")
        return Structure(schema=schema)
    if which is not None and not tools:
        violations.add(prefix + "tool_choice", "needs tools")
        return None
    if not tools:
        return None
    check_tools(tools, prefix + "tools", violations)
    mode = TOOL_MODES.get(choice.mode, "") if which == "mode" else ""
    if which == "mode" and not mode:
        violations.add(prefix + "tool_choice.mode", "must be AUTO, NONE or REQUIRED")
    if which == "tool":
        named = [tool for tool in tools if tool.name == choice.tool]
        if not named:
            violations.add(prefix + "tool_choice.tool", f"names no tool in tools: {choice.tool!r}")
            return None
        tools, mode = named, "required"
    mode = mode or "auto"
    if mode == "none":
        return None
    allow_answer = mode == "auto"
    return Structure(
        schema=tool_envelope(tools, allow_answer=allow_answer),
        tools=tuple(tools),
        allow_answer=allow_answer,
    )


def _with_instruction(turns: list[ChatTurn], structure: Structure) -> list[ChatTurn]:
    """The prompt with the answer's shape explained in the system message."""
    if structure.tools:
        instruction = tools_instruction(structure.tools, allow_answer=structure.allow_answer)
    else:
        instruction = schema_instruction(structure.schema)
    if turns and turns[0].role == "system":
        return [ChatTurn("system", f"{turns[0].content}\n\n{instruction}"), *turns[1:]]
    return [ChatTurn("system", instruction), *turns]


def _sentiment(score: SentimentScore) -> common_pb2.Sentiment:
    label = SENTIMENT_LABELS.get(score.label)
    if label is None or not math.isfinite(score.score) or not -1.0 <= score.score <= 1.0:
        raise Internal(
            f"the sentiment model answered {score.label!r} {score.score}; expected negative, "
            "neutral or positive and a score in [-1, 1]",
            reason="MODEL_OUTPUT_INVALID",
        )
    # FP32 from the model: rounded so 0.7906 reads as 0.7906, not 0.790600001811981.
    return common_pb2.Sentiment(label=label, score=round(score.score, 6))


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
        self, request: GenerationRequest, extras: dict[str, Any] | None, prefix: str = ""
    ) -> Prepared:
        settings = self._settings
        messages, parameters = request.messages, request.parameters
        violations = Violations()
        model_name = request.model or settings.default_model
        match = MODEL_NAME.match(model_name)
        if match is None:
            violations.add(prefix + "model", "must look like models/{model}, e.g. models/llm")
        if not messages:
            violations.add(prefix + "messages", "is required: at least one message")
        elif len(messages) > MAX_MESSAGES:
            violations.add(prefix + "messages", f"must hold at most {MAX_MESSAGES} messages")
        turns = _turns(messages[:MAX_MESSAGES], prefix, violations)
        structure = _structure(request, prefix, violations)
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
        penalty = (
            parameters.repetition_penalty if parameters.HasField("repetition_penalty") else None
        )
        if penalty is not None and not 1.0 <= penalty <= 2.0:
            violations.add(params + "repetition_penalty", "must be between 1 and 2")
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
        if structure is not None:
            turns = _with_instruction(turns, structure)
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
                repetition_penalty=penalty,
                stop=tuple(stops),
                seed=parameters.seed if parameters.HasField("seed") else None,
                json_schema=structure.schema if structure is not None else None,
                extra=extras,
            ),
            structure=structure,
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
        return {k: v for k, v in extras.items() if k not in RESERVED_EXTRAS}

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
        prepared = await self._prepare(request, self._extras(context))
        self._admit()
        relay = self._start(prepared, self._timeout(context), started)
        sequence = 0
        texts: list[str] = []
        with self._slot(relay):
            try:
                async with contextlib.aclosing(relay.deltas()) as deltas:
                    async for delta in deltas:
                        sequence += 1
                        texts.append(delta.text)
                        yield generation_pb2.GenerateResponse(
                            sequence=sequence, delta=_delta(delta)
                        )
                assert relay.outcome is not None
                result = _result(prepared, relay.outcome, texts)
            except Exception as error:
                typed = _as_error(error)
                if sequence == 0:
                    raise typed from error
                yield generation_pb2.GenerateResponse(
                    sequence=sequence + 1, error=typed.to_status()
                )
                return
        yield generation_pb2.GenerateResponse(sequence=sequence + 1, result=result)

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
                prepared = await self._prepare(start, extras, prefix="start.")
                self._admit()
                # Each generation gets what is left of the Chat call's deadline when it starts.
                relay = self._start(prepared, self._timeout(context), started)
                run.relay = relay
                if run.cancelled:
                    relay.cancel()
                texts: list[str] = []
                with self._slot(relay):
                    async with contextlib.aclosing(relay.deltas()) as deltas:
                        async for delta in deltas:
                            texts.append(delta.text)
                            outbox.put_nowait(
                                generation_pb2.ChatResponse(
                                    generation_id=generation_id, delta=_delta(delta)
                                )
                            )
                assert relay.outcome is not None
                result = _result(prepared, relay.outcome, texts)
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
                # Not tagged with the id: that generation may still be streaming, and an error
                # tagged with it would read as its end, with its deltas still to come.
                terminal_error(
                    "",
                    InvalidArgument.field(
                        "start.generation_id", f"{generation_id!r} is already used on this stream"
                    ),
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

    async def AnalyzeSentiment(
        self,
        request: generation_pb2.AnalyzeSentimentRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> generation_pb2.AnalyzeSentimentResponse:
        model_name = request.model or self._settings.sentiment_model
        texts = list(request.texts)
        violations = Violations()
        match = MODEL_NAME.match(model_name)
        if match is None:
            violations.add("model", "must look like models/{model}, e.g. models/sentiment")
        if not texts:
            violations.add("texts", "is required: at least one text")
        elif len(texts) > MAX_SENTIMENT_TEXTS:
            violations.add("texts", f"must hold at most {MAX_SENTIMENT_TEXTS} texts")
        total = 0
        for index, text in enumerate(texts[:MAX_SENTIMENT_TEXTS]):
            total += len(text)
            if len(text) > MAX_SENTIMENT_TEXT_CHARS:
                violations.add(
                    f"texts[{index}]", f"must be at most {MAX_SENTIMENT_TEXT_CHARS} characters"
                )
            elif "\x00" in text:
                violations.add(f"texts[{index}]", "must be text: it holds a NUL character")
        if total > MAX_SENTIMENT_TOTAL_CHARS:
            violations.add(
                "texts", f"must hold at most {MAX_SENTIMENT_TOTAL_CHARS} characters in all"
            )
        violations.raise_if_any()
        assert match is not None
        model = match.group(1)
        if self._runtime.stopping.is_set():
            raise Unavailable(
                "the generation service is shutting down",
                retry_after=RETRY_AFTER_S,
                reason="SHUTTING_DOWN",
            )
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("the deadline expired before the texts were scored")
        info = await self._model_info(model)
        if not info.ready:
            raise Unavailable(
                f"model {model_name} is not loaded in Triton",
                retry_after=RETRY_AFTER_S,
                reason="MODEL_NOT_READY",
            )
        if info.decoupled:
            raise InvalidArgument.field(
                "model", f"{model_name} is a streaming model, not a sentiment model"
            )
        # What is left of the caller's deadline after the catalog look-up bounds the call.
        remaining = context.time_remaining()
        timeout = self._settings.sentiment_timeout_seconds if remaining is None else remaining
        if timeout <= 0:
            raise DeadlineExceeded("the deadline expired before the texts were scored")
        try:
            scores = await self._backend.sentiment(model, texts, deadline_s=float(timeout))
        except ModelRejected as error:
            raise InvalidArgument.field(
                "model", f"{model_name} does not take sentiment requests: {error}"
            ) from error
        except TritonDeadline as error:
            raise DeadlineExceeded(
                "the deadline expired while the model was scoring the texts"
            ) from error
        except Exception as error:
            raise _as_error(error) from error
        return generation_pb2.AnalyzeSentimentResponse(
            sentiments=[_sentiment(score) for score in scores], model=f"models/{model}"
        )

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
