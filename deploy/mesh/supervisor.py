"""The launcher's restart policy, the one compose and Kubernetes give: a child that exits is
started again after a backoff that doubles on every quick exit and starts over once the child
stayed up for a while; a child that keeps failing (a crash loop) stops the mesh with its log.

`RestartHistory` is the policy's arithmetic for one child (no processes, no clock of its own);
`Supervisor` polls the children, restarts them and says so. A restart may block (Envoy, Redis
and Triton wait for their own readiness when started); the others are started, then polled
for readiness, so one slow child does not hold up the rest.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that exited is started again, and when the mesh gives up on it."""

    # Wait before the first restart; each further quick exit doubles it, up to `max_delay_s`.
    delay_s: float = 0.5
    max_delay_s: float = 30.0
    # A child up this long since its last start has recovered: its next exit waits `delay_s`
    # again and is not counted as a failed restart.
    stable_after_s: float = 10.0
    # This many failed restarts within `window_s` is a crash loop.
    max_attempts: int = 5
    window_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.delay_s <= self.max_delay_s:
            raise ValueError("the restart delay must be positive and at most the maximum")
        if self.max_attempts < 1 or self.window_s <= 0 or self.stable_after_s <= 0:
            raise ValueError("max attempts, window and stable time must be positive")


class RestartHistory:
    """One child's exits under a policy, on the caller's clock (seconds)."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.restarts = 0
        self._quick_exits = 0
        self._failures: deque[float] = deque()

    def exited(self, now: float, uptime: float) -> float | None:
        """Seconds to wait before starting the child again, or None for a crash loop.

        `uptime` is how long it ran since its last start (0 when it never became ready);
        `restarts` counts the starts after the first (the caller adds one per restart)."""
        policy = self.policy
        if uptime >= policy.stable_after_s:
            self._quick_exits = 0
        elif self.restarts:  # the launcher waited for the first start: only restarts fail
            self._failures.append(now)
        while self._failures and now - self._failures[0] > policy.window_s:
            self._failures.popleft()
        if len(self._failures) >= policy.max_attempts:
            return None
        self._quick_exits += 1
        return min(policy.delay_s * 2.0 ** (self._quick_exits - 1), policy.max_delay_s)

    @property
    def failures(self) -> int:
        """Failed restarts (quick exits after one) within the window, as of the last exit."""
        return len(self._failures)


@dataclass
class Child:
    """How the supervisor watches and restarts one child (callables over the real object)."""

    name: str
    running: Callable[[], bool]
    # Starts it again; may block until it is ready.
    start: Callable[[], None]
    # Polled after `start` until True (health SERVING, answering, ...).
    ready: Callable[[], bool]
    # Kills what is left of it (a restart that never became ready).
    kill: Callable[[], None]
    log_tail: Callable[[], str]
    # Where it listens, for the "back" line.
    where: Callable[[], str]
    exit_code: Callable[[], int | None] = lambda: None
    ready_timeout_s: float = 60.0


class CrashLoop(RuntimeError):
    """A child kept failing; the message names it and holds its log's tail."""


class _State(Enum):
    UP = "up"
    WAITING = "waiting"
    STARTING = "starting"


@dataclass
class _Watch:
    child: Child
    history: RestartHistory
    state: _State
    # When it last started (UP/STARTING), when its restart is due (WAITING), when it exited.
    started_at: float
    due: float = 0.0
    exited_at: float = 0.0


class Supervisor:
    """Polls the children; restarts those that exited as the policy says.

    `on_restart` runs after a child is back (the launcher rewrites its state file: new PIDs).
    """

    def __init__(
        self,
        children: list[Child],
        policy: RestartPolicy,
        *,
        say: Callable[[str], None],
        on_restart: Callable[[Child], None] = lambda child: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.say = say
        self.on_restart = on_restart
        self.clock = clock
        now = clock()
        self._watches = [_Watch(c, RestartHistory(policy), _State.UP, now) for c in children]

    def restarts(self) -> dict[str, int]:
        """Restarts so far, per child name."""
        return {w.child.name: w.history.restarts for w in self._watches}

    @property
    def all_up(self) -> bool:
        return all(w.state is _State.UP for w in self._watches)

    def poll(self) -> None:
        """One look at every child; raises `CrashLoop` when one keeps failing."""
        for watch in self._watches:
            child = watch.child
            if watch.state is _State.UP:
                if not child.running():
                    self._exited(watch, f"exited{_code(child)}")
            elif watch.state is _State.WAITING:
                if self.clock() >= watch.due:
                    self._start(watch)
            elif not child.running():
                self._exited(watch, f"exited again while starting{_code(child)}")
            elif self._ready(child):
                watch.state = _State.UP
                self.say(
                    f"  ✓ {child.name} back on {child.where()}"
                    f"  ({self.clock() - watch.exited_at:.1f} s after it exited)"
                )
                self.on_restart(child)
            elif self.clock() - watch.started_at > child.ready_timeout_s:
                child.kill()
                self._exited(watch, f"not ready within {child.ready_timeout_s:g} s")

    def _start(self, watch: _Watch) -> None:
        watch.history.restarts += 1
        watch.state = _State.STARTING
        watch.started_at = self.clock()
        try:
            watch.child.start()
        except Exception as error:  # a restart that failed is one more exit, not the end
            watch.child.kill()
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            self._exited(watch, f"failed to start ({first_line})")

    def _ready(self, child: Child) -> bool:
        try:
            return child.ready()
        except Exception:  # not answering yet
            return False

    def _exited(self, watch: _Watch, how: str) -> None:
        now = self.clock()
        uptime = now - watch.started_at if watch.state is _State.UP else 0.0
        delay = watch.history.exited(now, uptime)
        watch.exited_at = now
        child = watch.child
        if delay is None:
            raise CrashLoop(
                f"{child.name} {how}: {watch.history.failures} failed restarts within "
                f"{self.policy.window_s:g} s, a crash loop; its log ends:\n{child.log_tail()}"
            )
        watch.state = _State.WAITING
        watch.due = now + delay
        self.say(
            f"  ↻ {child.name} {how}, restarting in {delay:g} s"
            f" (restart {watch.history.restarts + 1})"
        )


def _code(child: Child) -> str:
    """` (code -9)`, or nothing for children that do not tell (Envoy, Triton)."""
    code = child.exit_code()
    return "" if code is None else f" (code {code})"
