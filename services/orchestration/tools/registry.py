"""The tool registry: named, JSON-Schema'd tools with timeouts, retries, a circuit breaker per
tool and an optional per-tenant result cache. A call never raises for a tool's failure: it
returns a `ToolOutcome` that says what went wrong, so the turn can answer without it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.services.common.errors import FieldViolation
from callisto.services.orchestration.backends import Backends


@dataclass(frozen=True)
class ToolContext:
    """Who a call is made for; handlers read the tenant's data only through `backends`, which
    act for `tenant`."""

    tenant: str
    # `conversations/{conversation}`.
    conversation: str
    # The calling agent (company and knowledge tags limit retrieval).
    agent: pb.Agent
    backends: Backends
    # Stable across retries and restarts of the same call (run, turn/step, call): a
    # side-effecting tool passes it on so the receiving end can drop repeats.
    idempotency_key: str = ""


@dataclass
class ToolResult:
    """What a handler returns."""

    # JSON-serialisable result the model is shown.
    data: Any
    # One line for the `tool_call` event.
    summary: str
    # Passages the result relies on (retrieval tools), to number as sources.
    citations: list[common_pb2.Citation] = field(default_factory=list)


@dataclass
class ToolOutcome:
    """How one call went."""

    call_id: str
    tool: str
    arguments: dict[str, Any]
    result: ToolResult | None
    # Why it failed (after retries, on timeout, breaker open, invalid arguments); "" when ok.
    error: str = ""
    attempts: int = 0
    cached: bool = False
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result is not None and not self.error

    def event(self) -> pb.ToolCall:
        """The `tool_call` event of this call."""
        raise NotImplementedError


# A tool's implementation: validated arguments in, result out; raise `TransientToolError` for
# a failure worth retrying, anything else fails the call at once.
ToolHandler = Callable[[dict[str, Any], ToolContext], Awaitable[ToolResult]]


class TransientToolError(Exception):
    """A failure that may pass on retry (a dependency UNAVAILABLE, a timeout)."""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    # JSON Schema (draft 2020-12) of the arguments object.
    parameters: dict[str, Any]
    handler: ToolHandler
    timeout_s: float = 10.0
    side_effects: bool = False
    # Read-only tools only: results reused per (tenant, arguments) for this long.
    cache_ttl_s: float | None = None

    def proto(self) -> pb.Tool:
        raise NotImplementedError


class ToolRegistry:
    """Every tool by name."""

    def register(self, spec: ToolSpec) -> None:
        raise NotImplementedError

    def get(self, name: str) -> ToolSpec:
        """The tool; KeyError when there is none of that name."""
        raise NotImplementedError

    def names(self) -> list[str]:
        raise NotImplementedError

    def specs(self, names: Iterable[str] | None = None) -> list[ToolSpec]:
        """The named tools (unknown names skipped), or all of them, in name order."""
        raise NotImplementedError

    def validate(self, name: str, arguments: Any) -> list[FieldViolation]:
        """What is wrong with a call (unknown tool, arguments against the schema); field paths
        are relative to the call (`arguments.query`)."""
        raise NotImplementedError

    async def call(
        self, name: str, arguments: dict[str, Any], context: ToolContext, *, call_id: str
    ) -> ToolOutcome:
        """Validates, then answers from the cache or runs the handler under its timeout with
        retries and the tool's circuit breaker. Raises only CancelledError."""
        raise NotImplementedError
