"""Tenant HTTP tools called like built-ins on the session mesh: an assistant turn plans and
calls one (signed, with its result in the turn), and a workflow step acts through a
side-effecting one once, after its output, with the run, step and attempt as the
idempotency key."""

from __future__ import annotations

import json

import pytest
from outbound_test_support import LocalServer, Seen
from runs_test_support import new_id
from workflow_test_support import plan, results, run, step

import callisto
from callisto.signing import verify

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "http-tool-secret-in-runs-0123456789"
PARAMETERS = {
    "type": "object",
    "properties": {"sku": {"type": "string", "maxLength": 40}},
    "required": ["sku"],
    "additionalProperties": False,
}


def _answer(seen: Seen, index: int) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps({"eur": 14.5}).encode()


async def test_an_assistant_turn_calls_a_tenant_http_tool_like_a_built_in(
    orch_client: callisto.Client,
) -> None:
    orchestration = orch_client.orchestration
    tool = f"quote_{new_id('q').replace('-', '_')}"
    with LocalServer(_answer) as server:
        await orchestration.create_http_tool(
            http_tool_id=tool,
            description="Quotes a part's price in EUR.",
            parameters=PARAMETERS,
            url=f"{server.url}/quote",
            secret=SECRET,
        )
        agent = await orchestration.create_agent(
            agent_id=new_id("http-user"),
            display_name="Buyer",
            system_prompt="Answer with the tools.",
            tools=[tool],
        )
        start = callisto.orchestration.assistant_start(agent.name, f"use {tool} for BRK-7")
        stream = await orchestration.run(start).complete()
        await orchestration.delete_http_tool(tool)
    assert stream.done is not None and stream.done.reason == "completed", stream.error
    calls = [call for call in stream.tool_calls if call.tool == tool]
    assert calls and not calls[0].error, stream.tool_calls
    assert server.requests and server.requests[0].path == "/quote"
    seen = server.requests[0]
    assert verify(SECRET, seen.headers["callisto-signature"], seen.body)
    assert "idempotency-key" not in seen.headers


async def test_a_workflow_step_acts_through_a_side_effecting_http_tool_once(
    orch_client: callisto.Client,
) -> None:
    orchestration = orch_client.orchestration
    tool = f"order_{new_id('o').replace('-', '_')}"
    with LocalServer(_answer) as server:
        await orchestration.create_http_tool(
            http_tool_id=tool,
            description="Orders a part.",
            parameters=PARAMETERS,
            url=f"{server.url}/order",
            secret=SECRET,
            side_effects=True,
        )
        agent = await orchestration.create_agent(
            agent_id=new_id("http-step"),
            display_name="Purchaser",
            system_prompt="Order what the step says.",
            tools=[tool],
        )
        events = await run(
            orch_client, plan(step("order", agent.name, "Order part BRK-7", tools=[tool]))
        )
        await orchestration.delete_http_tool(tool)
    done = events[-1].done
    assert done.reason == "completed", events[-1]
    assert len(server.requests) == 1
    seen = server.requests[0]
    assert verify(SECRET, seen.headers["callisto-signature"], seen.body)
    run_keyed = seen.headers["idempotency-key"]
    assert run_keyed.endswith(f"/order/1/{tool}"), run_keyed
    calls = [e.tool_call for e in events if e.WhichOneof("kind") == "tool_call"]
    assert [(c.tool, c.error) for c in calls] == [(tool, "")]
    assert results(done)["order"].state == "succeeded"
