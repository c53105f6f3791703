"""What a simulation run keeps in its checkpoint (`RunState.simulation`): who takes part, the
scenario, when it stops, and where the conversation is (who speaks next, the human turn it
waits for), as JSON that survives the checkpoint's round trip through a protobuf Struct."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.services.orchestration import termination

DEFAULT_MAX_TURNS = 10
DEFAULT_HUMAN_ID = "user"


@dataclass
class Speaker:
    """An agent taking part."""

    # Participant id in the conversation.
    participant: str
    # `agents/{agent}@{revision}`; "" for an inline agent.
    agent: str
    spec: pb.Agent

    def to_json(self) -> dict[str, Any]:
        return {
            "participant": self.participant,
            "agent": self.agent,
            "spec": json_format.MessageToDict(self.spec, preserving_proto_field_name=True),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Speaker:
        spec = pb.Agent()
        json_format.ParseDict(dict(data.get("spec", {})), spec, ignore_unknown_fields=True)
        return cls(str(data.get("participant", "")), str(data.get("agent", "")), spec)

    @property
    def name(self) -> str:
        return self.spec.display_name or self.participant

    def label(self) -> str:
        """ "Name (Company)", or the name alone."""
        return f"{self.name} ({self.spec.company})" if self.spec.company else self.name


@dataclass
class Human:
    """The human taking part."""

    id: str
    display_name: str = ""
    role: str = ""
    company: str = ""

    @property
    def name(self) -> str:
        return self.display_name or self.id

    def label(self) -> str:
        return f"{self.name} ({self.company})" if self.company else self.name


@dataclass
class Limits:
    """The termination policy, defaults applied."""

    max_turns: int = DEFAULT_MAX_TURNS
    stop_keywords: list[str] = field(default_factory=list)
    min_sentiment: float | None = None
    max_sentiment: float | None = None
    timeout_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"max_turns": self.max_turns, "stop_keywords": self.stop_keywords}
        if self.min_sentiment is not None:
            data["min_sentiment"] = self.min_sentiment
        if self.max_sentiment is not None:
            data["max_sentiment"] = self.max_sentiment
        if self.timeout_s is not None:
            data["timeout_s"] = self.timeout_s
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Limits:
        def optional(name: str) -> float | None:
            value = data.get(name)
            return None if value is None else float(value)

        return cls(
            max_turns=int(data.get("max_turns", DEFAULT_MAX_TURNS)),
            stop_keywords=[str(k) for k in data.get("stop_keywords", [])],
            min_sentiment=optional("min_sentiment"),
            max_sentiment=optional("max_sentiment"),
            timeout_s=optional("timeout_s"),
        )

    @classmethod
    def from_proto(cls, policy: pb.TerminationPolicy) -> Limits:
        timeout = policy.timeout.ToTimedelta().total_seconds() if policy.HasField("timeout") else 0
        return cls(
            max_turns=policy.max_turns or DEFAULT_MAX_TURNS,
            stop_keywords=list(policy.stop_keywords),
            min_sentiment=policy.min_sentiment if policy.HasField("min_sentiment") else None,
            max_sentiment=policy.max_sentiment if policy.HasField("max_sentiment") else None,
            timeout_s=timeout if timeout > 0 else None,
        )


@dataclass
class Simulation:
    """A simulation's set-up and where it stands."""

    scenario: str
    agents: list[Speaker]
    human: Human | None
    limits: Limits
    # The model picks the next agent (SPEAKER_SELECTION_MODEL); round robin otherwise.
    model_selects: bool = False
    human_timeout_s: float = 300.0
    # A human timeout ends the run (HUMAN_TIMEOUT_ACTION_END); skipping the turn otherwise.
    end_on_human_timeout: bool = False
    max_turn_tokens: int = 160
    # Wall-clock time (epoch seconds) the run began: its `timeout` counts from it.
    started_at: float = 0.0
    # --- where it stands ---
    agent_turns: int = 0
    # Index in `agents` of the agent who speaks next.
    next_agent: int = 0
    # Agent turns since the human last had a turn (the human speaks every round).
    since_human: int = 0
    # The human turn asked for (its number; 0 when none), its deadline (epoch seconds) and the
    # event id of its `awaiting_input`.
    awaiting_turn: int = 0
    awaiting_deadline: float = 0.0
    awaiting_event: int = 0
    # Event id before the human's turn began: its message is looked for after it.
    turn_from: int = 0
    # RFC 3339 time the turn in progress started.
    turn_started_time: str = ""
    # The human asked to end the conversation.
    end_requested: bool = False

    def human_is_next(self) -> bool:
        return self.human is not None and self.since_human >= len(self.agents)

    def next_speaker(self) -> str:
        if self.human is not None and (self.awaiting_turn or self.human_is_next()):
            return self.human.id
        return self.agents[self.next_agent].participant

    def speaker(self, participant: str) -> Speaker | None:
        for speaker in self.agents:
            if speaker.participant == participant:
                return speaker
        return None

    def label_of(self, participant: str) -> str:
        if self.human is not None and participant == self.human.id:
            return self.human.label()
        speaker = self.speaker(participant)
        return speaker.label() if speaker is not None else participant

    def name_of(self, participant: str) -> str:
        if self.human is not None and participant == self.human.id:
            return self.human.name
        speaker = self.speaker(participant)
        return speaker.name if speaker is not None else participant

    def advance_after(self, participant: str) -> None:
        """Moves the order on past a completed (or skipped) turn of `participant`, round
        robin; a model's choice of the next agent is set on top by the run."""
        if self.human is not None and participant == self.human.id:
            self.since_human = 0
            self.awaiting_turn = 0
            return
        self.agent_turns += 1
        self.since_human += 1
        index = next(
            (i for i, s in enumerate(self.agents) if s.participant == participant),
            self.next_agent,
        )
        self.next_agent = (index + 1) % len(self.agents)

    def termination(self, max_total_tokens: int) -> termination.AnyOf:
        return termination.policy(
            max_turns=self.limits.max_turns,
            stop_keywords=self.limits.stop_keywords,
            min_sentiment=self.limits.min_sentiment,
            max_sentiment=self.limits.max_sentiment,
            timeout_s=self.limits.timeout_s,
            max_total_tokens=max_total_tokens,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "agents": [s.to_json() for s in self.agents],
            "human": None if self.human is None else vars(self.human).copy(),
            "limits": self.limits.to_json(),
            "model_selects": self.model_selects,
            "human_timeout_s": self.human_timeout_s,
            "end_on_human_timeout": self.end_on_human_timeout,
            "max_turn_tokens": self.max_turn_tokens,
            "started_at": self.started_at,
            "agent_turns": self.agent_turns,
            "next_agent": self.next_agent,
            "since_human": self.since_human,
            "awaiting_turn": self.awaiting_turn,
            "awaiting_deadline": self.awaiting_deadline,
            "awaiting_event": self.awaiting_event,
            "turn_from": self.turn_from,
            "turn_started_time": self.turn_started_time,
            "end_requested": self.end_requested,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Simulation:
        human = data.get("human")
        return cls(
            scenario=str(data.get("scenario", "")),
            agents=[Speaker.from_json(dict(s)) for s in data.get("agents", [])],
            human=None if not human else Human(**{k: str(v) for k, v in dict(human).items()}),
            limits=Limits.from_json(dict(data.get("limits", {}))),
            model_selects=bool(data.get("model_selects", False)),
            human_timeout_s=float(data.get("human_timeout_s", 300.0)),
            end_on_human_timeout=bool(data.get("end_on_human_timeout", False)),
            max_turn_tokens=int(data.get("max_turn_tokens", 160)),
            started_at=float(data.get("started_at", 0.0)),
            agent_turns=int(data.get("agent_turns", 0)),
            next_agent=int(data.get("next_agent", 0)),
            since_human=int(data.get("since_human", 0)),
            awaiting_turn=int(data.get("awaiting_turn", 0)),
            awaiting_deadline=float(data.get("awaiting_deadline", 0.0)),
            awaiting_event=int(data.get("awaiting_event", 0)),
            turn_from=int(data.get("turn_from", 0)),
            turn_started_time=str(data.get("turn_started_time", "")),
            end_requested=bool(data.get("end_requested", False)),
        )


def slug(text: str, taken: set[str]) -> str:
    """A participant id made of `text` (lower-case ASCII words joined by '-'), unique among
    `taken` (which it joins)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    base = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:48] or "agent"
    candidate, n = base, 2
    while candidate in taken:
        candidate = f"{base}-{n}"
        n += 1
    taken.add(candidate)
    return candidate
