"""Relays one model stream to a caller, merging tokens that arrive close together.

The first token goes out at once (time to first token is what users feel). After a delta is sent,
the next one waits until `interval` has passed since it, and carries every token that arrived
meanwhile: a slow model (a token every 10 ms and more) still gets one delta per token, while a fast
model under load costs one Python hop per interval per stream instead of one per token.

A reader task drains the model stream into a buffer so Triton's responses are consumed as fast as
they arrive, whatever the caller's pace; the relay keeps the timings the final result reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from callisto.services.generation.triton import ModelEvent, ModelStream


@dataclass(frozen=True)
class Delta:
    """Text of one or more tokens."""

    text: str
    token_count: int


@dataclass(frozen=True)
class Outcome:
    """How a generation ended, with its usage and timings."""

    finish_reason: str  # stop | length | cancelled
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float
    tokens_per_second: float
    duration_ms: float


class Relay:
    """Iterate `deltas()`; afterwards `outcome` holds the result, or iteration raised the error.

    `cancel()` (the caller asked) stops the model and ends the relay with finish reason
    `cancelled`; `abort(error)` (shutdown) stops it and makes the iteration raise `error`.
    """

    def __init__(self, stream: ModelStream, *, interval: float, started: float) -> None:
        self._stream = stream
        self._interval = interval
        self._started = started
        self._texts: list[str] = []
        self._pending_to = 0  # completion_tokens at the newest buffered text
        self._sent_to = 0  # completion_tokens covered by the deltas sent so far
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._first_token: float | None = None
        self._tokens_at_first = 0
        self._last_token: float | None = None
        self._finish = ""
        self._error: BaseException | None = None
        self._done = False
        self._wakeup = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.outcome: Outcome | None = None

    async def _read(self) -> None:
        try:
            async for event in self._stream:
                self._take(event)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if not self._done:
                self._error = error
        finally:
            self._done = True
            self._wakeup.set()

    def _take(self, event: ModelEvent) -> None:
        if self._done:
            return
        now = time.perf_counter()
        self._prompt_tokens = event.prompt_tokens
        if event.completion_tokens > self._completion_tokens:
            self._completion_tokens = event.completion_tokens
            self._last_token = now
        if event.text:
            if self._first_token is None:
                # What the caller feels: the first text, not a token held back for a stop check.
                self._first_token, self._tokens_at_first = now, event.completion_tokens
            self._texts.append(event.text)
            self._pending_to = event.completion_tokens
            self._wakeup.set()
        if event.finish_reason:
            self._finish = event.finish_reason
            self._done = True
            self._wakeup.set()

    def cancel(self) -> None:
        """The caller cancelled: stop the model; the relay ends with finish reason `cancelled`."""
        if not self._done:
            self._finish = "cancelled"
            self._done = True
            self._stream.cancel()
            self._wakeup.set()

    def abort(self, error: BaseException) -> None:
        """Stop the model and end the relay with `error` (e.g. the service is shutting down)."""
        if not self._done:
            self._error = error
            self._done = True
            self._stream.cancel()
            self._wakeup.set()

    def _flush(self) -> Delta | None:
        if not self._texts:
            return None
        text = "".join(self._texts)
        self._texts.clear()
        count = max(self._pending_to - self._sent_to, 1)
        self._sent_to = self._pending_to
        return Delta(text, count)

    async def deltas(self) -> AsyncGenerator[Delta, None]:
        """The deltas, in order; raises the generation's error after the last one."""
        self._reader = asyncio.create_task(self._read(), name="generation-relay")
        last_sent: float | None = None
        try:
            while True:
                if not self._texts and not self._done:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                if self._texts and not self._done and last_sent is not None:
                    # Within the interval after the previous delta: let more tokens join it.
                    wait = last_sent + self._interval - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                delta = self._flush()
                if delta is not None:
                    last_sent = time.perf_counter()
                    yield delta
                if self._done and not self._texts:
                    break
        finally:
            if not self._done:
                # The consumer went away (client cancel, deadline): the model must stop too.
                self._done = True
                self._stream.cancel()
            reader = self._reader
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if self._error is not None:
            raise self._error
        self.outcome = self._outcome()

    def _outcome(self) -> Outcome:
        end = self._last_token or time.perf_counter()
        first = self._first_token
        after_first = self._completion_tokens - self._tokens_at_first
        span = (end - first) if first is not None else 0.0
        return Outcome(
            finish_reason=self._finish or "stop",
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
            ttft_ms=((first - self._started) * 1000.0) if first is not None else 0.0,
            tokens_per_second=(after_first / span) if span > 0 and after_first > 0 else 0.0,
            duration_ms=(end - self._started) * 1000.0,
        )
