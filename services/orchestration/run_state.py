"""A run's checkpoint: a typed state written as a persistence session with etag
compare-and-set after every step, so whoever takes the run over resumes from the last step."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from google.protobuf import json_format, struct_pb2

from callisto.api.persistence.v1 import persistence_pb2
from callisto.errors import Aborted, NotFound
from callisto.persistence import PersistenceClient
from callisto.services.orchestration.budget import Spend

SESSION_KIND = "orchestration.run"

RUNNING = "running"
# Done reasons that end a run (also the `done.reason` of its terminal event).
COMPLETED, CANCELLED, BUDGET, FAILED = "completed", "cancelled", "budget", "failed"


@dataclass
class PendingTurn:
    """A human turn waiting for its answer."""

    text: str
    author: str
    # Sequence of the `message.created` event of its stored message; 0 until it is stored.
    event_id: int = 0
    # The stored message's name.
    message: str = ""
    # Request id that stores its message exactly once.
    request_id: str = ""


@dataclass
class RunState:
    """Everything a run needs to go on from its last step."""

    run_id: str
    tenant: str
    # `conversations/{conversation}`.
    conversation: str
    mode: int
    # `agents/{agent}@{revision}` the run uses.
    agent: str
    # Participant ids of the agent and of the human.
    speaker: str
    human: str
    max_iterations: int
    max_total_tokens: int
    status: str = RUNNING
    pending: list[PendingTurn] = field(default_factory=list)
    # Turns answered so far.
    turns: int = 0
    # Event id of the `turn_started` of the turn in progress (0 between turns).
    turn_started_event: int = 0
    # Log sequence just before the run began: watchers of the run start after it.
    start_after: int = 0
    # Event id of the terminal event, once written.
    done_event_id: int = 0
    spend: Spend = field(default_factory=Spend)
    # Process holding the run and how many times it changed hands.
    owner: str = ""
    epoch: int = 0
    # A cancel asked of a run whose owner could not be reached.
    cancel_reason: str = ""
    cancel_requested: bool = False
    # Extras passed to generation for every model call (the test mesh's toy-model knobs).
    model_extras: str = ""
    # A simulation's set-up and progress (simulation_state.Simulation as JSON); {} otherwise.
    simulation: dict[str, Any] = field(default_factory=dict)
    # A workflow's plan and progress (workflow_state.Workflow as JSON); {} otherwise.
    workflow: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status != RUNNING

    def to_struct(self) -> struct_pb2.Struct:
        data: dict[str, Any] = asdict(self)
        data["spend"] = self.spend.to_json()
        state = struct_pb2.Struct()
        state.update(data)
        return state

    @classmethod
    def from_struct(cls, state: struct_pb2.Struct) -> RunState:
        data = json_format.MessageToDict(state)
        pending = [PendingTurn(**_pending(p)) for p in data.pop("pending", [])]
        spend = Spend.from_json(data.pop("spend", {}))
        counts = ("mode", "max_iterations", "max_total_tokens", "turns", "epoch")
        for name in (*counts, "turn_started_event", "start_after", "done_event_id"):
            data[name] = int(data.get(name, 0))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known}, pending=pending, spend=spend)


def _pending(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "text": str(data.get("text", "")),
        "author": str(data.get("author", "")),
        "event_id": int(data.get("event_id", 0)),
        "message": str(data.get("message", "")),
        "request_id": str(data.get("request_id", "")),
    }


def session_id(conversation: str) -> str:
    """The session holding the run of a conversation (conversation ids may be as long as
    session ids, so a digest names it)."""
    return "run-" + hashlib.sha256(conversation.encode()).hexdigest()[:40]


class Checkpoint:
    """A run's state with the etag of its stored version."""

    def __init__(self, state: RunState, etag: str) -> None:
        self.state = state
        self.etag = etag


class RunStore:
    """Reads and writes run states through persistence, for the tenant bound to the context."""

    def __init__(self, persistence: PersistenceClient) -> None:
        self._persistence = persistence

    async def load(self, conversation: str) -> Checkpoint | None:
        try:
            session = await self._persistence.get_session(session_id(conversation))
        except NotFound:
            return None
        return Checkpoint(RunState.from_struct(session.state), session.etag)

    async def claim(self, state: RunState, previous: Checkpoint | None) -> Checkpoint:
        """Writes a new run over the conversation's finished one (or none); Aborted when
        another run got there first."""
        if previous is None:
            session = await self._persistence.create_session(
                persistence_pb2.Session(kind=SESSION_KIND, state=state.to_struct()),
                session_id=session_id(state.conversation),
            )
        else:
            session = await self._save(state, previous.etag, retry=False)
        return Checkpoint(state, session.etag)

    async def save(self, checkpoint: Checkpoint) -> None:
        """Writes the state over exactly the version it was read as (Aborted otherwise).
        Retried while persistence is briefly unavailable: a compare-and-set never applies
        twice, and a retry after a lost reply is Aborted, which the run's save resolves by
        reloading its own state."""
        session = await self._save(checkpoint.state, checkpoint.etag, retry=True)
        checkpoint.etag = session.etag

    async def _save(self, state: RunState, etag: str, *, retry: bool) -> persistence_pb2.Session:
        return await self._persistence.update_session(
            persistence_pb2.Session(
                name=f"sessions/{session_id(state.conversation)}",
                kind=SESSION_KIND,
                state=state.to_struct(),
                etag=etag,
            ),
            ["state"],
            retry=retry,
        )


__all__ = [
    "BUDGET",
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "RUNNING",
    "Aborted",
    "Checkpoint",
    "PendingTurn",
    "RunState",
    "RunStore",
    "session_id",
]
