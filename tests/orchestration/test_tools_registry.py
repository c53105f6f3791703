"""The tool registry's call path with tools registered by the test: argument validation and
bounds, retries of transient failures with growing waits, per-attempt timeouts, the circuit
breaker (open, refuse, half-open trial), the per-tenant TTL cache, side-effecting tools never
cached, cancellation, and the `tool_call` event and `Tool` proto of a call and a spec."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf import json_format
from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]
from orchestration_test_support import connect_backends
from tenacity import RetryCallState
from tools_test_support import (
    TEXT_PARAMETERS,
    ScriptedHandler,
    always_failing,
    context,
)

from callisto.api.common.v1 import common_pb2
from callisto.errors import InvalidArgument, Unavailable
from callisto.mesh.processes import free_port
from callisto.services.common.tenancy import bind_tenant, reset_tenant
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.tools.registry import (
    BreakerState,
    ToolContext,
    ToolHandler,
    ToolInputError,
    ToolPolicy,
    ToolRegistry,
    ToolResult,
    ToolSpec,
    TransientToolError,
)
from callisto.services.orchestration.tools.retries import retrying

# Async tests run on the session loop (asyncio_default_test_loop_scope in pyproject.toml).

# Short waits so retries take milliseconds; the shape (1x, 2x, 4x) is the same as in production.
FAST = ToolPolicy(retry_base_s=0.01, breaker_failures=3, breaker_cooldown_s=0.3)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def idle_backends() -> AsyncIterator[Backends]:
    """Real SDK channels the test handlers never use (channels connect lazily; nothing
    listens there), so these tests need no mesh."""
    backends = await connect_backends(
        "unused-key",
        persistence=f"127.0.0.1:{free_port()}",
        generation=f"127.0.0.1:{free_port()}",
        retrieval=f"127.0.0.1:{free_port()}",
    )
    yield backends
    await backends.close()


def registry_with(
    handler: ToolHandler,
    *,
    policy: ToolPolicy = FAST,
    timeout_s: float = 5.0,
    cache_ttl_s: float | None = None,
    side_effects: bool = False,
) -> ToolRegistry:
    registry = ToolRegistry(policy)
    registry.register(
        ToolSpec(
            name="echo",
            description="Echoes its text.",
            parameters=TEXT_PARAMETERS,
            handler=handler,
            timeout_s=timeout_s,
            cache_ttl_s=cache_ttl_s,
            side_effects=side_effects,
        )
    )
    return registry


@pytest.fixture
def ctx(idle_backends: Backends) -> ToolContext:
    return context(idle_backends, "tools-registry")


async def test_transient_failures_are_retried_until_the_third_attempt_succeeds(
    ctx: ToolContext,
) -> None:
    handler = ScriptedHandler(TransientToolError("flaky"), TransientToolError("flaky"))
    outcome = await registry_with(handler).call("echo", {"text": "hi"}, ctx, call_id="c1")
    assert outcome.ok, outcome.error
    assert outcome.attempts == 3
    assert handler.runs == 3
    assert outcome.result is not None and outcome.result.data == {"echo": "hi"}


async def test_a_tool_that_always_fails_transiently_reports_why_after_three_attempts(
    ctx: ToolContext,
) -> None:
    handler = ScriptedHandler(*[TransientToolError("index offline") for _ in range(5)])
    outcome = await registry_with(handler).call("echo", {"text": "hi"}, ctx, call_id="c1")
    assert not outcome.ok
    assert outcome.result is None
    assert outcome.attempts == 3 and handler.runs == 3
    assert outcome.error == "echo unavailable after 3 attempts: index offline"


async def test_a_dependency_unavailable_is_retried_like_a_transient_error(
    ctx: ToolContext,
) -> None:
    handler = ScriptedHandler(Unavailable("retrieval restarting"))
    outcome = await registry_with(handler).call("echo", {"text": "hi"}, ctx, call_id="c1")
    assert outcome.ok and outcome.attempts == 2


async def test_a_permanent_failure_is_not_retried(ctx: ToolContext) -> None:
    handler = ScriptedHandler(InvalidArgument("bad filter"))
    outcome = await registry_with(handler).call("echo", {"text": "hi"}, ctx, call_id="c1")
    assert outcome.attempts == 1 and handler.runs == 1
    assert outcome.error == "echo failed: invalid_argument: bad filter"


async def test_input_the_tool_cannot_serve_fails_at_once_without_tripping_the_breaker(
    ctx: ToolContext,
) -> None:
    policy = ToolPolicy(retry_base_s=0.01, breaker_failures=1)
    handler = ScriptedHandler(ToolInputError("no such thing"), ToolInputError("no such thing"))
    registry = registry_with(handler, policy=policy)
    first = await registry.call("echo", {"text": "hi"}, ctx, call_id="c1")
    second = await registry.call("echo", {"text": "hi"}, ctx, call_id="c2")
    assert first.error == second.error == "no such thing"
    assert first.attempts == second.attempts == 1
    assert registry.breaker_state("echo") is BreakerState.CLOSED


async def test_waits_between_attempts_double_from_the_base_delay(ctx: ToolContext) -> None:
    starts: list[float] = []

    async def handler(arguments: dict[str, Any], _ctx: ToolContext) -> ToolResult:
        starts.append(time.monotonic())
        raise TransientToolError("down")

    policy = ToolPolicy(retry_base_s=0.2)
    outcome = await registry_with(handler, policy=policy).call(
        "echo", {"text": "hi"}, ctx, call_id="c1"
    )
    assert outcome.attempts == 3
    first_wait, second_wait = starts[1] - starts[0], starts[2] - starts[1]
    # base + up to base/2 of jitter, then 2·base + jitter (upper bounds leave room for a busy CPU).
    assert 0.2 <= first_wait < 0.2 + 0.1 + 0.3
    assert 0.4 <= second_wait < 0.4 + 0.1 + 0.3


def test_production_waits_are_one_two_then_four_seconds_each_with_jitter() -> None:
    policy = retrying(attempts=4, base_delay_s=ToolPolicy().retry_base_s)
    state = RetryCallState(policy, fn=None, args=(), kwargs={})
    for attempt, base in ((1, 1.0), (2, 2.0), (3, 4.0)):
        state.attempt_number = attempt
        waits = [policy.wait(state) for _ in range(50)]
        assert all(base <= wait <= base + 0.5 for wait in waits), (attempt, waits)
        assert len(set(waits)) > 1, "no jitter"


async def test_each_attempt_is_bounded_by_the_tool_timeout(ctx: ToolContext) -> None:
    handler = ScriptedHandler(delay_s=30)
    registry = registry_with(handler, timeout_s=0.2)
    started = time.monotonic()
    outcome = await registry.call("echo", {"text": "hi"}, ctx, call_id="c1")
    assert time.monotonic() - started < 3
    assert outcome.attempts == 3 and handler.runs == 3
    assert outcome.error == "echo unavailable after 3 attempts: timed out after 0.2 s"
    assert outcome.duration_ms >= 600


async def test_the_breaker_opens_after_consecutive_failures_and_refuses_at_once(
    ctx: ToolContext,
) -> None:
    handler = ScriptedHandler(*[RuntimeError("broken") for _ in range(3)])
    registry = registry_with(handler)
    for n in range(3):
        failed = await registry.call("echo", {"text": "hi"}, ctx, call_id=f"c{n}")
        assert failed.error == "echo failed: broken"
    assert registry.breaker_state("echo") is BreakerState.OPEN

    refused = await registry.call("echo", {"text": "hi"}, ctx, call_id="c4")
    assert refused.error == "circuit open"
    assert refused.attempts == 0 and handler.runs == 3
    assert refused.duration_ms < 50


async def test_after_the_cooldown_one_trial_call_closes_the_breaker(ctx: ToolContext) -> None:
    handler = ScriptedHandler(*[RuntimeError("broken") for _ in range(3)])
    registry = registry_with(handler)
    for n in range(3):
        await registry.call("echo", {"text": "hi"}, ctx, call_id=f"c{n}")
    await asyncio.sleep(FAST.breaker_cooldown_s + 0.1)
    assert registry.breaker_state("echo") is BreakerState.HALF_OPEN

    trial = await registry.call("echo", {"text": "back"}, ctx, call_id="trial")
    assert trial.ok and trial.attempts == 1
    assert registry.breaker_state("echo") is BreakerState.CLOSED


async def test_a_failed_trial_call_reopens_the_breaker(ctx: ToolContext) -> None:
    registry = registry_with(always_failing(lambda: RuntimeError("still broken")))
    for n in range(3):
        await registry.call("echo", {"text": "hi"}, ctx, call_id=f"c{n}")
    await asyncio.sleep(FAST.breaker_cooldown_s + 0.1)
    trial = await registry.call("echo", {"text": "hi"}, ctx, call_id="trial")
    assert trial.error == "echo failed: still broken" and trial.attempts == 1
    assert registry.breaker_state("echo") is BreakerState.OPEN
    assert (await registry.call("echo", {"text": "hi"}, ctx, call_id="next")).error == (
        "circuit open"
    )


async def test_half_open_lets_one_trial_through_at_a_time(ctx: ToolContext) -> None:
    handler = ScriptedHandler(*[RuntimeError("broken") for _ in range(3)], delay_s=0.3)
    registry = registry_with(handler)
    for n in range(3):
        await registry.call("echo", {"text": "hi"}, ctx, call_id=f"c{n}")
    await asyncio.sleep(FAST.breaker_cooldown_s + 0.1)

    trial = asyncio.create_task(registry.call("echo", {"text": "a"}, ctx, call_id="trial"))
    await asyncio.sleep(0.05)
    second = await registry.call("echo", {"text": "b"}, ctx, call_id="second")
    assert second.error == "circuit open"
    assert (await trial).ok
    assert (await registry.call("echo", {"text": "c"}, ctx, call_id="third")).ok


async def test_a_success_resets_the_consecutive_failure_count(ctx: ToolContext) -> None:
    # FAST opens after three consecutive failures: fail, fail, succeed, fail, fail does not.
    script = [True, True, False, True, True]

    async def handler(arguments: dict[str, Any], _ctx: ToolContext) -> ToolResult:
        if script.pop(0):
            raise RuntimeError("x")
        return ToolResult(data={}, summary="ok")

    registry = registry_with(handler)
    oks = [(await registry.call("echo", {"text": "hi"}, ctx, call_id=f"c{n}")).ok for n in range(5)]
    assert oks == [False, False, True, False, False]
    assert registry.breaker_state("echo") is BreakerState.CLOSED


async def test_a_cached_result_is_reused_without_running_the_handler(ctx: ToolContext) -> None:
    handler = ScriptedHandler()
    registry = registry_with(handler, cache_ttl_s=30)
    first = await registry.call("echo", {"text": "hi"}, ctx, call_id="c1")
    # The same arguments as a Struct carries them (numbers as doubles) hit the same entry.
    second = await registry.call("echo", {"text": "hi"}, ctx, call_id="c2")
    assert not first.cached and first.attempts == 1
    assert second.cached and second.attempts == 0 and second.ok
    assert second.result is not None and second.result.data == {"echo": "hi"}
    assert handler.runs == 1
    assert second.event().cached


async def test_the_cache_is_per_tenant(ctx: ToolContext, idle_backends: Backends) -> None:
    handler = ScriptedHandler()
    registry = registry_with(handler, cache_ttl_s=30)
    await registry.call("echo", {"text": "hi"}, ctx, call_id="c1")
    other = await registry.call(
        "echo", {"text": "hi"}, context(idle_backends, "tools-other"), call_id="c2"
    )
    assert not other.cached
    assert handler.runs == 2
    assert handler.tenants == ["tools-registry", "tools-other"]


async def test_the_cache_keeps_apart_calls_of_different_scopes(
    ctx: ToolContext, idle_backends: Backends
) -> None:
    handler = ScriptedHandler()
    registry = ToolRegistry(FAST)
    registry.register(
        ToolSpec(
            "scoped",
            "Echoes, per company.",
            TEXT_PARAMETERS,
            handler,
            cache_ttl_s=30,
            cache_scope=lambda c: c.agent.company,
        )
    )
    tenant = ctx.tenant
    for company, cached in (("north", False), ("south", False), ("north", True)):
        scoped = context(idle_backends, tenant, company=company)
        outcome = await registry.call("scoped", {"text": "hi"}, scoped, call_id=company)
        assert outcome.cached is cached, company
    assert handler.runs == 2


async def test_a_cache_entry_expires_after_its_ttl(ctx: ToolContext) -> None:
    handler = ScriptedHandler()
    registry = registry_with(handler, cache_ttl_s=0.3)
    await registry.call("echo", {"text": "hi"}, ctx, call_id="c1")
    await asyncio.sleep(0.45)
    again = await registry.call("echo", {"text": "hi"}, ctx, call_id="c2")
    assert not again.cached and handler.runs == 2


async def test_failures_are_not_cached(ctx: ToolContext) -> None:
    handler = ScriptedHandler(RuntimeError("once"))
    registry = registry_with(handler, cache_ttl_s=30)
    assert not (await registry.call("echo", {"text": "hi"}, ctx, call_id="c1")).ok
    retried = await registry.call("echo", {"text": "hi"}, ctx, call_id="c2")
    assert retried.ok and not retried.cached and handler.runs == 2


async def test_cached_results_are_copies_the_caller_may_change(ctx: ToolContext) -> None:
    async def handler(arguments: dict[str, Any], _ctx: ToolContext) -> ToolResult:
        citation = common_pb2.Citation(document_id="doc-1", text="passage")
        return ToolResult(data={"n": 1}, summary="one", citations=[citation])

    registry = registry_with(handler, cache_ttl_s=30)
    first = await registry.call("echo", {"text": "hi"}, ctx, call_id="c1")
    assert first.result is not None
    first.result.citations[0].marker = 7
    first.result.data["n"] = 99
    second = await registry.call("echo", {"text": "hi"}, ctx, call_id="c2")
    assert second.cached and second.result is not None
    assert second.result.citations[0].marker == 0
    assert second.result.data == {"n": 1}


async def test_side_effect_tools_are_never_cached(ctx: ToolContext) -> None:
    handler = ScriptedHandler()
    registry = registry_with(handler, side_effects=True)
    for n in range(2):
        outcome = await registry.call("echo", {"text": "hi"}, ctx, call_id=f"c{n}")
        assert outcome.ok and not outcome.cached
    assert handler.runs == 2
    with pytest.raises(ValueError, match="only read-only tools may cache"):
        registry_with(ScriptedHandler(), side_effects=True, cache_ttl_s=30)


async def test_cancelling_a_call_raises_cancelled_and_leaves_the_breaker_closed(
    ctx: ToolContext,
) -> None:
    registry = registry_with(ScriptedHandler(delay_s=30))
    task = asyncio.create_task(registry.call("echo", {"text": "hi"}, ctx, call_id="c1"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert registry.breaker_state("echo") is BreakerState.CLOSED


async def test_the_handler_runs_for_the_call_tenant_whatever_is_bound(ctx: ToolContext) -> None:
    handler = ScriptedHandler()
    registry = registry_with(handler)
    token = bind_tenant("someone-else")
    try:
        await registry.call("echo", {"text": "hi"}, ctx, call_id="c1")
    finally:
        reset_tenant(token)
    assert handler.tenants == ["tools-registry"]


async def test_invalid_arguments_never_reach_the_handler(ctx: ToolContext) -> None:
    handler = ScriptedHandler()
    registry = registry_with(handler)
    outcome = await registry.call("echo", {"text": 5, "loud": True}, ctx, call_id="c1")
    assert handler.runs == 0 and outcome.attempts == 0 and not outcome.ok
    assert outcome.error == (
        "invalid arguments: arguments.loud is not an argument of this tool (text); "
        "arguments.text must be of type string"
    )


def test_violations_name_the_fields_of_the_call() -> None:
    registry = registry_with(ScriptedHandler())
    assert [(v.field, v.description) for v in registry.validate("echo", {})] == [
        ("arguments.text", "is required")
    ]
    assert [(v.field, v.description) for v in registry.validate("echo", {"text": "x" * 51})] == [
        ("arguments.text", "must be at most 50 characters long")
    ]
    assert [v.field for v in registry.validate("echo", ["text"])] == ["arguments"]
    unknown = registry.validate("delete_everything", {})
    assert [v.field for v in unknown] == ["tool"]
    assert "unknown tool 'delete_everything' (known: echo)" in unknown[0].description


def test_arguments_are_bounded_in_size_and_depth_before_the_schema() -> None:
    policy = ToolPolicy(max_argument_bytes=64, max_argument_depth=3)
    registry = registry_with(ScriptedHandler(), policy=policy)
    (too_big,) = registry.validate("echo", {"text": "y" * 100})
    assert too_big.field == "arguments"
    assert too_big.description == "is 111 bytes as JSON; at most 64 allowed"
    nested: dict[str, Any] = {"text": "x"}
    for _ in range(3):
        nested = {"inner": nested}
    (too_deep,) = registry.validate("echo", nested)
    assert (too_deep.field, too_deep.description) == (
        "arguments",
        "is nested deeper than 3 levels",
    )
    # A hostile nesting is refused without walking all of it.
    hostile: dict[str, Any] = {}
    for _ in range(100_000):
        hostile = {"a": hostile}
    assert [v.field for v in registry.validate("echo", hostile)] == ["arguments"]


async def test_oversized_arguments_are_not_echoed_into_the_event(ctx: ToolContext) -> None:
    registry = registry_with(ScriptedHandler(), policy=ToolPolicy(max_argument_bytes=64))
    outcome = await registry.call("echo", {"text": "y" * 10_000}, ctx, call_id="big")
    assert outcome.error.startswith("invalid arguments: arguments is 10011 bytes")
    assert outcome.arguments == {} and len(outcome.event().arguments) == 0


def test_registration_checks_the_schema_and_the_name() -> None:
    registry = ToolRegistry()
    bad_schema = {"type": "object", "properties": {"a": {"type": "no-such-type"}}}
    with pytest.raises(SchemaError):
        registry.register(ToolSpec("broken", "d", bad_schema, ScriptedHandler()))
    with pytest.raises(ValueError, match="parameters must be an object schema"):
        registry.register(ToolSpec("stringy", "d", {"type": "string"}, ScriptedHandler()))
    with pytest.raises(ValueError, match="must match"):
        registry.register(ToolSpec("Bad Name", "d", TEXT_PARAMETERS, ScriptedHandler()))
    registry.register(ToolSpec("echo", "d", TEXT_PARAMETERS, ScriptedHandler()))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(ToolSpec("echo", "d", TEXT_PARAMETERS, ScriptedHandler()))
    assert registry.names() == ["echo"]


def test_specs_are_listed_in_name_order_skipping_unknown_names() -> None:
    registry = ToolRegistry()
    for name in ("zeta", "alpha", "mid"):
        registry.register(ToolSpec(name, "d", TEXT_PARAMETERS, ScriptedHandler()))
    assert [s.name for s in registry.specs()] == ["alpha", "mid", "zeta"]
    assert [s.name for s in registry.specs(["zeta", "nope", "alpha"])] == ["alpha", "zeta"]
    with pytest.raises(KeyError):
        registry.get("nope")


async def test_the_tool_call_event_carries_the_outcome(ctx: ToolContext) -> None:
    registry = registry_with(ScriptedHandler(TransientToolError("blip")))
    outcome = await registry.call("echo", {"text": "hi"}, ctx, call_id="call-7")
    event = outcome.event()
    assert (event.id, event.tool, event.result) == ("call-7", "echo", "echo hi")
    assert json_format.MessageToDict(event.arguments) == {"text": "hi"}
    assert event.attempts == 2 and not event.cached and not event.error
    assert event.duration_ms == pytest.approx(outcome.duration_ms)

    failed = await registry_with(always_failing(lambda: RuntimeError("no"))).call(
        "echo", {"text": "hi"}, ctx, call_id="call-8"
    )
    assert failed.event().error == "echo failed: no" and failed.event().result == ""


def test_the_tool_proto_shows_schema_timeout_side_effects_and_ttl() -> None:
    cached = registry_with(ScriptedHandler(), timeout_s=2.5, cache_ttl_s=60).get("echo").proto()
    assert cached.name == "echo" and cached.description == "Echoes its text."
    assert json_format.MessageToDict(cached.parameters) == TEXT_PARAMETERS
    assert cached.timeout.ToMilliseconds() == 2500
    assert cached.cache_ttl.seconds == 60 and not cached.side_effects
    effectful = registry_with(ScriptedHandler(), side_effects=True).get("echo").proto()
    assert effectful.side_effects and not effectful.HasField("cache_ttl")
