"""The Triton backend: streaming chat generation over `ModelStreamInfer` (`tritonclient.grpc.aio`).

The process holds ONE client (one HTTP/2 channel); every generation is one bidirectional
`ModelStreamInfer` call multiplexed on it, so cancelling that call reaches Triton, which marks
the request cancelled and the model stops between tokens. The request stream stays open until
the final response arrives, so Triton never sees a half-close while it still streams.

The models speak the contract of `deploy/triton/README.md`: one JSON `request` tensor in;
`text_output`, `prompt_tokens`, `completion_tokens`, `finish_reason` out on every response;
errors prefixed `invalid_argument: ` or `internal: `. This module knows nothing of Callisto's
protobuf API: it speaks in the dataclasses and exceptions below.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import aio as triton_aio
from tritonclient.utils import InferenceServerException

# Reconnect quickly after Triton restarts: gRPC's default backoff grows to two minutes. No
# keepalive pings: Triton's server answers frequent pings with GOAWAY `too_many_pings`, which
# would fail every stream on the connection; a dead Triton shows up as a reset connection, and
# a hung one is bounded by each call's deadline.
_CHANNEL_ARGS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_INT32 = struct.Struct("<i")
_LENGTH = struct.Struct("<I")
# How long the model catalog (repository index + configs) is trusted before it is re-read.
_CATALOG_TTL_S = 5.0


class TritonUnavailable(Exception):
    """Triton cannot be reached, or the model is not loaded."""


class TritonDeadline(Exception):
    """The call's deadline expired inside Triton."""


class UnknownModel(Exception):
    """Triton's repository has no such model."""


class ModelRejected(Exception):
    """The model refused the request (`invalid_argument:`); the message is the model's reason."""


class ModelFailed(Exception):
    """The model failed while generating (`internal:` or any other error)."""


@dataclass(frozen=True)
class ChatTurn:
    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class GenerationSpec:
    """What to generate: the prompt and the sampling parameters, as the model takes them."""

    messages: Sequence[ChatTurn]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    stop: Sequence[str] = ()
    seed: int | None = None
    # The JSON Schema the model's output is constrained to (a grammar in the model server).
    json_schema: dict[str, Any] | None = None
    # Fields only `toy_llm` reads (delay_ms, fail_after, tag): tests and benchmarks.
    extra: dict[str, Any] | None = None

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
            "max_tokens": self.max_tokens,
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if self.repetition_penalty is not None:
            body["repetition_penalty"] = self.repetition_penalty
        if self.stop:
            body["stop"] = list(self.stop)
        if self.seed is not None:
            body["seed"] = self.seed
        if self.json_schema is not None:
            body["json_schema"] = self.json_schema
        if self.extra:
            body.update(self.extra)
        return json.dumps(body, ensure_ascii=False)


