"""Server streams that resume themselves, and iterators over paged lists.

`resume_stream` is the one helper behind every resumable stream of the SDK
(`client.persistence.subscribe_events` today, orchestration's event streams next). A stream
qualifies when each message carries a position (a log sequence or event id) and the RPC takes
"deliver what comes after position N". Given `open_stream(after)` it:

- yields each message once, in order, and remembers the position of the last one it yielded;
- drops a message whose position is not past that (a replay after a reconnect: no duplicate);
- when the call fails retryably (UNAVAILABLE: a dropped connection, a restarting service) or a
  message carries a retryable terminal `google.rpc.Status`, waits as its `RetryPolicy` says and
  opens the stream again after the last position it yielded (no gap);
- raises the typed `callisto.errors` error for anything else, or when the policy's attempts in a
  row run out without one new message.

`paged` follows `next_page_token` until a page comes back without one.
"""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Sequence,
)
from typing import Protocol, TypeVar

import grpc
from google.rpc import status_pb2

from callisto.errors import CallistoError, from_rpc_error, from_status
from callisto.retry import RetryPolicy

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
T = TypeVar("T")
P = TypeVar("P")

# Reconnects of a long-lived stream: patient enough to ride out a service restart.
RESUME_POLICY = RetryPolicy(max_attempts=12, initial_backoff=0.1, max_backoff=2.0)


class StreamCall(Protocol[R_co]):
    """What a grpc.aio server-streaming call offers: messages, and a way to stop it."""

    def __aiter__(self) -> AsyncIterator[R_co]: ...

    def cancel(self) -> bool: ...


def _no_error(_: object) -> status_pb2.Status | None:
    return None


async def resume_stream(
    open_stream: Callable[[int], StreamCall[R]],
    *,
    position: Callable[[R], int | None],
    after: int = 0,
    terminal_error: Callable[[R], status_pb2.Status | None] = _no_error,
    policy: RetryPolicy = RESUME_POLICY,
    on_resume: Callable[[int, CallistoError], None] | None = None,
) -> AsyncGenerator[R, None]:
    """Messages of `open_stream(after)`, reopened after the last yielded position on failure.

    `position(message)` is the message's place in the log, or None for messages that hold no
    place (heartbeats), which are yielded without moving the cursor. `terminal_error(message)`
    is the `google.rpc.Status` of a message that ends the stream in error. `on_resume` hears of
    every reconnect (the position resumed from and the error that caused it).
    """
    last = after
    failures = 0
    while True:
        call = open_stream(last)
        try:
            async for message in call:
                status = terminal_error(message)
                if status is not None:
                    raise from_status(status)
                place = position(message)
                if place is not None:
                    if place <= last:
                        continue
                    last = place
                failures = 0
                yield message
            return
        except (grpc.RpcError, CallistoError) as raised:
            error = raised if isinstance(raised, CallistoError) else from_rpc_error(raised)
            failures += 1
            if not error.retryable or failures >= policy.max_attempts:
                raise error from None
            if on_resume is not None:
                on_resume(last, error)
            await asyncio.sleep(policy.delay(failures, error))
        finally:
            call.cancel()


async def paged(
    fetch: Callable[[str], Awaitable[P]],
    items: Callable[[P], Sequence[T]],
    next_token: Callable[[P], str],
) -> AsyncIterator[T]:
    """Every item of every page: `fetch(page_token)` from "" until `next_token` is empty."""
    token = ""
    while True:
        page = await fetch(token)
        for item in items(page):
            yield item
        token = next_token(page)
        if not token:
            return


async def collect(items: AsyncIterable[T]) -> list[T]:
    """All items of an async iterable, in a list."""
    return [item async for item in items]
