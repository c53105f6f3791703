"""ValidatePlan against the real orchestration and persistence processes: every rule of a valid
workflow plan answered at its field path, all problems at once, the stages of a valid plan, the
agents looked up in the caller's tenant only, and the same over HTTP/JSON through Envoy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from simulation_test_support import violations

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import ServiceProcess

if TYPE_CHECKING:
    from callisto.api.orchestration.v1.orchestration_pb2_grpc import (
        OrchestrationServiceAsyncStub as Stub,
    )

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def agents(orch_client: callisto.Client) -> AsyncIterator[dict[str, str]]:
    """A researcher with search_documents and a writer with calculator, of tenant acme."""
    made = {
        "researcher": await orch_client.orchestration.create_agent(
            display_name="Researcher",
            system_prompt="Find the facts.",
            tools=["search_documents"],
        ),
        "writer": await orch_client.orchestration.create_agent(
            display_name="Writer", system_prompt="Write it up.", tools=["calculator"]
        ),
    }
    yield {role: agent.name for role, agent in made.items()}
    for agent in made.values():
        await orch_client.orchestration.delete_agent(agent.name)


def step(id: str, agent: str, *needs: str, **fields: Any) -> pb.WorkflowStep:
    return pb.WorkflowStep(
        id=id, agent=agent, instruction=f"Do {id}.", depends_on=list(needs), **fields
    )


async def refused(stub: Stub, plan: pb.WorkflowPlan) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.ValidatePlan(pb.ValidatePlanRequest(plan=plan), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value
    return violations(error.value)


async def test_a_valid_plan_comes_back_with_its_parallel_stages(
    orch_client: callisto.Client, agents: dict[str, str]
) -> None:
    r, w = agents["researcher"], agents["writer"]
    plan = pb.WorkflowPlan(
        steps=[
            step("policy", r, tools=["search_documents"]),
            step("offer", r),
            step("synthesis", w, "policy", "offer", requires_approval=True),
            step("report", w, "synthesis", tools=["calculator"]),
            step(
                "notify",
                w,
                "synthesis",
                on_failure=pb.STEP_FAILURE_POLICY_CONTINUE,
                timeout=duration_pb2.Duration(seconds=30),
                max_retries=2,
            ),
        ]
    )
    stages = await orch_client.orchestration.validate_plan(plan)
    assert stages == [["policy", "offer"], ["synthesis"], ["report", "notify"]]


async def test_a_plan_needs_steps_and_at_most_fifty(
    orch_stub: Stub, agents: dict[str, str]
) -> None:
    assert await refused(orch_stub, pb.WorkflowPlan()) == {
        "plan.steps": "is required: a plan has at least one step"
    }
    many = pb.WorkflowPlan(steps=[step(f"s{i}", agents["writer"]) for i in range(51)])
    assert set(await refused(orch_stub, many)) == {"plan.steps"}
    fifty = pb.WorkflowPlan(steps=[step(f"s{i}", agents["writer"]) for i in range(50)])
    reply = await orch_stub.ValidatePlan(pb.ValidatePlanRequest(plan=fifty), timeout=30)
    assert [len(s.step_ids) for s in reply.stages] == [50]
    # Fifty steps of the longest instructions are more than a run's checkpoint holds.
    heavy = pb.WorkflowPlan(
        steps=[
            pb.WorkflowStep(id=f"s{i}", agent=agents["writer"], instruction="x" * 16000)
            for i in range(5)
        ]
    )
    assert "at most 65536" in (await refused(orch_stub, heavy))["plan"]


async def test_every_depends_on_names_another_step_of_the_plan(
    orch_stub: Stub, agents: dict[str, str]
) -> None:
    w = agents["writer"]
    plan = pb.WorkflowPlan(
        steps=[
            step("a", w),
            step("b", w, "a", "nowhere"),
            step("c", w, "c"),
            step("d", w, "a", "a"),
        ]
    )
    found = await refused(orch_stub, plan)
    assert set(found) == {
        "plan.steps[1].depends_on[1]",
        "plan.steps[2].depends_on[0]",
        "plan.steps[3].depends_on[1]",
    }
    assert "names no step" in found["plan.steps[1].depends_on[1]"]
    assert "itself" in found["plan.steps[2].depends_on[0]"]
    assert "duplicate" in found["plan.steps[3].depends_on[1]"]


async def test_a_cycle_is_reported_once_where_it_closes_and_each_cycle_apart(
    orch_stub: Stub, agents: dict[str, str]
) -> None:
    w = agents["writer"]
    plan = pb.WorkflowPlan(
        steps=[
            step("entry", w),
            step("a", w, "entry", "c"),
            step("b", w, "a"),
            step("c", w, "b"),
            step("after", w, "c"),
            step("x", w, "y"),
            step("y", w, "x"),
        ]
    )
    found = await refused(orch_stub, plan)
    cycles = {field: text for field, text in found.items() if "cycle" in text}
    assert len(cycles) == 2 and len(found) == 2, found
    assert {"a → c → b → a", "x → y → x"} == {text.split(": ", 1)[1] for text in cycles.values()}


async def test_a_plan_without_an_entry_step_is_refused(
    orch_stub: Stub, agents: dict[str, str]
) -> None:
    w = agents["writer"]
    found = await refused(orch_stub, pb.WorkflowPlan(steps=[step("a", w, "b"), step("b", w, "a")]))
    assert "entry step" in found["plan.steps"]
    assert any("cycle" in text for text in found.values())


async def test_step_ids_are_unique_resource_ids(orch_stub: Stub, agents: dict[str, str]) -> None:
    w = agents["writer"]
    plan = pb.WorkflowPlan(steps=[step("a", w), step("a", w), step("Bad Id", w), step("", w)])
    found = await refused(orch_stub, plan)
    assert set(found) == {"plan.steps[1].id", "plan.steps[2].id", "plan.steps[3].id"}
    assert "steps[0]" in found["plan.steps[1].id"]


async def test_every_step_field_is_checked_at_its_path(
    orch_stub: Stub, agents: dict[str, str]
) -> None:
    w = agents["writer"]
    bad = pb.WorkflowStep(
        id="bad",
        agent="agent-without-prefix",
        instruction=" ",
        max_retries=11,
        tools=["no_such_tool", "calculator", "calculator"],
        timeout=duration_pb2.Duration(seconds=0),
        requires_approval=True,
        approval_timeout=duration_pb2.Duration(seconds=31 * 86400),
        on_failure=7,  # type: ignore[arg-type]
    )
    long = step("long", w, timeout=duration_pb2.Duration(seconds=25 * 3600))
    long.instruction = "x" * 16385
    nul = step("nul", w)
    nul.instruction = "a\x00b"
    plan = pb.WorkflowPlan(steps=[step("entry", w), bad, long, nul, pb.WorkflowStep(id="empty")])
    found = await refused(orch_stub, plan)
    assert set(found) == {
        "plan.steps[1].agent",
        "plan.steps[1].instruction",
        "plan.steps[1].max_retries",
        "plan.steps[1].tools[0]",
        "plan.steps[1].tools[2]",
        "plan.steps[1].timeout",
        "plan.steps[1].approval_timeout",
        "plan.steps[1].on_failure",
        "plan.steps[2].instruction",
        "plan.steps[2].timeout",
        "plan.steps[3].instruction",
        "plan.steps[4].agent",
        "plan.steps[4].instruction",
    }, found
    # Over 30 days, and a step that does not wait for an approval takes no approval timeout.
    assert "at most" in found["plan.steps[1].approval_timeout"]
    lone = step("lone", w, approval_timeout=duration_pb2.Duration(seconds=60))
    found = await refused(orch_stub, pb.WorkflowPlan(steps=[lone]))
    assert "requires_approval" in found["plan.steps[0].approval_timeout"]


async def test_agents_must_exist_and_have_the_steps_tools(
    orch_stub: Stub, agents: dict[str, str]
) -> None:
    r, w = agents["researcher"], agents["writer"]
    plan = pb.WorkflowPlan(
        steps=[
            step("search", w, tools=["search_documents"]),
            step("ghost", "agents/no-such-agent"),
            step("old", f"{r}@no-such-revision"),
            step("fine", r, tools=["search_documents"]),
        ]
    )
    found = await refused(orch_stub, plan)
    assert set(found) == {"plan.steps[0].tools[0]", "plan.steps[1].agent", "plan.steps[2].agent"}
    assert "does not have the tool" in found["plan.steps[0].tools[0]"]


async def test_another_tenants_agents_are_unknown_here(
    orchestration: ServiceProcess, tenant_key: Any, agents: dict[str, str]
) -> None:
    async with await callisto.Client.connect(
        orchestration.address, api_key=tenant_key("globex")
    ) as globex:
        stub = globex.stub(pb_grpc.OrchestrationServiceStub)
        found = await refused(stub, pb.WorkflowPlan(steps=[step("a", agents["writer"])]))
    assert set(found) == {"plan.steps[0].agent"}
    assert "no agent" in found["plan.steps[0].agent"]


async def test_plans_validate_over_http_through_envoy(
    mesh_gateway: EnvoyGateway, api_key: str, agents: dict[str, str]
) -> None:
    headers = {"authorization": f"Bearer {api_key}"}
    plan = {
        "steps": [
            {"id": "a", "agent": agents["writer"], "instruction": "Write."},
            {"id": "b", "agent": agents["writer"], "instruction": "Check.", "dependsOn": ["a"]},
        ]
    }
    async with httpx.AsyncClient(base_url=mesh_gateway.http_url, headers=headers) as http:
        good = await http.post("/v1/plans:validate", json={"plan": plan})
        assert good.status_code == 200, good.text
        assert good.json() == {"stages": [{"stepIds": ["a"]}, {"stepIds": ["b"]}]}
        plan["steps"][1]["dependsOn"] = ["b"]
        bad = await http.post("/v1/plans:validate", json={"plan": plan})
        assert bad.status_code == 400, bad.text
        assert "plan.steps[1].depends_on[0]" in bad.text
        garbage = await http.post("/v1/plans:validate", content=b"{not json")
        assert garbage.status_code == 400, garbage.text


async def test_durations_past_any_clock_are_refused_at_their_field(
    orch_stub: Stub, agents: dict[str, str]
) -> None:
    huge = duration_pb2.Duration(seconds=10**11, nanos=999_999_999)
    odd = duration_pb2.Duration(seconds=5, nanos=-1)
    plan = pb.WorkflowPlan(
        steps=[
            step("a", agents["writer"], timeout=huge, requires_approval=True, approval_timeout=odd)
        ]
    )
    found = await refused(orch_stub, plan)
    assert set(found) == {"plan.steps[0].timeout", "plan.steps[0].approval_timeout"}
    assert "at most" in found["plan.steps[0].timeout"]
