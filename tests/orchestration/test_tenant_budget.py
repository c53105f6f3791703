"""A tenant's daily token budget (CALLISTO_TENANT_DAILY_TOKEN_OVERRIDES gives the test tenant
`frugal` 40 tokens): runs charge it as they spend, and once it is spent new runs of that
tenant are RESOURCE_EXHAUSTED while other tenants' runs go on."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from orchestration_test_support import BUDGET_TENANT
from workflow_test_support import agent

import callisto
from callisto.mesh.processes import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_spent_daily_budget_refuses_new_runs_of_that_tenant_only(
    orchestration: ServiceProcess, orch_client: callisto.Client, tenant_key: Callable[[str], str]
) -> None:
    async with await callisto.Client.connect(
        orchestration.address, api_key=tenant_key(BUDGET_TENANT)
    ) as frugal:
        assistant = await agent(frugal, "frugal")
        start = callisto.orchestration.assistant_start(assistant, "How are the offers priced?")
        first = await frugal.orchestration.run(start).complete()
        assert first.done is not None and first.done.usage.total_tokens >= 40
        with pytest.raises(callisto.errors.ResourceExhausted) as refused:
            await frugal.orchestration.run(start).complete()
        assert "daily budget of 40 tokens" in refused.value.message
        workflow = callisto.orchestration.workflow_start("Plan a review", agents=[assistant])
        with pytest.raises(callisto.errors.ResourceExhausted):
            [e async for e in frugal.orchestration.run(workflow)]
    # Another tenant is not held back.
    other = await orch_client.orchestration.run(
        callisto.orchestration.assistant_start(await agent(orch_client, "rich"), "Hello?")
    ).complete()
    assert other.done is not None and other.done.reason == "completed"
