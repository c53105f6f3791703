"""Runs survive their orchestration process: after `kill -9` mid-turn (or a graceful stop) the
restarted process takes the run over from its checkpoint, announces the interrupted turn with
`turn_started(restarted=true)`, answers it once, and ends with `done`; nothing delivered before
is contradicted and the log has no gap."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from runs_test_support import (
    assert_consecutive,
    create_agent,
    kind,
    read_until,
    slow,
    start,
    wait_for_kind,
    watch,
)

import callisto
from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.mesh.processes import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _interrupted_run(
    orchestration: ServiceProcess,
    api_key: str,
    persistence: ServiceProcess,
    restart: Callable[[bool], None],
    kill: bool,
) -> None:
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
        agent = await create_agent(client, "durable")
        stub = client.stub(pb_grpc.OrchestrationServiceStub)
        call = stub.Converse(metadata=slow(60))
        await call.write(pb.ConverseRequest(start=start(agent, "survive a restart please")))
        before = await wait_for_kind(call, "token")
        call.cancel()
    conversation = before[0].conversation
    restart(kill)
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
        stub = client.stub(pb_grpc.OrchestrationServiceStub)
        after = await watch(stub, conversation, before[-1].event_id)
        whole = await watch(stub, conversation)
    assert kind(after[-1]) == "done" and after[-1].done.reason == "completed"
    assert after[-1].done.turns == 1
    restarted = [e.turn_started for e in after if kind(e) == "turn_started"]
    assert restarted and restarted[0].restarted and restarted[0].turn == 1
    assert restarted[0].agent == before[0].turn_started.agent
    # Exactly one answer was stored, and the log from the start is gap-free and agrees with
    # what was delivered before the restart.
    assert_consecutive(whole, 0)
    assert whole[1 : 1 + len(before)] == before
    async with await callisto.Client.connect(persistence.address, api_key=api_key) as client:
        messages = [m async for m in client.persistence.list_messages(conversation)]
    assert [m.role for m in messages] == [common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT]


async def test_kill_9_mid_turn_resumes_with_a_restarted_turn_and_done(
    orchestration: ServiceProcess,
    api_key: str,
    persistence: ServiceProcess,
    restart_orchestration: Callable[[bool], None],
) -> None:
    await _interrupted_run(orchestration, api_key, persistence, restart_orchestration, kill=True)


async def test_a_graceful_stop_mid_turn_hands_the_run_to_the_next_process(
    orchestration: ServiceProcess,
    api_key: str,
    persistence: ServiceProcess,
    restart_orchestration: Callable[[bool], None],
) -> None:
    await _interrupted_run(orchestration, api_key, persistence, restart_orchestration, kill=False)


async def test_a_run_finished_before_a_restart_stays_finished(
    orchestration: ServiceProcess,
    api_key: str,
    restart_orchestration: Callable[[bool], None],
) -> None:
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
        agent = await create_agent(client, "finished")
        stub = client.stub(pb_grpc.OrchestrationServiceStub)
        events = await read_until(
            stub.RunConversation(pb.RunConversationRequest(start=start(agent, "done already")))
        )
    restart_orchestration(True)
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
        stub = client.stub(pb_grpc.OrchestrationServiceStub)
        again = await watch(stub, events[0].conversation, events[0].event_id - 1)
        # Watching after its end returns at once, with nothing.
        assert await watch(stub, events[0].conversation, events[-1].event_id) == []
    assert again == events
