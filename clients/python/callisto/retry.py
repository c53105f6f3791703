"""When and how long the SDK waits before trying a call again.

Only calls that are safe to repeat are retried: reads, upserts, and creates that carry a
`request_id` the server deduplicates (the SDK sets one per logical call and keeps it across
attempts). The wait is the server's `RetryInfo.retry_delay` when it sent one, else an
exponential backoff; both get full jitter and never run past the call's deadline.
"""

# `timeout` is a gRPC deadline sent to the server (and spent across retries), not a local
# cancel scope, so these functions take it the way grpc stubs do.
# ruff: noqa: ASYNC109
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from callisto.errors import CallistoError, from_rpc_error

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded, jittered retries of idempotent calls."""

    # Attempts in all, the first one included.
    max_attempts: int = 5
    # Backoff when the server gave no RetryInfo: initial * multiplier**n, capped at maximum.
    initial_backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 5.0
    # A RetryInfo delay is honoured but never beyond this (a server cannot park a client).
    max_retry_delay: float = 30.0

    def delay(self, attempt: int, error: CallistoError) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if error.retry_delay is not None:
            base = min(error.retry_delay, self.max_retry_delay)
            # Jitter up to +50 % so a crowd of clients told "1 s" does not return in step.
            return base * (1 + random.random() / 2)
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return random.uniform(cap / 2, cap)


NO_RETRY = RetryPolicy(max_attempts=1)


async def call_with_retry(
    attempt: Callable[[float | None], Awaitable[T]],
    *,
    policy: RetryPolicy,
    timeout: float | None,
    idempotent: bool,
) -> T:
    """Runs `attempt(remaining_timeout)` until it succeeds, a non-retryable error comes, the
    attempts run out or the next wait would pass the deadline; raises the typed error."""
    deadline = None if timeout is None else time.monotonic() + timeout
    number = 0
    while True:
        number += 1
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        try:
            return await attempt(remaining)
        except grpc.RpcError as raw:
            error = from_rpc_error(raw)
            if not (idempotent and error.retryable and number < policy.max_attempts):
                raise error from None
            wait = policy.delay(number, error)
            if deadline is not None and time.monotonic() + wait >= deadline:
                raise error from None
            await asyncio.sleep(wait)
