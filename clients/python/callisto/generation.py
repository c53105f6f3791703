"""`client.generation`: token streams, chat sessions that start and cancel generations, models.

Messages are the `callisto.api.generation.v1.generation_pb2` ones.

- `generate(prompt_or_messages, model=..., max_tokens=..., ...)` returns a `Generation`: an
  async iterator of `TokenDelta`s whose last item is the `GenerationResult` (finish reason,
  usage, TTFT, tokens/s); `.text` and `.result` hold what arrived, `await gen.complete()` runs
  it to the end, `gen.cancel()` stops it. A terminal in-stream error raises `callisto.errors`.
  A generation that fails retryably before its first token is started again (nothing was
  produced, so nothing repeats); once tokens flowed it is not.
- `chat()` opens one bidirectional `Chat` stream: `async with client.generation.chat() as chat:
  g = await chat.start(messages)`; each `ChatGeneration` iterates like a `Generation`, and
  `await g.cancel()` (or `chat.cancel(id)`) stops it mid-stream: its result then has
  `FINISH_REASON_CANCELLED`. Several generations may run at once on one session.
- `list_models()` → `list[Model]`.
- `analyze_sentiment(texts)` → one `common_pb2.Sentiment` (label, score in [-1, 1]) per text.

`prompt_or_messages` is a user prompt string or a sequence of `ChatMessage`s; `system=` adds a
system message in front of a string prompt. `model` is `models/{name}` or a bare name; empty
uses the service's default.
"""

# `timeout` is a gRPC deadline sent to the server (and spent across retries), not a local
# cancel scope, so these functions take it the way grpc stubs do.
# ruff: noqa: ASYNC109
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

import grpc

from callisto._facade import Facade, Metadata
from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2 as pb
from callisto.api.generation.v1 import generation_pb2_grpc as pb_grpc
from callisto.errors import CallistoError, from_rpc_error, from_status
from callisto.retry import RetryPolicy

# What a generation stream yields: tokens, then the final result.
Item = pb.TokenDelta | pb.GenerationResult
Prompt = str | Sequence[pb.ChatMessage]


def model_name(model: str) -> str:
    return model if not model or "/" in model else f"models/{model}"


def chat_messages(prompt: Prompt, system: str | None = None) -> list[pb.ChatMessage]:
    """The messages a prompt stands for (a string becomes one user message)."""
    if not isinstance(prompt, str):
        return list(prompt)
    messages = []
    if system is not None:
        messages.append(pb.ChatMessage(role=common_pb2.ROLE_SYSTEM, content=system))
    messages.append(pb.ChatMessage(role=common_pb2.ROLE_USER, content=prompt))
    return messages


def sampling(
    parameters: pb.SamplingParameters | None,
    max_tokens: int,
    temperature: float | None,
    stop: Sequence[str],
    seed: int | None,
) -> pb.SamplingParameters:
    if parameters is not None:
        return parameters
    result = pb.SamplingParameters(max_tokens=max_tokens, stop=list(stop))
    if temperature is not None:
        result.temperature = temperature
    if seed is not None:
        result.seed = seed
    return result


class _Collected:
    """What a generation stream delivered so far."""

    def __init__(self) -> None:
        self.deltas: list[pb.TokenDelta] = []
        self.result: pb.GenerationResult | None = None

    @property
    def text(self) -> str:
        return "".join(delta.text for delta in self.deltas)

    def take(self, item: Item) -> None:
        if isinstance(item, pb.TokenDelta):
            self.deltas.append(item)
        else:
            self.result = item


class Generation(_Collected):
    """One `Generate` stream: iterate it for tokens, then the result."""

    def __init__(
        self,
        stub: pb_grpc.GenerationServiceAsyncStub,
        request: pb.GenerateRequest,
        metadata: Metadata | None,
        timeout: float | None,
        policy: RetryPolicy,
    ) -> None:
        super().__init__()
        self.request = request
        self._stub = stub
        self._metadata = metadata
        self._timeout = timeout
        self._policy = policy
        self._call: Any = None
        self._iterator: AsyncIterator[Item] | None = None

    async def _items(self) -> AsyncIterator[Item]:
        attempt = 0
        while True:
            attempt += 1
            self._call = self._stub.Generate(
                self.request, metadata=self._metadata, timeout=self._timeout
            )
            try:
                async for response in self._call:
                    kind = response.WhichOneof("event")
                    if kind == "error":
                        raise from_status(response.error)
                    item: Item = response.delta if kind == "delta" else response.result
                    self.take(item)
                    yield item
                return
            except grpc.RpcError as raw:
                error = from_rpc_error(raw)
                if self.deltas or not error.retryable or attempt >= self._policy.max_attempts:
                    raise error from None
                await asyncio.sleep(self._policy.delay(attempt, error))
            finally:
                self._call.cancel()

    def __aiter__(self) -> AsyncIterator[Item]:
        if self._iterator is None:
            self._iterator = self._items()
        return self._iterator

    async def __anext__(self) -> Item:
        return await self.__aiter__().__anext__()

    async def complete(self) -> pb.GenerationResult:
        """Runs the generation to its end; returns the result (`.text` has the text)."""
        async for _ in self:
            pass
        if self.result is None:
            raise CallistoError("the generation ended without a result")
        return self.result

    def cancel(self) -> None:
        """Stops the generation (cancels the call)."""
        if self._call is not None:
            self._call.cancel()


_CLOSED = object()


