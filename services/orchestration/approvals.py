"""Approvals of workflow steps, stored through persistence as sessions of the tenant bound to
the context (so another tenant's approval is simply NOT_FOUND).

One session per approval, `approval-{id}`: the `StepApproval` with its audit history plus what
the run needs (its id, when to warn, how long an escalation waits). Pending approvals are of
kind `orchestration.approval.pending`, so ListApprovals reads only those; a decision moves the
session to `orchestration.approval.decided`. Every change is a compare-and-set on the
session's etag: a reviewer and the run's own expiry can race, and exactly one of them wins.
Kept forever (an explicit zero ttl): the audit history outlives the run.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from callisto import errors as sdk
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2
from callisto.persistence import PersistenceClient
from callisto.services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from callisto.services.common.pagination import page_tokens
from callisto.services.common.validation import Violations, check_page_size
from callisto.services.orchestration.relay import relayed

PENDING_KIND = "orchestration.approval.pending"
DECIDED_KIND = "orchestration.approval.decided"
SYSTEM = "system"
KEEP_FOREVER = duration_pb2.Duration()
# Tries of a compare-and-set that keeps meeting another writer.
CAS_ATTEMPTS = 8
_ACTIONS = {
    pb.APPROVAL_DECISION_APPROVE: ("approved", pb.APPROVAL_STATE_APPROVED),
    pb.APPROVAL_DECISION_REJECT: ("rejected", pb.APPROVAL_STATE_REJECTED),
    pb.APPROVAL_DECISION_MODIFY: ("modified", pb.APPROVAL_STATE_MODIFIED),
}
DECIDED_STATES = frozenset(
    {
        pb.APPROVAL_STATE_APPROVED,
        pb.APPROVAL_STATE_REJECTED,
        pb.APPROVAL_STATE_MODIFIED,
        pb.APPROVAL_STATE_CANCELLED,
    }
)


def approval_id(run_id: str, step_id: str, attempt: int) -> str:
    """The approval of a step's attempt: the same after a takeover, so it is asked once."""
    digest = hashlib.sha256(f"{run_id}/{step_id}/{attempt}".encode()).hexdigest()
    return f"ap-{digest[:24]}"


def bare_id(name: str) -> str:
    """`ap-…` from `approvals/ap-…` or the bare id."""
    return name.removeprefix("approvals/")


def _session_id(approval: str) -> str:
    return f"approval-{approval}"


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


@dataclass
class Record:
    """An approval as stored, with what the run keeps beside it."""

    approval: pb.StepApproval
    run_id: str
    # Seconds of each wait (the first, and one after an escalation); 0 waits forever.
    timeout_s: float
    # Wall-clock seconds of the current deadline (0: none) and of its warning.
    deadline: float
    warn_at: float
    warned: bool
    etag: str = ""

    @property
    def pending(self) -> bool:
        return self.approval.state == pb.APPROVAL_STATE_PENDING

    @property
    def id(self) -> str:
        return bare_id(self.approval.name)

    def to_struct(self) -> struct_pb2.Struct:
        state = struct_pb2.Struct()
        state.update(
            {
                "approval": json_format.MessageToDict(
                    self.approval, preserving_proto_field_name=True
                ),
                "run_id": self.run_id,
                "timeout_s": self.timeout_s,
                "deadline": self.deadline,
                "warn_at": self.warn_at,
                "warned": self.warned,
            }
        )
        return state

    @classmethod
    def from_session(cls, session: persistence_pb2.Session) -> Record:
        data = json_format.MessageToDict(session.state)
        approval = pb.StepApproval()
        json_format.ParseDict(data.get("approval", {}), approval, ignore_unknown_fields=True)
        return cls(
            approval=approval,
            run_id=str(data.get("run_id", "")),
            timeout_s=float(data.get("timeout_s", 0.0)),
            deadline=float(data.get("deadline", 0.0)),
            warn_at=float(data.get("warn_at", 0.0)),
            warned=bool(data.get("warned", False)),
            etag=session.etag,
        )

    def audit(self, action: str, actor: str, comment: str = "", modified: str = "") -> None:
        self.approval.history.append(
            pb.ApprovalAuditEntry(
                action=action,
                actor=actor,
                time=_stamp(time.time()),
                comment=comment,
                original_output=self.approval.proposed_output,
                modified_output=modified,
            )
        )