@dataclass(frozen=True)
class ModelEvent:
    """One streamed response: new text, the running counts, and `finish_reason` on the last."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "" until the last response: stop | length | cancelled


@dataclass(frozen=True)
class SentimentScore:
    """One text's sentiment as the model answers it: `negative` | `neutral` | `positive` and
    the score in [-1, 1]."""

    label: str
    score: float


@dataclass(frozen=True)
class ModelInfo:
    name: str
    ready: bool
    versions: tuple[str, ...]
    context_length: int
    decoupled: bool


def _decode(response: Any) -> ModelEvent:
    """Reads the four outputs straight from the raw tensor bytes (no numpy on the hot path).

    A BYTES tensor of one element is a little-endian uint32 length and the bytes; an INT32 one
    is four little-endian bytes.
    """
    text, prompt_tokens, completion_tokens, finish_reason = "", 0, 0, ""
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=False):
        name = output.name
        if name == "text_output" or name == "finish_reason":
            value = raw[4 : 4 + _LENGTH.unpack_from(raw)[0]].decode("utf-8", errors="replace")
            if name == "text_output":
                text = value
            else:
                finish_reason = value
        elif name == "completion_tokens":
            completion_tokens = _INT32.unpack_from(raw)[0]
        elif name == "prompt_tokens":
            prompt_tokens = _INT32.unpack_from(raw)[0]
    return ModelEvent(text, prompt_tokens, completion_tokens, finish_reason)


def _model_error(message: str) -> Exception:
    if message.startswith("invalid_argument: "):
        return ModelRejected(message.removeprefix("invalid_argument: "))
    if "unknown model" in message.lower() or "is not found" in message.lower():
        return UnknownModel(message)
    if "is not ready" in message.lower() or "unavailable" in message.lower():
        return TritonUnavailable(message)
    return ModelFailed(message.removeprefix("internal: "))


def _rpc_error(error: grpc.aio.AioRpcError | InferenceServerException) -> Exception:
    if isinstance(error, grpc.aio.AioRpcError):
        code, message = error.code(), error.details() or ""
    else:
        code_name = str(error.status() or "")
        code = next((c for c in grpc.StatusCode if str(c) == code_name), grpc.StatusCode.UNKNOWN)
        message = error.message() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TritonDeadline(message)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
        return TritonUnavailable(message or "Triton is unreachable")
    if code == grpc.StatusCode.NOT_FOUND:
        return UnknownModel(message)
    return _model_error(message)


def _infer_error(error: InferenceServerException) -> Exception:
    """A `ModelInfer` failure: Triton refuses a request that does not fit the model's inputs
    and outputs with INVALID_ARGUMENT, which means the named model speaks another contract."""
    if str(error.status() or "") == str(grpc.StatusCode.INVALID_ARGUMENT):
        return ModelRejected(error.message() or "the model refused the request")
    return _rpc_error(error)


class ModelStream:
    """One generation in flight: iterate its events; `cancel()` stops it inside Triton."""

    def __init__(self, client: Any, model: str, spec: GenerationSpec, timeout: float) -> None:
        request = triton_aio.InferInput("request", [1], "BYTES")
        request.set_data_from_numpy(np.array([spec.to_json().encode("utf-8")], dtype=np.object_))
        self._finished = asyncio.Event()
        self._request = {"model_name": model, "inputs": [request]}
        self._call = client.stream_infer(self._requests(), stream_timeout=timeout)
        self._done = False

    async def _requests(self) -> AsyncIterator[dict[str, Any]]:
        yield self._request
        # Hold the request side open until the final response: a half-close is not a cancel.
        await self._finished.wait()

    def cancel(self) -> None:
        """Cancels the ModelStreamInfer call: Triton marks the request cancelled."""
        if not self._done:
            self._done = True
            self._finished.set()
            self._call.cancel()

    def close(self) -> None:
        """Ends a finished stream cleanly (half-close), or cancels one still running."""
        if self._done:
            return
        self.cancel()

    async def __aiter__(self) -> AsyncIterator[ModelEvent]:
        try:
            while True:
                try:
                    result, error = await self._call.__anext__()
                except StopAsyncIteration:
                    raise TritonUnavailable(
                        "Triton ended the stream before the final response"
                    ) from None
                except (grpc.aio.AioRpcError, InferenceServerException) as rpc_error:
                    raise _rpc_error(rpc_error) from None
                if error is not None:
                    self._done = True
                    self._finished.set()
                    raise _model_error(error.message() or str(error))
                event = _decode(result.get_response())
                if event.finish_reason:
                    # The last response: let the request side end so the call completes with OK.
                    self._done = True
                    self._finished.set()
                    yield event
                    return
                yield event
        finally:
            self.close()


class TritonBackend:
    """Triton over one shared gRPC channel: generation streams, health, model catalog."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = triton_aio.InferenceServerClient(url, channel_args=_CHANNEL_ARGS)
        self._catalog: dict[str, ModelInfo] = {}
        self._catalog_time = 0.0
        self._catalog_lock = asyncio.Lock()

    async def close(self) -> None:
        await self._client.close()

    def stream(self, model: str, spec: GenerationSpec, *, timeout: float) -> ModelStream:
        """Starts one generation; it runs until its final event, an error, or `cancel()`."""
        return ModelStream(self._client, model, spec, timeout)

    async def sentiment(
        self, model: str, texts: Sequence[str], *, deadline_s: float
    ) -> list[SentimentScore]:
        """Scores `texts` with one batched `ModelInfer` (the `sentiment` contract: input `text`,
        outputs `label` and `score`, one row per text), in order.

        One request of N rows rather than N requests: Triton's dynamic batcher merges batched
        requests from concurrent callers just as it merges single rows, and one call spares
        N-1 round trips and keeps the batch atomic (all scored, or one error).
        """
        rows = np.array([[text.encode("utf-8")] for text in texts], dtype=np.object_)
        text = triton_aio.InferInput("text", [len(texts), 1], "BYTES")
        text.set_data_from_numpy(rows.reshape(len(texts), 1))
        outputs = [
            triton_aio.InferRequestedOutput("label"),
            triton_aio.InferRequestedOutput("score"),
        ]
        try:
            result = await self._client.infer(
                model, [text], outputs=outputs, client_timeout=deadline_s
            )
        except InferenceServerException as error:
            raise _infer_error(error) from None
        labels = result.as_numpy("label")
        scores = result.as_numpy("score")
        if (
            labels is None
            or scores is None
            or labels.size != len(texts)
            or scores.size != len(texts)
        ):
            raise ModelFailed(f"model {model} did not answer one label and score per text")
        return [
            SentimentScore(
                label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label),
                float(score),
            )
            for label, score in zip(labels.reshape(-1), scores.reshape(-1), strict=True)
        ]

    async def ready(self, model: str | None = None, probe_s: float = 2.0) -> bool:
        """Triton's server-ready (and the model's ready state when one is named)."""
        try:
            if not await self._client.is_server_ready(client_timeout=probe_s):
                return False
            if model is not None:
                return bool(await self._client.is_model_ready(model, client_timeout=probe_s))
        except InferenceServerException:
            return False
        return True

    async def models(self, *, refresh: bool = False, rpc_s: float = 5.0) -> list[ModelInfo]:
        """Triton's repository index with each loaded model's config (context window, decoupled)."""
        async with self._catalog_lock:
            fresh = time.monotonic() - self._catalog_time < _CATALOG_TTL_S
            if refresh or not fresh or not self._catalog:
                self._catalog = await self._read_catalog(rpc_s)
                self._catalog_time = time.monotonic()
            return list(self._catalog.values())

    async def model(self, name: str) -> ModelInfo:
        """The catalog entry of one model; re-reads the index once before answering unknown."""
        info = self._catalog.get(name)
        if info is not None and time.monotonic() - self._catalog_time < _CATALOG_TTL_S:
            return info  # the common case: no lock, no copy of the catalog
        for refresh in (False, True):
            for info in await self.models(refresh=refresh):
                if info.name == name:
                    return info
        raise UnknownModel(f"Triton serves no model named {name!r}")

    async def _read_catalog(self, rpc_s: float) -> dict[str, ModelInfo]:
        try:
            index = await self._client.get_model_repository_index(
                as_json=True, client_timeout=rpc_s
            )
        except InferenceServerException as error:
            raise _rpc_error(error) from None
        entries: dict[str, list[dict[str, Any]]] = {}
        for entry in index.get("models", []):
            entries.setdefault(str(entry.get("name", "")), []).append(entry)
        catalog: dict[str, ModelInfo] = {}
        for name, rows in sorted(entries.items()):
            ready_versions = tuple(
                sorted(str(r.get("version", "")) for r in rows if r.get("state") == "READY")
            )
            context_length, decoupled = 0, False
            if ready_versions:
                try:
                    config = (
                        await self._client.get_model_config(
                            name, as_json=True, client_timeout=rpc_s
                        )
                    )["config"]
                except InferenceServerException as error:
                    raise _rpc_error(error) from None
                parameter = config.get("parameters", {}).get("context_length", {})
                raw = str(parameter.get("string_value", "0") or "0")
                context_length = int(raw) if raw.isdigit() else 0
                policy = config.get("model_transaction_policy", {})
                decoupled = bool(policy.get("decoupled", False))
            catalog[name] = ModelInfo(
                name=name,
                ready=bool(ready_versions),
                versions=ready_versions,
                context_length=context_length,
                decoupled=decoupled,
            )
        return catalog
