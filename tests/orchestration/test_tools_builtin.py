"""The built-in tools that need no retrieval: `calculator` (safe arithmetic, bounded),
`current_time` (IANA zones), `get_conversation` (recent turns through the real persistence
service, the caller's tenant only), their bad arguments, and the registry `build_registry`
assembles (every built-in, schemas valid, protos as ListTools shows them)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf import json_format
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from orchestration_test_support import connect_backends, service_key
from tools_test_support import RIVAL, TENANT, context

import callisto
from callisto.api.common.v1 import common_pb2
from callisto.api.persistence.v1 import persistence_pb2
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.services.common.validation import Violations
from callisto.services.generation import structured
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.tools.builtin import build_registry
from callisto.services.orchestration.tools.registry import ToolRegistry

BUILTINS = [
    "calculator",
    "create_report",
    "current_time",
    "get_conversation",
    "search_documents",
    "search_entities",
]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backends(
    redis_server: RedisServer, persistence: ServiceProcess
) -> AsyncIterator[Backends]:
    """Orchestration's backends as its service principal; these tools use persistence only."""
    backends = await connect_backends(
        await service_key(redis_server.url),
        persistence=persistence.address,
        generation=f"127.0.0.1:{free_port()}",
        retrieval=f"127.0.0.1:{free_port()}",
    )
    yield backends
    await backends.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def conversation(persistence: ServiceProcess, tenant_key: Callable[[str], str]) -> str:
    """A conversation of TENANT with three messages, created through the SDK as the tenant."""
    async with await callisto.Client.connect(
        persistence.address, api_key=tenant_key(TENANT)
    ) as client:
        created = await client.persistence.create_conversation(title="tools test")
        for role, author, text in (
            (common_pb2.ROLE_USER, "visitor-1", "Which sessions cover cold-chain monitoring?"),
            (common_pb2.ROLE_ASSISTANT, "agents/guide", "Session 12 does [1]."),
            (common_pb2.ROLE_USER, "visitor-1", "Who speaks at that session?"),
        ):
            await client.persistence.create_message(
                created.name, persistence_pb2.Message(role=role, author=author, text=text)
            )
    return created.name


@pytest.fixture
def registry() -> ToolRegistry:
    return build_registry(OrchestrationSettings())


async def call(
    registry: ToolRegistry, backends: Backends, tool: str, arguments: dict[str, Any], **kw: Any
) -> Any:
    return await registry.call(tool, arguments, context(backends, TENANT, **kw), call_id="t")


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("290 * 1450 * 0.85", 357425),
        ("(12 + 30) / 7", 6),
        ("7 / 2", 3.5),
        ("0.1 + 0.2", 0.3),
        ("-3 // 2", -2),
        ("17 % 5", 2),
        ("2 ** 10", 1024),
        ("2 ** -2", 0.25),
        ("-(4 - 10) * +2", 12),
        ("1.5e3 + 1", 1501),
    ],
)
async def test_calculator_computes_arithmetic(
    registry: ToolRegistry, backends: Backends, expression: str, result: float
) -> None:
    outcome = await call(registry, backends, "calculator", {"expression": expression})
    assert outcome.ok, outcome.error
    assert outcome.result.data == {"expression": expression, "result": result}
    assert outcome.result.summary == f"{expression} = {result}"


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("2 ** 1000", "exponent larger than 100"),
        ("9 ** 9 ** 9", "exponent larger than 100"),
        ("99999999999 ** 99", "result larger than 1e+100"),
        ("1e300 * 1e300", "result larger than 1e+100"),
        ("(1 + 2", "not an arithmetic expression: '(1 + 2'"),
        ("1e", "not an arithmetic expression: '1e'"),
        ("e", "only numbers, + - * / // % ** and parentheses are allowed"),
        ("(-8) ** 0.5", "the result is not a real number"),
    ],
)
async def test_calculator_rejects_what_is_not_bounded_arithmetic(
    registry: ToolRegistry, backends: Backends, expression: str, error: str
) -> None:
    outcome = await call(registry, backends, "calculator", {"expression": expression})
    assert not outcome.ok and outcome.result is None
    assert outcome.error == error
    # The input is at fault: no retry.
    assert outcome.attempts == 1


async def test_current_time_gives_now_in_an_iana_zone(
    registry: ToolRegistry, backends: Backends
) -> None:
    outcome = await call(registry, backends, "current_time", {"timezone": "Europe/Amsterdam"})
    assert outcome.ok, outcome.error
    data = outcome.result.data
    assert data["timezone"] == "Europe/Amsterdam"
    assert data["utc_offset"] in {"+01:00", "+02:00"}
    shown = dt.datetime.fromisoformat(data["iso"])
    assert abs((shown - dt.datetime.now(dt.UTC)).total_seconds()) < 5
    assert data["weekday"] == shown.strftime("%A") and data["date"] == shown.date().isoformat()


async def test_current_time_defaults_to_utc(registry: ToolRegistry, backends: Backends) -> None:
    outcome = await call(registry, backends, "current_time", {})
    assert outcome.ok and outcome.result.data["utc_offset"] == "+00:00"
    assert outcome.result.data["timezone"] == "UTC"


async def test_current_time_names_an_unknown_zone(
    registry: ToolRegistry, backends: Backends
) -> None:
    outcome = await call(registry, backends, "current_time", {"timezone": "Mars/Olympus_Mons"})
    assert outcome.error == (
        "unknown time zone 'Mars/Olympus_Mons'; use an IANA name such as 'Europe/Amsterdam'"
    )
    assert outcome.attempts == 1


