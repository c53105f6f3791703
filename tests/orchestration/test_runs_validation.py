"""What the run RPCs refuse: invalid starts (every bad field named, with its path), an agent
that does not exist, workflows (a later release), simulation fields on an assistant start,
approvals without workflows, malformed names; and another tenant's conversation is NOT_FOUND
on every run RPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2, status_pb2
from runs_test_support import create_agent, read_until, start

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.mesh.processes import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def agent(orch_client: callisto.Client) -> str:
    return await create_agent(orch_client, "validation")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def intruder(
    orchestration: ServiceProcess, tenant_key: Callable[[str], str]
) -> AsyncIterator[callisto.Client]:
    key = tenant_key("runs-intruder")
    async with await callisto.Client.connect(orchestration.address, api_key=key) as client:
        yield client


def _violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    return {v.field: v.description for v in bad.field_violations}
    return {}


async def _run_error(
    stub: pb_grpc.OrchestrationServiceAsyncStub, start_: pb.StartConversation
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await read_until(stub.RunConversation(pb.RunConversationRequest(start=start_)))
    return error.value


async def test_an_invalid_start_names_every_bad_field(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub, agent: str
) -> None:
    bad = pb.StartConversation(
        agents=[agent, "not-an-agent"],
        prompt="  ",
        max_iterations=6,
        budget=pb.Budget(max_total_tokens=-1),
        tags=["ok", ""],
        conversation="chats/1",
    )
    error = await _run_error(orch_stub, bad)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(_violations(error)) == {
        "start.agents",
        "start.agents[1]",
        "start.prompt",
        "start.max_iterations",
        "start.budget.max_total_tokens",
        "start.tags[1]",
        "start.conversation",
    }
    long = await _run_error(orch_stub, start(agent, "x" * 20000))
    assert set(_violations(long)) == {"start.prompt"}
    none = await _run_error(orch_stub, pb.StartConversation(prompt="hi"))
    assert "start.agents" in _violations(none)


async def test_a_start_with_an_unknown_agent_is_invalid_at_its_path(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    error = await _run_error(orch_stub, start("agents/no-such-agent", "hello"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(_violations(error)) == {"start.agents[0]"}


async def test_a_workflow_start_refuses_what_only_other_modes_take(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub, agent: str
) -> None:
    request = pb.StartConversation(
        prompt="hi",
        mode=pb.CONVERSATION_MODE_WORKFLOW,
        conversation="conversations/c1",
        inline_agents=[pb.Agent(display_name="Ivy", system_prompt="Buy.")],
        simulation=pb.SimulationOptions(max_turn_tokens=32),
        human_in_the_loop=True,
        max_iterations=2,
    )
    error = await _run_error(orch_stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(_violations(error)) == {
        "start.conversation",
        "start.inline_agents",
        "start.simulation",
        "start.human_in_the_loop",
        "start.max_iterations",
    }


async def test_an_assistant_start_refuses_what_only_simulations_take(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub, agent: str
) -> None:
    bad = start(
        agent,
        "hello",
        inline_agents=[pb.Agent(display_name="Ivy", system_prompt="Buy.")],
        simulation=pb.SimulationOptions(max_turn_tokens=32),
        human_in_the_loop=True,
    )
    error = await _run_error(orch_stub, bad)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(_violations(error)) == {
        "start.inline_agents",
        "start.simulation",
        "start.human_in_the_loop",
    }


async def test_converse_refuses_a_bad_first_message_and_unknown_approvals(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub, agent: str
) -> None:
    call = orch_stub.Converse()
    await call.write(pb.ConverseRequest(turn=pb.HumanTurn(text="no start")))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await read_until(call)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    events = await read_until(
        orch_stub.RunConversation(pb.RunConversationRequest(start=start(agent, "approve?")))
    )
    conversation = events[0].conversation
    malformed = pb.Approval(approval_id="a1", decision=pb.APPROVAL_DECISION_APPROVE)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await orch_stub.SubmitInput(pb.SubmitInputRequest(name=conversation, approval=malformed))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # An assistant conversation has no approvals to answer.
    approval = pb.Approval(approval_id="ap-" + "0" * 24, decision=pb.APPROVAL_DECISION_APPROVE)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await orch_stub.SubmitInput(pb.SubmitInputRequest(name=conversation, approval=approval))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    call = orch_stub.Converse()
    await call.write(pb.ConverseRequest(attach=pb.AttachConversation(conversation=conversation)))
    await call.write(pb.ConverseRequest(approval=approval))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in call:
            pass
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_malformed_names_and_turns_are_invalid(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    calls: list[Any] = [
        orch_stub.SubmitInput(
            pb.SubmitInputRequest(name="conversations/", turn=pb.HumanTurn(text="x"))
        ),
        orch_stub.SubmitInput(
            pb.SubmitInputRequest(name="conversations/c1", turn=pb.HumanTurn(text=""))
        ),
        orch_stub.CancelConversation(pb.CancelConversationRequest(name="c1")),
        read_until(orch_stub.StreamConversation(pb.StreamConversationRequest(name="x/y"))),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_another_tenants_conversation_is_not_found_on_every_run_rpc(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    intruder: callisto.Client,
    agent: str,
) -> None:
    other_stub = intruder.stub(pb_grpc.OrchestrationServiceStub)
    events = await read_until(
        orch_stub.RunConversation(pb.RunConversationRequest(start=start(agent, "mine")))
    )
    conversation = events[0].conversation
    turn = pb.HumanTurn(text="let me in")
    attempts: list[Any] = [
        read_until(other_stub.StreamConversation(pb.StreamConversationRequest(name=conversation))),
        other_stub.SubmitInput(pb.SubmitInputRequest(name=conversation, turn=turn)),
        other_stub.CancelConversation(pb.CancelConversationRequest(name=conversation)),
    ]
    for attempt in attempts:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await attempt
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    attach = other_stub.Converse()
    await attach.write(pb.ConverseRequest(attach=pb.AttachConversation(conversation=conversation)))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await read_until(attach)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    # Continuing it with an agent of its own is NOT_FOUND too.
    their_agent = await create_agent(intruder, "intruder")
    continued = await _run_error(
        other_stub, start(their_agent, "continue yours", conversation=conversation)
    )
    assert continued.code() == grpc.StatusCode.NOT_FOUND
    # The intruder's attempts left the run untouched.
    again = await read_until(
        orch_stub.StreamConversation(
            pb.StreamConversationRequest(name=conversation, after_event_id=0)
        )
    )
    assert again[1:] == events
