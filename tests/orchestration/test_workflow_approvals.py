"""Approvals of workflow steps on the live mesh: a step that requires approval pauses with its
output and reasoning; approve, reject and modify (over SubmitInput and Converse) decide what
the run does next; the audit history says who decided what and when; an approval that waits
too long is rejected or escalated after a warning; answering twice, late or from another
tenant is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from workflow_test_support import agent, first, plan, results, states, step

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.mesh.processes import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _until_awaiting(
    stream: AsyncIterator[pb.ConversationEvent], seen: list[pb.ConversationEvent]
) -> pb.ConversationEvent:
    async for event in stream:
        seen.append(event)
        if event.WhichOneof("kind") == "awaiting_input":
            return event
        assert event.WhichOneof("kind") not in ("done", "error"), event
    raise AssertionError("the run ended without awaiting input")


async def _rest(
    stream: AsyncIterator[pb.ConversationEvent], seen: list[pb.ConversationEvent]
) -> pb.Done:
    async for event in stream:
        seen.append(event)
    assert seen[-1].WhichOneof("kind") == "done", seen[-1]
    return seen[-1].done


def _gated(a: str, **fields: object) -> pb.WorkflowPlan:
    return plan(
        step("draft", a, "Draft the supplier recommendation", requires_approval=True, **fields),
        step("notify", a, "Tell the buyers what was decided", depends_on=["draft"]),
    )


def _approval(awaiting: pb.ConversationEvent, decision: int, **fields: str) -> pb.Approval:
    return pb.Approval(
        approval_id=awaiting.awaiting_input.approval_id,
        decision=decision,  # type: ignore[arg-type]
        **fields,
    )


async def test_an_approved_step_resumes_the_run_and_its_audit_says_who_and_when(
    orch_client: callisto.Client,
) -> None:
    a = await agent(orch_client, "ap-ok")
    orchestration = orch_client.orchestration
    stream = orchestration.run(callisto.orchestration.workflow_start(plan=_gated(a)))
    seen: list[pb.ConversationEvent] = []
    awaiting = await _until_awaiting(stream, seen)
    asked = awaiting.awaiting_input
    assert awaiting.step_id == asked.step_id == "draft"
    assert asked.approval == f"approvals/{asked.approval_id}"
    assert asked.proposed_output and asked.reasoning
    assert not asked.HasField("deadline")
    assert states(seen, "draft") == ["running", "awaiting_approval"]
    assert "notify" not in {e.step_id for e in seen}
    conversation = awaiting.conversation
    pending = [p async for p in orchestration.list_approvals(conversation=conversation)]
    assert [p.name for p in pending] == [asked.approval]
    assert pending[0].state == pb.APPROVAL_STATE_PENDING
    event_id = await orchestration.submit_approval(
        conversation,
        _approval(awaiting, pb.APPROVAL_DECISION_APPROVE, comment="fine by me", reviewer="dana"),
    )
    done = await _rest(stream, seen)
    assert done.reason == "completed", done
    decided = first(seen, "approval_decided")
    assert decided.event_id == event_id and decided.step_id == "draft"
    assert decided.approval_decided.reviewer == "dana"
    assert decided.approval_decided.decision == pb.APPROVAL_DECISION_APPROVE
    assert results(done)["draft"].output == asked.proposed_output
    assert states(seen, "notify")[-1] == "succeeded"
    record = await orchestration.get_approval(asked.approval_id)
    assert record.state == pb.APPROVAL_STATE_APPROVED
    assert [(h.action, h.actor) for h in record.history] == [
        ("requested", results(done)["draft"].agent),
        ("approved", "dana"),
    ]
    assert record.history[1].comment == "fine by me" and record.history[1].HasField("time")
    assert [p async for p in orchestration.list_approvals(conversation=conversation)] == []
    # Answering it again is refused, and changes nothing.
    with pytest.raises(callisto.errors.FailedPrecondition):
        await orchestration.submit_approval(
            conversation, _approval(awaiting, pb.APPROVAL_DECISION_REJECT)
        )
    assert (await orchestration.get_approval(asked.approval)).state == pb.APPROVAL_STATE_APPROVED


async def test_a_modified_output_replaces_the_step_s_and_dependents_see_it(
    orch_client: callisto.Client,
) -> None:
    a = await agent(orch_client, "ap-mod")
    orchestration = orch_client.orchestration
    start = callisto.orchestration.workflow_start(plan=_gated(a))
    session = orchestration.converse(start=start)
    seen: list[pb.ConversationEvent] = []
    async with session:
        events = session.events()
        awaiting = await _until_awaiting(events, seen)
        # Over the Converse stream itself.
        await session.approve(
            awaiting.awaiting_input.approval_id,
            pb.APPROVAL_DECISION_MODIFY,
            modified_output="Choose Northwind, at 3% less than offered.",
            reviewer="lee",
        )
        done = await _rest(events, seen)
    assert done.reason == "completed", done
    assert results(done)["draft"].output == "Choose Northwind, at 3% less than offered."
    record = await orchestration.get_approval(awaiting.awaiting_input.approval_id)
    assert record.state == pb.APPROVAL_STATE_MODIFIED
    assert record.final_output == "Choose Northwind, at 3% less than offered."
    modified = record.history[-1]
    assert modified.action == "modified" and modified.actor == "lee"
    assert modified.original_output == awaiting.awaiting_input.proposed_output
    assert modified.modified_output == "Choose Northwind, at 3% less than offered."


async def test_a_rejected_step_fails_and_the_run_follows_on_failure(
    orch_client: callisto.Client,
) -> None:
    a = await agent(orch_client, "ap-rej")
    orchestration = orch_client.orchestration
    for policy, reason, after in (
        (pb.STEP_FAILURE_POLICY_UNSPECIFIED, "failed", "cancelled"),
        (pb.STEP_FAILURE_POLICY_CONTINUE, "completed", "skipped"),
    ):
        stream = orchestration.run(
            callisto.orchestration.workflow_start(plan=_gated(a, on_failure=policy))
        )
        seen: list[pb.ConversationEvent] = []
        awaiting = await _until_awaiting(stream, seen)
        await orchestration.submit_approval(
            awaiting.conversation,
            _approval(awaiting, pb.APPROVAL_DECISION_REJECT, comment="too expensive"),
        )
        done = await _rest(stream, seen)
        assert done.reason == reason, done
        draft = results(done)["draft"]
        assert draft.state == "failed" and "too expensive" in draft.error
        assert results(done)["notify"].state == after


async def test_an_unanswered_approval_is_warned_then_rejected_at_its_deadline(
    orch_client: callisto.Client,
) -> None:
    a = await agent(orch_client, "ap-late")
    orchestration = orch_client.orchestration
    stream = orchestration.run(
        callisto.orchestration.workflow_start(plan=_gated(a, approval_timeout=1.5))
    )
    seen: list[pb.ConversationEvent] = []
    awaiting = await _until_awaiting(stream, seen)
    assert awaiting.awaiting_input.HasField("deadline")
    done = await _rest(stream, seen)
    assert done.reason == "failed", done
    kinds = [e.WhichOneof("kind") for e in seen]
    assert kinds.index("warning") < kinds.index("approval_decided")
    warning = first(seen, "warning").warning
    assert warning.code == "approval.expiring"
    assert warning.approval == awaiting.awaiting_input.approval
    decided = first(seen, "approval_decided").approval_decided
    assert decided.reviewer == "system" and decided.decision == pb.APPROVAL_DECISION_REJECT
    record = await orchestration.get_approval(awaiting.awaiting_input.approval_id)
    assert [h.action for h in record.history] == ["requested", "warned", "expired"]
    with pytest.raises(callisto.errors.FailedPrecondition):
        await orchestration.submit_approval(
            awaiting.conversation, _approval(awaiting, pb.APPROVAL_DECISION_APPROVE)
        )


async def test_an_escalated_approval_asks_again_and_can_then_be_approved(
    orch_client: callisto.Client,
) -> None:
    a = await agent(orch_client, "ap-esc")
    orchestration = orch_client.orchestration
    gated = _gated(
        a,
        approval_timeout=1.0,
        approval_timeout_action=pb.APPROVAL_TIMEOUT_ACTION_ESCALATE,
        escalate_to="finance-leads",
    )
    stream = orchestration.run(callisto.orchestration.workflow_start(plan=gated))
    seen: list[pb.ConversationEvent] = []
    first_ask = await _until_awaiting(stream, seen)
    assert not first_ask.awaiting_input.escalated
    second_ask = await _until_awaiting(stream, seen)
    assert second_ask.awaiting_input.escalated
    assert second_ask.awaiting_input.escalate_to == "finance-leads"
    assert second_ask.awaiting_input.approval_id == first_ask.awaiting_input.approval_id
    assert (
        second_ask.awaiting_input.deadline.ToNanoseconds()
        > first_ask.awaiting_input.deadline.ToNanoseconds()
    )
    await orchestration.answer_approval(
        second_ask.awaiting_input.approval, pb.APPROVAL_DECISION_APPROVE, reviewer="cfo"
    )
    done = await _rest(stream, seen)
    assert done.reason == "completed", done
    record = await orchestration.get_approval(second_ask.awaiting_input.approval)
    actions = [h.action for h in record.history]
    assert actions[0] == "requested" and actions[-2:] == ["escalated", "approved"]
    assert record.escalated and record.history[-1].actor == "cfo"


async def test_another_tenant_s_approvals_are_not_found(
    orch_client: callisto.Client,
    orchestration: ServiceProcess,
    tenant_key: Callable[[str], str],
) -> None:
    a = await agent(orch_client, "ap-iso")
    mine = orch_client.orchestration
    stream = mine.run(callisto.orchestration.workflow_start(plan=_gated(a)))
    seen: list[pb.ConversationEvent] = []
    awaiting = await _until_awaiting(stream, seen)
    approval = awaiting.awaiting_input.approval_id
    async with await callisto.Client.connect(
        orchestration.address, api_key=tenant_key("globex")
    ) as other:
        with pytest.raises(callisto.errors.NotFound):
            await other.orchestration.get_approval(approval)
        with pytest.raises(callisto.errors.NotFound):
            await other.orchestration.submit_approval(
                awaiting.conversation, _approval(awaiting, pb.APPROVAL_DECISION_APPROVE)
            )
        theirs = [p.name async for p in other.orchestration.list_approvals()]
        assert f"approvals/{approval}" not in theirs
    # Still pending for its own tenant, and answerable only with its own conversation.
    assert (await mine.get_approval(approval)).state == pb.APPROVAL_STATE_PENDING
    elsewhere = await mine.run(
        callisto.orchestration.assistant_start(await agent(orch_client, "ap-x"), "hello")
    ).complete()
    with pytest.raises(callisto.errors.NotFound):
        await mine.submit_approval(
            elsewhere.conversation, _approval(awaiting, pb.APPROVAL_DECISION_APPROVE)
        )
    await mine.cancel(awaiting.conversation, "done testing")
    await _rest(stream, seen)
    assert (await mine.get_approval(approval)).state == pb.APPROVAL_STATE_CANCELLED


async def test_bad_approvals_are_refused_at_their_fields(orch_client: callisto.Client) -> None:
    orchestration = orch_client.orchestration
    a = await agent(orch_client, "ap-bad")
    stream = orchestration.run(callisto.orchestration.workflow_start(plan=_gated(a)))
    seen: list[pb.ConversationEvent] = []
    awaiting = await _until_awaiting(stream, seen)
    conversation = awaiting.conversation
    for approval, field in (
        (pb.Approval(approval_id="nope", decision=pb.APPROVAL_DECISION_APPROVE), "approval_id"),
        (_approval(awaiting, pb.APPROVAL_DECISION_UNSPECIFIED), "decision"),
        (_approval(awaiting, pb.APPROVAL_DECISION_MODIFY), "modified_output"),
        (_approval(awaiting, pb.APPROVAL_DECISION_APPROVE, modified_output="x"), "modified_output"),
        (_approval(awaiting, pb.APPROVAL_DECISION_APPROVE, comment="c" * 2001), "comment"),
    ):
        with pytest.raises(callisto.errors.InvalidArgument) as refused:
            await orchestration.submit_approval(conversation, approval)
        assert f"approval.{field}" in refused.value.field_violations, refused.value
    with pytest.raises(callisto.errors.NotFound):
        await orchestration.get_approval("ap-" + "0" * 24)
    with pytest.raises(callisto.errors.InvalidArgument):
        await orchestration.get_approval("approvals/../../etc")
    await orchestration.cancel(conversation)
    await asyncio.wait_for(_rest(stream, seen), 30)