async def test_get_conversation_returns_the_latest_turns_oldest_first(
    registry: ToolRegistry, backends: Backends, conversation: str
) -> None:
    outcome = await call(
        registry, backends, "get_conversation", {"limit": 2}, conversation=conversation
    )
    assert outcome.ok, outcome.error
    assert outcome.result.data["messages"] == [
        {
            "position": 2,
            "role": "assistant",
            "author": "agents/guide",
            "text": "Session 12 does [1].",
        },
        {
            "position": 3,
            "role": "user",
            "author": "visitor-1",
            "text": "Who speaks at that session?",
        },
    ]
    everything = await call(registry, backends, "get_conversation", {}, conversation=conversation)
    assert [m["position"] for m in everything.result.data["messages"]] == [1, 2, 3]
    assert everything.result.summary == "3 recent messages"


async def test_get_conversation_never_reads_another_tenants_conversation(
    registry: ToolRegistry, backends: Backends, conversation: str
) -> None:
    outcome = await registry.call(
        "get_conversation",
        {"limit": 5},
        context(backends, RIVAL, conversation=conversation),
        call_id="t",
    )
    assert not outcome.ok and outcome.result is None
    assert outcome.error.startswith("get_conversation failed: not_found")


async def test_get_conversation_outside_a_conversation_says_so(
    registry: ToolRegistry, backends: Backends
) -> None:
    outcome = await call(registry, backends, "get_conversation", {})
    assert outcome.error == "this call belongs to no conversation"


@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [
        ("calculator", {}, "arguments.expression"),
        ("calculator", {"expression": ""}, "arguments.expression"),
        ("calculator", {"expression": "__import__('os').system('id')"}, "arguments.expression"),
        ("calculator", {"expression": "abs(-1)"}, "arguments.expression"),
        ("calculator", {"expression": "1+" * 101 + "1"}, "arguments.expression"),
        ("calculator", {"expression": 12}, "arguments.expression"),
        ("current_time", {"timezone": "../../etc/passwd"}, "arguments.timezone"),
        ("current_time", {"timezone": ""}, "arguments.timezone"),
        ("current_time", {"zone": "UTC"}, "arguments.zone"),
        ("get_conversation", {"limit": 21}, "arguments.limit"),
        ("get_conversation", {"limit": 0}, "arguments.limit"),
        ("get_conversation", {"limit": "5"}, "arguments.limit"),
    ],
)
async def test_bad_arguments_are_field_violations(
    registry: ToolRegistry, backends: Backends, tool: str, arguments: dict[str, Any], field: str
) -> None:
    assert field in [v.field for v in registry.validate(tool, arguments)]
    outcome = await call(registry, backends, tool, arguments)
    assert outcome.error.startswith("invalid arguments: ") and field in outcome.error
    assert outcome.attempts == 0 and outcome.result is None


def test_build_registry_holds_every_builtin_with_a_valid_schema(registry: ToolRegistry) -> None:
    assert registry.names() == BUILTINS
    for spec in registry.specs():
        Draft202012Validator.check_schema(spec.parameters)
        assert spec.parameters["additionalProperties"] is False
        assert spec.description and 0 < spec.timeout_s <= 30
        # Only the report changes something (it stores an artifact, once per idempotency key).
        assert spec.side_effects == (spec.name == "create_report")


def test_tool_protos_show_what_list_tools_serves(registry: ToolRegistry) -> None:
    protos = {spec.name: spec.proto() for spec in registry.specs()}
    for name, proto in protos.items():
        assert json_format.MessageToDict(proto.parameters) == registry.get(name).parameters
    # Retrieval results are reused for a minute; the clock, the calculator and the
    # conversation are always fresh.
    assert {n for n, p in protos.items() if p.HasField("cache_ttl")} == {
        "search_documents",
        "search_entities",
    }
    assert protos["search_documents"].cache_ttl.seconds == 60
    assert protos["calculator"].timeout.seconds == 1


def test_tool_settings_shape_the_registry_policy() -> None:
    settings = OrchestrationSettings.from_env(
        {"CALLISTO_TOOL_ATTEMPTS": "4", "CALLISTO_TOOL_BREAKER_FAILURES": "2"}
    )
    policy = build_registry(settings).policy
    assert (policy.attempts, policy.breaker_failures, policy.retry_base_s) == (4, 2, 1.0)


def test_the_model_sees_each_schema_within_the_grammar_subset(registry: ToolRegistry) -> None:
    specs = registry.specs()
    offered = [structured.ToolSpec(s.name, s.description, s.model_parameters()) for s in specs]
    violations = Violations()
    structured.check_tools(offered, "tools", violations)
    violations.raise_if_any()
    # The full schemas keep what the grammar cannot hold the model to (checked on every call).
    full = Violations()
    structured.check_tools(
        [structured.ToolSpec(s.name, "", s.parameters) for s in specs], "t", full
    )
    assert full
    top_k = registry.get("search_documents").model_parameters()["properties"]["top_k"]
    assert top_k["enum"] == list(range(1, 11)) and "maximum" not in top_k
    expression = registry.get("calculator").model_parameters()["properties"]["expression"]
    assert "pattern" not in expression and expression["maxLength"] == 200
