"""Tenant HTTP tools: the RPCs over a real orchestration process (create, get, list, delete,
validated field by field, secrets write-only, another tenant's NOT_FOUND), agents and
ListTools seeing the tenant's tools, and calls through the tenant's registry view (in the test
process, over the same persistence) reaching a real local server signed, with an
idempotency key only for side effects, answers handed to the model as JSON, and a failing
tool opening its own circuit breaker."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from outbound_test_support import (
    LOOPBACK_ALLOWED,
    SECRET,
    LocalServer,
    OutboundMesh,
    Seen,
    client_of,
    in_process_dispatcher,
    module_mesh,
)

import callisto
from callisto import errors
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.services.common.tenancy import bind_tenant, reset_tenant
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.http_tools import HttpTools
from callisto.services.orchestration.outbound import client_from
from callisto.services.orchestration.tools.builtin import build_registry
from callisto.services.orchestration.tools.registry import BreakerState, ToolContext
from callisto.signing import verify

pytestmark = pytest.mark.asyncio(loop_scope="session")

mesh = module_mesh(LOOPBACK_ALLOWED)
PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"sku": {"type": "string", "maxLength": 32}},
    "required": ["sku"],
    "additionalProperties": False,
}


@pytest.fixture
async def acme(mesh: OutboundMesh) -> AsyncIterator[callisto.Client]:
    async with client_of(mesh, "acme") as client:
        yield client


@pytest.fixture
async def backends(mesh: OutboundMesh) -> AsyncIterator[Backends]:
    async with in_process_dispatcher(mesh) as (_, connected):
        yield connected


def http_tools(mesh: OutboundMesh, backends: Backends, **policy: Any) -> HttpTools:
    settings = dataclasses.replace(mesh.settings(), **policy)
    return HttpTools(backends.persistence, client_from(settings), build_registry(settings))


async def test_create_get_list_delete_and_the_secret_is_never_returned(
    acme: callisto.Client,
) -> None:
    orchestration = acme.orchestration
    created = await orchestration.create_http_tool(
        http_tool_id="price_lookup",
        description="Looks up a part's list price.",
        parameters=PARAMETERS,
        url="http://127.0.0.1:9/price",
        secret=SECRET,
        timeout_s=2.5,
    )
    assert created.name == "httpTools/price_lookup" and created.secret == ""
    assert created.timeout.ToNanoseconds() == 2_500_000_000 and not created.side_effects
    got = await orchestration.get_http_tool("price_lookup")
    assert got.url == "http://127.0.0.1:9/price" and got.secret == ""
    assert dict(got.parameters)["required"] == ["sku"]
    listed = [t async for t in orchestration.list_http_tools()]
    assert [t.name for t in listed] == ["httpTools/price_lookup"]
    assert SECRET not in str(listed) + str(got) + str(created)
    await orchestration.delete_http_tool("price_lookup")
    with pytest.raises(errors.NotFound):
        await orchestration.get_http_tool("price_lookup")


async def test_every_field_is_validated_at_its_path(acme: callisto.Client) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        await acme.orchestration.create_http_tool(
            http_tool_id="calculator",
            description="",
            parameters={"type": "object", "properties": {"a": {"type": "nope"}}},
            url="http://10.0.0.7/tool",
            secret="short",
            timeout_s=120,
        )
    violations = caught.value.field_violations
    assert set(violations) == {
        "http_tool_id",
        "http_tool.description",
        "http_tool.parameters",
        "http_tool.url",
        "http_tool.secret",
        "http_tool.timeout",
    }
    assert "built-in" in violations["http_tool_id"]
    assert "private" in violations["http_tool.url"]
    for tool_id, url, schema, field in [
        ("Bad-Name", "http://127.0.0.1:9/", PARAMETERS, "http_tool_id"),
        ("ok_tool", "gopher://127.0.0.1/", PARAMETERS, "http_tool.url"),
        ("ok_tool", "http://127.0.0.1:9/", {"type": "string"}, "http_tool.parameters"),
    ]:
        with pytest.raises(errors.InvalidArgument) as caught:
            await acme.orchestration.create_http_tool(
                http_tool_id=tool_id, description="d", parameters=schema, url=url, secret=SECRET
            )
        assert set(caught.value.field_violations) == {field}


async def test_another_tenants_http_tool_is_not_found_and_not_nameable(
    mesh: OutboundMesh, acme: callisto.Client
) -> None:
    await acme.orchestration.create_http_tool(
        http_tool_id="crm_lookup",
        description="Finds a customer in the CRM.",
        parameters=PARAMETERS,
        url="http://127.0.0.1:9/crm",
        secret=SECRET,
    )
    async with client_of(mesh, "globex") as globex:
        with pytest.raises(errors.NotFound):
            await globex.orchestration.get_http_tool("crm_lookup")
        with pytest.raises(errors.NotFound):
            await globex.orchestration.delete_http_tool("crm_lookup")
        assert [t async for t in globex.orchestration.list_http_tools()] == []
        assert "crm_lookup" not in [t.name for t in await globex.orchestration.list_tools()]
        with pytest.raises(errors.InvalidArgument) as caught:
            await globex.orchestration.create_agent(
                display_name="Clerk", system_prompt="Help.", tools=["crm_lookup"]
            )
        assert "unknown tool" in caught.value.field_violations["agent.tools[0]"]
    # Its owner's agents may name it, and ListTools shows it with the built-ins.
    agent = await acme.orchestration.create_agent(
        display_name="Clerk", system_prompt="Help.", tools=["crm_lookup", "calculator"]
    )
    assert list(agent.tools) == ["crm_lookup", "calculator"]
    names = [t.name for t in await acme.orchestration.list_tools()]
    assert {"crm_lookup", "calculator", "send_webhook"} <= set(names)
    await acme.orchestration.delete_http_tool("crm_lookup")
    with pytest.raises(errors.InvalidArgument):
        await acme.orchestration.create_agent(
            display_name="Clerk", system_prompt="Help.", tools=["crm_lookup"]
        )
    await acme.orchestration.delete_agent(agent.name)


async def test_a_call_through_the_registry_view_reaches_the_server_signed(
    mesh: OutboundMesh, acme: callisto.Client, backends: Backends
) -> None:
    def answer(seen: Seen, index: int) -> tuple[int, dict[str, str], bytes]:
        sku = json.loads(seen.body)["sku"]
        return (
            200,
            {"Content-Type": "application/json"},
            json.dumps({"sku": sku, "eur": 14.5}).encode(),
        )

    with LocalServer(answer) as server:
        for tool_id, side_effects in (("quote_part", False), ("order_part", True)):
            await acme.orchestration.create_http_tool(
                http_tool_id=tool_id,
                description="Parts.",
                parameters=PARAMETERS,
                url=server.url + f"/{tool_id}",
                secret=SECRET,
                side_effects=side_effects,
            )
        tools = http_tools(mesh, backends)
        token = bind_tenant("acme")
        try:
            registry = await tools.registry_for()
            assert {"quote_part", "order_part", "calculator"} <= set(registry.names())
            assert registry.get("order_part").side_effects
            context = ToolContext(
                tenant="acme",
                conversation="conversations/c1",
                agent=pb.Agent(),
                backends=backends,
                idempotency_key="run-9:step-b:1",
            )
            quote = await registry.call("quote_part", {"sku": "BRK-7"}, context, call_id="1")
            order = await registry.call("order_part", {"sku": "BRK-7"}, context, call_id="2")
            invalid = await registry.call("quote_part", {"sku": 7}, context, call_id="3")
        finally:
            reset_tenant(token)
    assert quote.ok and quote.result is not None, quote.error
    assert quote.result.data == {"sku": "BRK-7", "eur": 14.5}
    assert order.ok and not invalid.ok and "invalid arguments" in invalid.error
    first, second = server.requests
    assert first.path == "/quote_part" and json.loads(first.body) == {"sku": "BRK-7"}
    for seen in (first, second):
        assert verify(SECRET, seen.headers["callisto-signature"], seen.body)
        assert seen.headers["callisto-event"] == "tool.call"
    assert "idempotency-key" not in first.headers
    assert second.headers["idempotency-key"] == "run-9:step-b:1"
    for tool_id in ("quote_part", "order_part"):
        await acme.orchestration.delete_http_tool(tool_id)


async def test_a_failing_http_tool_opens_its_breaker(
    mesh: OutboundMesh, acme: callisto.Client, backends: Backends
) -> None:
    with LocalServer(lambda seen, i: (503, {}, b"down")) as server:
        await acme.orchestration.create_http_tool(
            http_tool_id="flaky_stock",
            description="Stock levels.",
            parameters=PARAMETERS,
            url=server.url + "/stock",
            secret=SECRET,
        )
        tools = http_tools(mesh, backends, tool_attempts=1, tool_breaker_failures=2)
        token = bind_tenant("acme")
        try:
            context = ToolContext(
                tenant="acme", conversation="", agent=pb.Agent(), backends=backends
            )
            outcomes = []
            for index in range(3):
                # A fresh view each time (as after the cache expires) keeps the same breaker.
                tools.invalidate("acme")
                registry = await tools.registry_for()
                outcomes.append(
                    await registry.call("flaky_stock", {"sku": "X"}, context, call_id=str(index))
                )
            state = registry.breaker_state("flaky_stock")
        finally:
            reset_tenant(token)
    assert [o.ok for o in outcomes] == [False, False, False]
    assert "HTTP 503" in outcomes[0].error
    assert outcomes[2].error == "circuit open"
    assert state is BreakerState.OPEN
    assert len(server.requests) == 2
    await acme.orchestration.delete_http_tool("flaky_stock")


async def test_http_tool_secrets_never_reach_the_service_log(
    mesh: OutboundMesh, acme: callisto.Client
) -> None:
    with pytest.raises(errors.InvalidArgument):
        await acme.orchestration.create_http_tool(
            http_tool_id="leaky",
            description="d",
            parameters={"type": "array"},
            url="",
            secret=SECRET,
        )
    assert SECRET not in mesh.orchestration.log_path.read_text(errors="replace")
