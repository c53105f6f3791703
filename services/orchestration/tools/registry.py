"""The tool registry: named, JSON-Schema'd tools with timeouts, retries, a circuit breaker per
tool and an optional per-tenant result cache. A call never raises for a tool's failure: it
returns a `ToolOutcome` that says what went wrong, so the turn can answer without it."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import duration_pb2, struct_pb2
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.services.common.errors import FieldViolation
from callisto.services.common.grammar import grammar_schema
from callisto.services.common.tenancy import bind_tenant, reset_tenant
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.tools.breaker import BreakerState, CircuitBreaker
from callisto.services.orchestration.tools.cache import ResultCache
from callisto.services.orchestration.tools.errors import ToolInputError, TransientToolError
from callisto.services.orchestration.tools.retries import describe, is_transient, retrying
from callisto.services.orchestration.tools.validation import (
    bounds_violations,
    normalise,
    schema_violations,
)

__all__ = [
    "BreakerState",
    "ToolContext",
    "ToolHandler",
    "ToolInputError",
    "ToolOutcome",
    "ToolPolicy",
    "ToolRegistry",
    "ToolResult",
    "ToolSpec",
    "TransientToolError",
]

_log = logging.getLogger(__name__)

TOOL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
CIRCUIT_OPEN = "circuit open"


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
        return pb.ToolCall(
            id=self.call_id,
            tool=self.tool,
            arguments=_struct(self.arguments),
            result=self.result.summary if self.result is not None else "",
            duration_ms=self.duration_ms,
            error=self.error,
            attempts=self.attempts,
            cached=self.cached,
        )


# A tool's implementation: validated arguments in, result out; raise `TransientToolError` for
# a failure worth retrying, `ToolInputError` for arguments it cannot serve, anything else fails
# the call at once.
ToolHandler = Callable[[dict[str, Any], ToolContext], Awaitable[ToolResult]]


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
    # What else of the context the result depends on (the agent's retrieval scope), so one
    # agent's cached result never answers another's call; part of the cache key.
    cache_scope: Callable[[ToolContext], str] | None = None

    def model_parameters(self) -> dict[str, Any]:
        """The schema to give the model (a generation request's tools or plan schema): only
        what the model server's grammar enforces; calls are still validated against
        `parameters`."""
        result: dict[str, Any] = grammar_schema(self.parameters)
        return result

    def proto(self) -> pb.Tool:
        tool = pb.Tool(
            name=self.name,
            description=self.description,
            parameters=_struct(self.parameters),
            timeout=_duration(self.timeout_s),
            side_effects=self.side_effects,
        )
        if self.cache_ttl_s is not None:
            tool.cache_ttl.CopyFrom(_duration(self.cache_ttl_s))
        return tool


@dataclass(frozen=True)
class ToolPolicy:
    """How every tool of a registry is called (`OrchestrationSettings`' tools section)."""

    # Attempts of a call that fails transiently, the first included.
    attempts: int = 3
    # First wait between attempts; doubles per attempt, plus up to half of it as jitter.
    retry_base_s: float = 1.0
    # Consecutive failed calls that open a tool's breaker, and how long it then stays open.
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0
    # Most results kept per cacheable tool.
    cache_entries: int = 1024
    # Bounds on the arguments object, checked before the schema.
    max_argument_bytes: int = 16384
    max_argument_depth: int = 8


@dataclass
class _Registered:
    spec: ToolSpec
    validator: Draft202012Validator
    breaker: CircuitBreaker
    cache: ResultCache[ToolResult] | None


class ToolRegistry:
    """Every tool by name."""

    def __init__(
        self, policy: ToolPolicy | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or ToolPolicy()
        self._clock = clock
        self._tools: dict[str, _Registered] = {}

    def register(self, spec: ToolSpec, *, breaker: CircuitBreaker | None = None) -> None:
        """Adds a tool; ValueError for a bad name, a taken name, an invalid schema, or a cache
        on a side-effecting tool. `breaker` is the tool's own (a fresh one when None), for a
        caller that keeps a tool's breaker across registries (tenant HTTP tools)."""
        self._tools[spec.name] = self._entry(spec, breaker)

    def extended(
        self,
        specs: Iterable[ToolSpec],
        breaker_for: Callable[[str], CircuitBreaker] | None = None,
    ) -> ToolRegistry:
        """A new registry with this one's tools (the same breakers and caches) plus `specs`,
        each with `breaker_for(name)` as its breaker (fresh ones when None); this registry is
        unchanged. ValueError as `register` says."""
        view = ToolRegistry(self.policy, clock=self._clock)
        view._tools = dict(self._tools)
        for spec in specs:
            view.register(spec, breaker=breaker_for(spec.name) if breaker_for else None)
        return view

    def new_breaker(self) -> CircuitBreaker:
        """A breaker as this registry's policy makes them."""
        return CircuitBreaker(
            self.policy.breaker_failures, self.policy.breaker_cooldown_s, self._clock
        )

    def _entry(self, spec: ToolSpec, breaker: CircuitBreaker | None) -> _Registered:
        if not TOOL_NAME.match(spec.name):
            raise ValueError(f"tool name {spec.name!r} must match {TOOL_NAME.pattern}")
        if spec.name in self._tools:
            raise ValueError(f"tool {spec.name!r} is already registered")
        if spec.parameters.get("type") != "object":
            raise ValueError(f"tool {spec.name!r}: parameters must be an object schema")
        # SchemaError (a ValueError-like jsonschema error) when the schema itself is wrong.
        Draft202012Validator.check_schema(spec.parameters)
        if spec.timeout_s <= 0:
            raise ValueError(f"tool {spec.name!r}: timeout_s must be positive")
        if spec.cache_ttl_s is not None and (spec.side_effects or spec.cache_ttl_s <= 0):
            raise ValueError(
                f"tool {spec.name!r}: only read-only tools may cache, with a positive TTL"
            )
        cache = (
            ResultCache[ToolResult](spec.cache_ttl_s, self.policy.cache_entries, self._clock)
            if spec.cache_ttl_s is not None
            else None
        )
        return _Registered(
            spec=spec,
            validator=Draft202012Validator(spec.parameters),
            breaker=breaker or self.new_breaker(),
            cache=cache,
        )

    def get(self, name: str) -> ToolSpec:
        """The tool; KeyError when there is none of that name."""
        return self._tools[name].spec

    def names(self) -> list[str]:
        return sorted(self._tools)

    def specs(self, names: Iterable[str] | None = None) -> list[ToolSpec]:
        """The named tools (unknown names skipped), or all of them, in name order."""
        chosen = self._tools.keys() if names is None else set(names) & self._tools.keys()
        return [self._tools[name].spec for name in sorted(chosen)]

    def breaker_state(self, name: str) -> BreakerState:
        """Where the tool's circuit breaker stands; KeyError for an unknown tool."""
        return self._tools[name].breaker.state

    def validate(self, name: str, arguments: Any) -> list[FieldViolation]:
        """What is wrong with a call (unknown tool, arguments against the schema); field paths
        are relative to the call (`arguments.query`)."""
        registered = self._tools.get(name)
        if registered is None:
            known = ", ".join(self.names()) or "none"
            return [FieldViolation("tool", f"unknown tool {name!r} (known: {known})")]
        violations = bounds_violations(
            arguments,
            max_bytes=self.policy.max_argument_bytes,
            max_depth=self.policy.max_argument_depth,
        )
        if violations:
            return violations
        return schema_violations(registered.validator, normalise(arguments))

    async def call(
        self, name: str, arguments: dict[str, Any], context: ToolContext, *, call_id: str
    ) -> ToolOutcome:
        """Validates, then answers from the cache or runs the handler under its timeout with
        retries and the tool's circuit breaker. Raises only CancelledError."""
        started = time.perf_counter()
        shown = arguments if isinstance(arguments, dict) else {}
        outcome = ToolOutcome(call_id=call_id, tool=name, arguments=shown, result=None)
        try:
            violations = self.validate(name, arguments)
            if violations:
                if any(v.field == "arguments" for v in violations):
                    # Too big, too deep or not an object: not worth echoing into the event log.
                    outcome.arguments = {}
                outcome.error = "invalid arguments: " + "; ".join(
                    f"{v.field} {v.description}" for v in violations
                )
                return outcome
            outcome.arguments = normalise(arguments)
            await self._run(self._tools[name], outcome, context)
            return outcome
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug in the registry itself still must not fail a turn
            _log.exception("tool %s: call failed unexpectedly", name)
            outcome.result = None
            outcome.error = describe(error)
            return outcome
        finally:
            outcome.duration_ms = (time.perf_counter() - started) * 1000

    async def _run(self, tool: _Registered, outcome: ToolOutcome, context: ToolContext) -> None:
        scope = tool.spec.cache_scope(context) if tool.spec.cache_scope is not None else ""
        key = ResultCache.key(context.tenant, scope, outcome.arguments)
        if tool.cache is not None and (hit := tool.cache.get(key)) is not None:
            outcome.result, outcome.cached = hit, True
            return
        if not tool.breaker.allow():
            outcome.error = CIRCUIT_OPEN
            return
        # Backends act for the bound tenant: bind the call's own, whoever the caller is.
        token = bind_tenant(context.tenant)
        try:
            outcome.result = await self._attempts(tool.spec, outcome, context)
        except asyncio.CancelledError:
            tool.breaker.record_abandoned()
            raise
        except ToolInputError as error:
            # The tool answered; the request was at fault.
            tool.breaker.record_success()
            outcome.error = str(error) or "the tool could not serve these arguments"
            return
        except Exception as error:
            tool.breaker.record_failure()
            outcome.error = self._failure(tool.spec, outcome.attempts, error)
            _log.warning("tool %s: %s", tool.spec.name, outcome.error)
            return
        finally:
            reset_tenant(token)
        tool.breaker.record_success()
        if tool.cache is not None:
            tool.cache.put(key, outcome.result)

    async def _attempts(
        self, spec: ToolSpec, outcome: ToolOutcome, context: ToolContext
    ) -> ToolResult:
        # A side effect is repeated only when the receiving end can drop the repeat.
        attempts = self.policy.attempts if not spec.side_effects or context.idempotency_key else 1
        async for attempt in retrying(attempts, self.policy.retry_base_s):
            with attempt:
                outcome.attempts += 1
                async with asyncio.timeout(spec.timeout_s):
                    return await spec.handler(dict(outcome.arguments), context)
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    def _failure(self, spec: ToolSpec, attempts: int, error: Exception) -> str:
        reason = describe(error)
        if isinstance(error, TimeoutError):
            reason = f"timed out after {spec.timeout_s:g} s"
        if is_transient(error):
            plural = "attempt" if attempts == 1 else "attempts"
            return f"{spec.name} unavailable after {attempts} {plural}: {reason}"
        return f"{spec.name} failed: {reason}"


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    try:
        # Through JSON so tuples, ints and nested values all land as Struct values.
        struct.update(json.loads(json.dumps(value)))
    except (TypeError, ValueError):
        struct.update({"unserialisable": repr(value)[:200]})
    return struct


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration
