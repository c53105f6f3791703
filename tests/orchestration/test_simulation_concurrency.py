"""Many simulations at once keep streaming: 50 simulations started together on toy_llm all end
with `max_turns`, each with its own gap-free log whose replay is what its client received."""

from __future__ import annotations

import asyncio

import pytest
from runs_test_support import assert_consecutive, watch
from simulation_test_support import create_agents, ended, run, simulation

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc

pytestmark = pytest.mark.asyncio(loop_scope="session")

SIMULATIONS = 50


async def test_fifty_simulations_at_once_all_finish_with_gap_free_logs(
    orch_client: callisto.Client, orch_stub: pb_grpc.OrchestrationServiceAsyncStub
) -> None:
    agents = await create_agents(orch_client, ["Tessa", "Marrow"], prefix="sim-many")
    starts = [
        simulation(agents, f"conversation number {n} about servers", max_turns=2)
        for n in range(SIMULATIONS)
    ]
    results = await asyncio.gather(*(run(orch_stub, s, within_s=600) for s in starts))
    conversations = {events[0].conversation for events in results}
    assert len(conversations) == SIMULATIONS
    for events in results:
        assert events[-1].done.reason == "max_turns", events[-1]
        assert [t.turn for t in ended(events)] == [1, 2]
        assert_consecutive(events, 0)
    replays = await asyncio.gather(*(watch(orch_stub, e[0].conversation) for e in results[:5]))
    assert replays == results[:5]
