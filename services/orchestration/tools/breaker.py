"""A circuit breaker per tool: after `failures` consecutive failed calls it refuses calls for
`cooldown_s`, then lets one trial call through (half-open); the trial's outcome closes or
re-opens it.

Small and typed rather than a library: the registry records a call's outcome once, after its
retries (a call failing three times is one failure), refuses without raising, and needs a
single trial call at a time in half-open, which the maintained asyncio breakers do not offer
together."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._cooled_down():
            return BreakerState.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """Whether a call may run now; in half-open, True for one trial at a time."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if not self._cooled_down():
                return False
            self._state = BreakerState.HALF_OPEN
        if self._trial_running:
            return False
        self._trial_running = True
        return True

    def record_success(self) -> None:
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._trial_running = False

    def record_failure(self) -> None:
        self._trial_running = False
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()

    def record_abandoned(self) -> None:
        """An allowed call ended with no verdict (cancelled, or the caller's own bad input)."""
        self._trial_running = False

    def _cooled_down(self) -> bool:
        return self._clock() - self._opened_at >= self._cooldown_s
