"""Which tool failures are retried, and how long to wait between attempts (tenacity)."""

from __future__ import annotations

import asyncio

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from callisto.errors import CallistoError, DeadlineExceeded, ResourceExhausted, Unavailable
from callisto.services.orchestration.tools.errors import TransientToolError

# Dependency errors that may pass on their own; anything else is permanent.
_TRANSIENT_ERRORS = (
    TransientToolError,
    TimeoutError,
    Unavailable,
    DeadlineExceeded,
    ResourceExhausted,
)


def is_transient(error: BaseException) -> bool:
    return isinstance(error, _TRANSIENT_ERRORS)


def retrying(attempts: int, base_delay_s: float) -> AsyncRetrying:
    """Up to `attempts` tries of transient failures, waiting base, 2·base, 4·base, … each plus
    up to half a base of random jitter (so calls that failed together do not retry together);
    the last failure is re-raised as itself."""
    return AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential_jitter(multiplier=base_delay_s, exp_base=2, jitter=base_delay_s / 2),
        retry=retry_if_exception(is_transient),
        sleep=asyncio.sleep,
        reraise=True,
    )


def describe(error: BaseException) -> str:
    """One line for a failure, as the turn and the model are told it."""
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, CallistoError):
        return f"{error.code.name.lower()}: {error.message}"
    text = str(error) or type(error).__name__
    return text if len(text) <= 300 else text[:299] + "…"
