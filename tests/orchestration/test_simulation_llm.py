"""A simulation with the real SmolLM2: two agents of two companies speak in turn, each line is
the agent's own (not headed with its name, no other speaker's "Name:" line in it), scored, and
the run ends on max_turns."""

from __future__ import annotations

import pytest
from simulation_test_support import ended, run, simulation

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.mesh.processes import ServiceProcess

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.llm]


async def test_the_real_model_holds_a_two_agent_sales_conversation(
    orchestration: ServiceProcess, api_key: str
) -> None:
    agents = [
        pb.Agent(
            display_name="Tessa",
            role="sales representative",
            company="Tessaline Systems",
            system_prompt="You sell Tessaline edge servers. Be friendly and concrete.",
            model="models/llm",
        ),
        pb.Agent(
            display_name="Marco",
            role="IT manager",
            company="Marrowick Motors",
            system_prompt="You buy servers for a car plant. Ask about price and support.",
            model="models/llm",
        ),
    ]
    start = simulation(
        [],
        "Tessaline Systems sells edge servers to Marrowick Motors' new plant.",
        max_turns=2,
        max_turn_tokens=48,
        inline_agents=agents,
    )
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
        events = await run(client.stub(pb_grpc.OrchestrationServiceStub), start, within_s=600)
    assert events[-1].done.reason == "max_turns", events[-1]
    turns = ended(events)
    assert [t.speaker for t in turns] == ["tessa", "marco"]
    for turn in turns:
        print(f"\n{turn.speaker} ({turn.sentiment.score:+.2f}): {turn.text}")
        assert turn.text.strip() and turn.HasField("sentiment")
        # The line is the speaker's own: not headed with its name, not running into another's.
        assert not turn.text.startswith(("Tessa:", "Marco:"))
        assert "\nMarco:" not in turn.text and "\nTessa:" not in turn.text
        assert turn.usage.completion_tokens <= 48