class ChatGeneration(_Collected):
    """One generation started on a chat session."""

    def __init__(self, session: ChatSession, generation_id: str) -> None:
        super().__init__()
        self.generation_id = generation_id
        self._session = session
        self._queue: asyncio.Queue[Item | BaseException] = asyncio.Queue()

    async def __aiter__(self) -> AsyncIterator[Item]:
        while self.result is None:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            self.take(item)
            yield item

    async def complete(self) -> pb.GenerationResult:
        async for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def cancel(self) -> None:
        """Asks the service to stop this generation; its stream then ends with a result."""
        await self._session.cancel(self.generation_id)


class ChatSession:
    """One bidirectional `Chat` stream; use it as `async with client.generation.chat() as chat`."""

    def __init__(self, stub: pb_grpc.GenerationServiceAsyncStub, metadata: Metadata | None):
        self._stub = stub
        self._metadata = metadata
        self._requests: asyncio.Queue[pb.ChatRequest | object] = asyncio.Queue()
        self._generations: dict[str, ChatGeneration] = {}
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._failure: CallistoError | None = None

    async def _request_stream(self) -> AsyncIterator[pb.ChatRequest]:
        while True:
            request = await self._requests.get()
            if request is _CLOSED:
                return
            assert isinstance(request, pb.ChatRequest)
            yield request

    async def open(self) -> ChatSession:
        self._call = self._stub.Chat(self._request_stream(), metadata=self._metadata)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for response in self._call:
                generation = self._generations.get(response.generation_id)
                if generation is None:
                    continue
                kind = response.WhichOneof("event")
                if kind == "delta":
                    generation._queue.put_nowait(response.delta)
                elif kind == "result":
                    generation._queue.put_nowait(response.result)
                    self._generations.pop(response.generation_id, None)
                elif kind == "error":
                    generation._queue.put_nowait(from_status(response.error))
                    self._generations.pop(response.generation_id, None)
            self._fail(CallistoError("the chat stream ended", code=grpc.StatusCode.CANCELLED))
        except grpc.RpcError as raw:
            self._fail(from_rpc_error(raw))
        except asyncio.CancelledError:
            self._fail(CallistoError("the chat session was closed", code=grpc.StatusCode.CANCELLED))

    def _fail(self, error: CallistoError) -> None:
        self._failure = error
        for generation in self._generations.values():
            generation._queue.put_nowait(error)
        self._generations.clear()

    async def start(
        self,
        prompt: Prompt,
        *,
        model: str = "",
        system: str | None = None,
        generation_id: str | None = None,
        max_tokens: int = 0,
        temperature: float | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
        parameters: pb.SamplingParameters | None = None,
    ) -> ChatGeneration:
        """Starts a generation on this session; iterate the returned object for its tokens."""
        if self._failure is not None:
            raise self._failure
        generation = ChatGeneration(self, generation_id or uuid.uuid4().hex)
        self._generations[generation.generation_id] = generation
        self._requests.put_nowait(
            pb.ChatRequest(
                start=pb.StartGeneration(
                    generation_id=generation.generation_id,
                    model=model_name(model),
                    messages=chat_messages(prompt, system),
                    parameters=sampling(parameters, max_tokens, temperature, stop, seed),
                )
            )
        )
        return generation

    async def cancel(self, generation_id: str) -> None:
        self._requests.put_nowait(
            pb.ChatRequest(cancel=pb.CancelGeneration(generation_id=generation_id))
        )

    async def close(self) -> None:
        """Half-closes the stream and waits for the service to finish what is running."""
        self._requests.put_nowait(_CLOSED)
        if self._reader is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), 10)
            except TimeoutError:
                self._call.cancel()
                self._reader.cancel()

    async def __aenter__(self) -> ChatSession:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None and self._call is not None:
            self._call.cancel()
        await self.close()


class GenerationClient(Facade):
    """The generation service (`callisto.generation.v1.GenerationService`)."""

    @property
    def stub(self) -> pb_grpc.GenerationServiceAsyncStub:
        return pb_grpc.GenerationServiceStub(self._client.channel)

    def generate(
        self,
        prompt: Prompt,
        *,
        model: str = "",
        system: str | None = None,
        max_tokens: int = 0,
        temperature: float | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
        parameters: pb.SamplingParameters | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Generation:
        """A generation for `prompt`; nothing is sent until it is iterated."""
        request = pb.GenerateRequest(
            model=model_name(model),
            messages=chat_messages(prompt, system),
            parameters=sampling(parameters, max_tokens, temperature, stop, seed),
        )
        return Generation(self.stub, request, metadata, timeout, self._client.retry_policy)

    def chat(self, *, metadata: Metadata | None = None) -> ChatSession:
        """A chat session (open it with `async with`, or `await session.open()`)."""
        return ChatSession(self.stub, metadata)

    async def list_models(
        self, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> list[pb.Model]:
        response = await self._unary(
            self.stub.ListModels,
            pb.ListModelsRequest(),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.ListModelsResponse,
        )
        return list(response.models)

    async def analyze_sentiment(
        self,
        texts: Sequence[str],
        *,
        model: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> list[common_pb2.Sentiment]:
        """The sentiment of each text, in order (the `sentiment` model unless `model` names
        another)."""
        response = await self._unary(
            self.stub.AnalyzeSentiment,
            pb.AnalyzeSentimentRequest(texts=list(texts), model=model_name(model)),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.AnalyzeSentimentResponse,
        )
        return list(response.sentiments)