@dataclass(frozen=True)
class Request:
    """What a step asks approval of."""

    approval_id: str
    conversation: str
    run_id: str
    step_id: str
    agent: str
    output: str
    reasoning: str
    timeout_s: float
    action: pb.ApprovalTimeoutAction.ValueType
    escalate_to: str
    # Share of the wait left when the warning goes out.
    warning_fraction: float


class ApprovalStore:
    """The tenant's approvals."""

    def __init__(self, persistence: PersistenceClient) -> None:
        self._persistence = persistence

    async def request(self, request: Request) -> Record:
        """Stores the approval as pending (once: a takeover asking again gets the first)."""
        now = time.time()
        timeout = max(0.0, request.timeout_s)
        approval = pb.StepApproval(
            name=f"approvals/{request.approval_id}",
            conversation=request.conversation,
            step_id=request.step_id,
            agent=request.agent,
            proposed_output=request.output,
            reasoning=request.reasoning,
            state=pb.APPROVAL_STATE_PENDING,
            create_time=_stamp(now),
            escalate_to=request.escalate_to,
            timeout_action=request.action or pb.APPROVAL_TIMEOUT_ACTION_REJECT,
        )
        record = Record(approval, request.run_id, timeout, 0.0, 0.0, False)
        if timeout:
            record.deadline = now + timeout
            record.warn_at = record.deadline - timeout * request.warning_fraction
            approval.deadline.CopyFrom(_stamp(record.deadline))
        record.audit("requested", request.agent)
        try:
            session = await self._persistence.create_session(
                persistence_pb2.Session(
                    kind=PENDING_KIND, state=record.to_struct(), ttl=KEEP_FOREVER
                ),
                session_id=_session_id(request.approval_id),
            )
        except sdk.AlreadyExists:
            return await self.get(request.approval_id)
        except sdk.CallistoError as error:
            raise relayed(error) from None
        record.etag = session.etag
        return record

    async def get(self, approval: str) -> Record:
        """The approval; NOT_FOUND for an unknown one (or another tenant's)."""
        try:
            session = await self._persistence.get_session(_session_id(bare_id(approval)))
        except sdk.NotFound:
            raise NotFound(f"approvals/{bare_id(approval)} not found") from None
        except sdk.CallistoError as error:
            raise relayed(error) from None
        if session.kind not in (PENDING_KIND, DECIDED_KIND):
            raise NotFound(f"approvals/{bare_id(approval)} not found")
        return Record.from_session(session)

    async def decide(self, conversation: str, answer: pb.Approval) -> Record:
        """A reviewer's decision. NOT_FOUND when the approval is not of `conversation`;
        FAILED_PRECONDITION when it was answered already or its wait expired."""
        action, state = _ACTIONS[answer.decision]
        reviewer = answer.reviewer or "unnamed reviewer"
        modified = answer.modified_output if answer.decision == pb.APPROVAL_DECISION_MODIFY else ""

        def apply(record: Record) -> bool:
            if record.approval.conversation != conversation:
                raise NotFound(f"{record.approval.name} is not an approval of {conversation}")
            if not record.pending:
                raise FailedPrecondition(
                    f"{record.approval.name} was already answered "
                    f"({pb.ApprovalState.Name(record.approval.state).lower()})"
                )
            if record.deadline and time.time() >= record.deadline:
                raise FailedPrecondition(f"{record.approval.name} expired: its wait is over")
            record.approval.state = state
            record.approval.final_output = modified or record.approval.proposed_output
            record.audit(action, reviewer, answer.comment, modified)
            return True

        record, _ = await self._change(answer.approval_id, apply)
        return record

    async def warn(self, approval: str) -> Record | None:
        """Marks the approval warned; None when it was decided meanwhile (or warned)."""

        def apply(record: Record) -> bool:
            if not record.pending or record.warned:
                return False
            record.warned = True
            record.audit("warned", SYSTEM, "the wait ends soon")
            return True

        record, changed = await self._change(approval, apply)
        return record if changed else None

    async def expire(self, approval: str) -> Record:
        """The wait expired: escalated once when configured (a new wait begins), else
        rejected by the system. A decision that got there first is returned as it is."""

        def apply(record: Record) -> bool:
            if not record.pending or not record.deadline or time.time() < record.deadline:
                return False
            approval = record.approval
            escalate = approval.timeout_action == pb.APPROVAL_TIMEOUT_ACTION_ESCALATE
            if escalate and not approval.escalated:
                approval.escalated = True
                lead = record.deadline - record.warn_at
                record.deadline = time.time() + record.timeout_s
                record.warn_at = record.deadline - lead
                record.warned = False
                approval.deadline.CopyFrom(_stamp(record.deadline))
                whom = approval.escalate_to or "the escalation reviewers"
                record.audit("escalated", SYSTEM, f"no decision in time; escalated to {whom}")
                return True
            approval.state = pb.APPROVAL_STATE_REJECTED
            record.audit("expired", SYSTEM, "no decision in time: rejected")
            return True

        record, _ = await self._change(approval, apply)
        return record

    async def cancel(self, approval: str, reason: str) -> None:
        """The run ended before a decision."""

        def apply(record: Record) -> bool:
            if not record.pending:
                return False
            record.approval.state = pb.APPROVAL_STATE_CANCELLED
            record.audit("cancelled", SYSTEM, reason)
            return True

        await self._change(approval, apply)

    async def list_pending(
        self, page_size: int, page_token: str, conversation: str
    ) -> tuple[list[pb.StepApproval], str]:
        """One page of the tenant's pending approvals, newest first (of one conversation when
        `conversation` is set), and the next page's token."""
        v = Violations()
        page_size = check_page_size(v, page_size, default=50, maximum=100)
        v.raise_if_any()
        query = {"list": "approvals", "conversation": conversation}
        cursor = await page_tokens.decode(page_token, query)
        inner = cursor.get("p") if cursor is not None else ""
        if not isinstance(inner, str):
            raise InvalidArgument.field("page_token", "is not a token this service issued")
        found: list[pb.StepApproval] = []
        # A conversation filter reads further pages until the page is full or none is left.
        while True:
            try:
                page = await self._persistence.list_sessions_page(
                    kind=PENDING_KIND, page_size=page_size, page_token=inner
                )
            except sdk.CallistoError as error:
                raise relayed(error) from None
            for session in page.sessions:
                record = Record.from_session(session)
                if record.pending and conversation in ("", record.approval.conversation):
                    found.append(record.approval)
            inner = page.next_page_token
            if not inner or len(found) >= page_size or not conversation:
                break
        token = await page_tokens.encode({"p": inner}, query) if inner else ""
        return found, token

    async def _change(self, approval: str, apply: Callable[[Record], bool]) -> tuple[Record, bool]:
        """The approval after `apply` changed it (compare-and-set, re-read on a lost race),
        and whether it did."""
        for _ in range(CAS_ATTEMPTS):
            record = await self.get(approval)
            if not apply(record):
                return record, False
            kind = PENDING_KIND if record.pending else DECIDED_KIND
            try:
                session = await self._persistence.update_session(
                    persistence_pb2.Session(
                        name=f"sessions/{_session_id(record.id)}",
                        kind=kind,
                        state=record.to_struct(),
                        etag=record.etag,
                    ),
                    ["kind", "state"],
                    retry=True,
                )
            except sdk.Aborted:
                continue
            except sdk.CallistoError as error:
                raise relayed(error) from None
            record.etag = session.etag
            return record, True
        raise Unavailable("the approval kept changing; retry", retry_after=0.2)
