"""What a simulation start and a simulation's inputs refuse: every bad field of a start named at
its path (participants, inline agents checked as CreateAgent checks them, the scenario,
termination, options), stored agents that do not exist, a human id taken by an agent; human
turns to a simulation without a human or after its end; an empty turn that does not end it;
and another tenant's simulation is NOT_FOUND."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import duration_pb2
from runs_test_support import read_until
from simulation_test_support import create_agents, run, simulation, violations

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.mesh.processes import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _start_error(
    stub: pb_grpc.OrchestrationServiceAsyncStub, start: pb.StartConversation
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await read_until(stub.RunConversation(pb.RunConversationRequest(start=start)))
    return error.value


async def test_an_invalid_simulation_start_names_every_bad_field(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
) -> None:
    bad = pb.StartConversation(
        mode=pb.CONVERSATION_MODE_SIMULATION,
        agents=["Not An Agent"],
        inline_agents=[pb.Agent(name="agents/x", display_name=" ", tools=["no_such_tool"])],
        prompt=" ",
        conversation="conversations/c1",
        max_iterations=2,
        plan=pb.WorkflowPlan(),
        budget=pb.Budget(max_total_tokens=-5),
        termination=pb.TerminationPolicy(
            max_turns=201,
            stop_keywords=[" ", "k" * 65],
            min_sentiment=-1.5,
            max_sentiment=2,
            timeout=duration_pb2.Duration(seconds=2 * 24 * 3600),
        ),
        simulation=pb.SimulationOptions(
            human=pb.HumanParticipant(id="-bad id"),
            human_turn_timeout=duration_pb2.Duration(seconds=8 * 24 * 3600),
            max_turn_tokens=8,
            speaker_selection=9,  # type: ignore[arg-type]
        ),
    )
    error = await _start_error(orch_stub, bad)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error)) == {
        "start.agents[0]",
        "start.inline_agents[0].name",
        "start.inline_agents[0].display_name",
        "start.inline_agents[0].system_prompt",
        "start.inline_agents[0].tools[0]",
        "start.prompt",
        "start.conversation",
        "start.max_iterations",
        "start.plan",
        "start.budget.max_total_tokens",
        "start.termination.max_turns",
        "start.termination.stop_keywords[0]",
        "start.termination.stop_keywords[1]",
        "start.termination.min_sentiment",
        "start.termination.max_sentiment",
        "start.termination.timeout",
        "start.simulation.human",
        "start.simulation.human.id",
        "start.simulation.human_turn_timeout",
        "start.simulation.max_turn_tokens",
        "start.simulation.speaker_selection",
    }


async def test_a_simulation_takes_two_to_five_agents(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agents = await create_agents(orch_client, ["A", "B", "C", "D", "E", "F"], prefix="sim-val")
    for count in (1, 6):
        error = await _start_error(orch_stub, simulation(agents[:count], "too few or many"))
        assert set(violations(error)) == {"start.agents"}, count
    inline = [pb.Agent(display_name=f"Ivy {n}", system_prompt="Buy.") for n in range(4)]
    error = await _start_error(
        orch_stub, simulation(agents[:2], "two and four", inline_agents=inline)
    )
    assert set(violations(error)) == {"start.agents"}


async def test_stored_agents_must_exist_and_the_human_needs_its_own_id(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agents = await create_agents(orch_client, ["A", "B"], prefix="sim-val")
    missing = await _start_error(
        orch_stub, simulation([agents[0], "agents/no-such-agent"], "who is there")
    )
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(missing) == {"start.agents[1]": "no such agent"}
    taken = agents[0].removeprefix("agents/")
    options = pb.SimulationOptions(human=pb.HumanParticipant(id=taken))
    clash = await _start_error(
        orch_stub, simulation(agents, "me too", human_in_the_loop=True, options=options)
    )
    assert set(violations(clash)) == {"start.simulation.human.id"}


async def test_human_turns_are_refused_where_no_human_can_speak(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agents = await create_agents(orch_client, ["A", "B"], prefix="sim-val")
    events = await run(orch_stub, simulation(agents, "no human here", max_turns=2))
    conversation = events[0].conversation
    for turn in (pb.HumanTurn(text="hello"), pb.HumanTurn(end_conversation=True)):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await orch_stub.SubmitInput(pb.SubmitInputRequest(name=conversation, turn=turn))
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ended" in (error.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await orch_stub.SubmitInput(
            pb.SubmitInputRequest(name=conversation, turn=pb.HumanTurn(text=" "))
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error.value)) == {"turn.text"}


async def test_an_assistant_conversation_cannot_be_ended_by_its_human(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agent = (await create_agents(orch_client, ["Solo"], prefix="sim-val"))[0]
    start = pb.StartConversation(agents=[agent], prompt="hi", mode=pb.CONVERSATION_MODE_ASSISTANT)
    events = await read_until(orch_stub.RunConversation(pb.RunConversationRequest(start=start)))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await orch_stub.SubmitInput(
            pb.SubmitInputRequest(
                name=events[0].conversation, turn=pb.HumanTurn(text="bye", end_conversation=True)
            )
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(error.value)) == {"turn.end_conversation"}


async def test_another_tenants_simulation_is_not_found(
    orch_client: callisto.Client,
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    orchestration: ServiceProcess,
    tenant_key: Callable[[str], str],
) -> None:
    agents = await create_agents(orch_client, ["A", "B"], prefix="sim-val")
    events = await run(orch_stub, simulation(agents, "private talk", max_turns=2))
    conversation = events[0].conversation
    key = tenant_key("sim-intruder")
    async with await callisto.Client.connect(orchestration.address, api_key=key) as intruder:
        stub = intruder.stub(pb_grpc.OrchestrationServiceStub)
        calls = [
            stub.SubmitInput(
                pb.SubmitInputRequest(name=conversation, turn=pb.HumanTurn(text="hi"))
            ),
            stub.CancelConversation(pb.CancelConversationRequest(name=conversation)),
            stub.GetConversationMetrics(pb.GetConversationMetricsRequest(name=conversation)),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await read_until(
                stub.StreamConversation(pb.StreamConversationRequest(name=conversation))
            )
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
