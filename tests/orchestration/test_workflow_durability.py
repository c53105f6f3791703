"""Workflow runs survive `kill -9` of their orchestration process: the restarted process takes
the run over, a finished step is not run again, the interrupted one runs again as the same
attempt, a side-effecting call already made reaches its receiver once, and an approval asked
before the kill is still the one pending, answered after the restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from runs_test_support import new_id, watch
from workflow_test_support import agent, extras, plan, results, step, updates

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.mesh.processes import ServiceProcess
from callisto.mesh.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "durable-receiver-secret-0123456789"


async def _first(
    stream: callisto.orchestration.EventStream, wanted: Callable[[pb.ConversationEvent], bool]
) -> pb.ConversationEvent:
    async for event in stream:
        if wanted(event):
            return event
        assert event.WhichOneof("kind") not in ("done", "error"), event
    raise AssertionError("the run ended first")


async def _stored_outputs(
    persistence: ServiceProcess, api_key: str, conversation: str
) -> dict[str, int]:
    """How many output messages each step stored."""
    counts: dict[str, int] = {}
    async with await callisto.Client.connect(persistence.address, api_key=api_key) as client:
        async for message in client.persistence.list_messages(conversation):
            fields = message.metadata.fields
            if "step" in fields:
                name = fields["step"].string_value
                counts[name] = counts.get(name, 0) + 1
    return counts


async def test_kill_9_mid_step_resumes_without_rerunning_a_finished_step(
    orchestration: ServiceProcess,
    persistence: ServiceProcess,
    api_key: str,
    restart_orchestration: Callable[[bool], None],
) -> None:
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
        a = await agent(client, "wf-kill")
        workflow = plan(
            step("quick", a, "Note the FAST facts"), step("long", a, depends_on=["quick"])
        )
        start = callisto.orchestration.workflow_start(plan=workflow)
        # Slow only once "long" runs: its prompt carries quick's output, "quick" has no delay.
        stream = client.orchestration.run(start, metadata=extras(delay_ms=150))
        token = await _first(
            stream, lambda e: e.WhichOneof("kind") == "token" and e.step_id == "long"
        )
        await stream.aclose()
    conversation = token.conversation
    restart_orchestration(True)
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
        stub = client.stub(pb_grpc.OrchestrationServiceStub)
        events = await watch(stub, conversation)
    done = events[-1].done
    assert done.reason == "completed", events[-1]
    by_step = results(done)
    assert by_step["quick"].attempts == 1 and by_step["long"].attempts == 1
    # The interrupted step ran again as the same attempt; the finished one did not run again.
    assert [(u.state, u.attempt) for u in updates(events, "long")].count(("running", 1)) == 2
    assert [u.state for u in updates(events, "quick")] == ["running", "succeeded"]
    assert await _stored_outputs(persistence, api_key, conversation) == {"quick": 1, "long": 1}


async def test_kill_9_after_a_webhook_went_out_delivers_it_once(
    orchestration: ServiceProcess,
    api_key: str,
    restart_orchestration: Callable[[bool], None],
    tmp_path: Path,
) -> None:
    # The receiver acts on the request, then holds its answer: the kill lands in between.
    with WebhookReceiver(SECRET, tmp_path / "hooks.jsonl", hold_s=1.5) as receiver:
        async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
            hook = await client.orchestration.create_webhook(
                webhook_id=new_id("durable"),
                url=receiver.url,
                secret=SECRET,
                event_types=["run.done"],
            )
            a = await agent(client, "wf-hook", tools=["send_webhook"])
            workflow = plan(
                step("notify", a, "Tell the buyers the offer is accepted", tools=["send_webhook"])
            )
            stream = client.orchestration.run(callisto.orchestration.workflow_start(plan=workflow))
            first = await _first(stream, lambda e: True)
            await asyncio.to_thread(
                receiver.wait_for,
                lambda records: any(r["event"] == "workflow.action" for r in records),
            )
            await stream.aclose()
        restart_orchestration(True)
        async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
            events = await watch(client.stub(pb_grpc.OrchestrationServiceStub), first.conversation)
            assert events[-1].done.reason == "completed", events[-1]
            records = await asyncio.to_thread(
                receiver.wait_for, lambda rs: any(r["event"] == "run.done" for r in rs)
            )
            await client.orchestration.delete_webhook(hook.name)
    actions = [r for r in records if r["event"] == "workflow.action"]
    assert all(r["verified"] for r in records)
    # It went out again after the restart (the kill came before its answer), with the same
    # key: acted on once.
    assert len(actions) >= 2, actions
    assert len({r["idempotency_key"] for r in actions}) == 1
    assert [r["acted"] for r in actions].count(True) == 1
    assert [r for r in records if r["event"] == "run.done" and r["acted"]]


async def test_kill_9_during_an_approval_wait_keeps_it_pending_for_the_answer(
    orchestration: ServiceProcess,
    api_key: str,
    restart_orchestration: Callable[[bool], None],
) -> None:
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
        a = await agent(client, "wf-wait")
        workflow = plan(
            step("decide", a, "Recommend a supplier", requires_approval=True),
            step("after", a, depends_on=["decide"]),
        )
        stream = client.orchestration.run(callisto.orchestration.workflow_start(plan=workflow))
        awaiting = await _first(stream, lambda e: e.WhichOneof("kind") == "awaiting_input")
        await stream.aclose()
    restart_orchestration(True)
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as client:
        orchestration_client = client.orchestration
        pending = [
            p.name
            async for p in orchestration_client.list_approvals(conversation=awaiting.conversation)
        ]
        assert pending == [awaiting.awaiting_input.approval]
        await orchestration_client.answer_approval(
            pending[0], pb.APPROVAL_DECISION_APPROVE, reviewer="ops"
        )
        events = await watch(client.stub(pb_grpc.OrchestrationServiceStub), awaiting.conversation)
    done = events[-1].done
    assert done.reason == "completed", events[-1]
    asked = [e for e in events if e.WhichOneof("kind") == "awaiting_input"]
    assert len(asked) == 1, "the approval was asked once, not again after the restart"
    assert results(done)["after"].state == "succeeded"
