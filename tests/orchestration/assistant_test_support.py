"""Helpers of the assistant-loop tests: a service key and real `Backends`, the conference sample
entities ingested into a test tenant, a sink that keeps every event the loop emits, and a model
caller that records what passed through the real one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import callisto
from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.deploy import samples_dir
from callisto.mesh.samples import entity_messages
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.budget import PriceTable, RunModelCaller, TokenBudget
from callisto.services.orchestration.citations import source_key
from callisto.services.orchestration.turns import OnText, TurnAnswer

CONFERENCE_TENANT = "assistant-conference"
COLD_CHAIN = "Which sessions talk about cold-chain monitoring, and who speaks?"
# The session and the speaker of the sample programme that answer COLD_CHAIN.
COLD_CHAIN_SESSION = "session-019"
COLD_CHAIN_SPEAKER = "speaker-009"


async def ingest_conference(retrieval: str, tenant_key: str) -> int:
    """Upserts the sample conference entities into the key's tenant (idempotent: unchanged
    records are not embedded again); returns how many."""
    entities = entity_messages(samples_dir() / "conference" / "entities.jsonl")
    async with await callisto.Client.connect(retrieval, api_key=tenant_key) as client:
        await client.retrieval.upsert_entities(entities, timeout=600)
    return len(entities)


def model_caller(backends: Backends, tenant: str, agent: str) -> RunModelCaller:
    """The run's real model caller, without a budget."""
    return RunModelCaller(
        backends.generation, PriceTable.parse(""), TokenBudget(0), tenant=tenant, agent=agent
    )


@dataclass
class Generation:
    request: generation_pb2.GenerateRequest
    result: generation_pb2.GenerationResult


@dataclass
class RecordingCaller:
    """Passes every call to the real caller and keeps the request and its result."""

    inner: RunModelCaller
    calls: list[Generation] = field(default_factory=list)

    async def generate(
        self, request: generation_pb2.GenerateRequest, *, on_text: OnText | None = None
    ) -> generation_pb2.GenerationResult:
        result = await self.inner.generate(request, on_text=on_text)
        kept = generation_pb2.GenerateRequest()
        kept.CopyFrom(request)
        self.calls.append(Generation(kept, result))
        return result

    def named(self, name: str) -> list[Generation]:
        """The structured calls of one step (`understand`, `plan`, `reflect`)."""
        return [c for c in self.calls if c.request.response_format.name == name]

    def answers(self) -> list[Generation]:
        """The free-text calls (the streamed answer)."""
        return [c for c in self.calls if not c.request.HasField("response_format")]


@dataclass
class RecordingSink:
    """A RunSink that keeps every event in order, numbering them as the log would."""

    events: list[pb.ConversationEvent] = field(default_factory=list)

    async def emit(self, event: pb.ConversationEvent) -> int:
        kept = pb.ConversationEvent()
        kept.CopyFrom(event)
        kept.event_id = len(self.events) + 1
        self.events.append(kept)
        return kept.event_id

    async def token(self, speaker: str, text: str) -> None:
        await self.emit(pb.ConversationEvent(token=pb.TokenChunk(speaker=speaker, text=text)))

    def kinds(self) -> list[str]:
        return [str(e.WhichOneof("kind")) for e in self.events]

    def of(self, kind: str) -> list[pb.ConversationEvent]:
        return [e for e in self.events if e.WhichOneof("kind") == kind]

    def plans(self) -> list[pb.Plan]:
        return [e.plan for e in self.of("plan")]

    def reflections(self) -> list[pb.Reflection]:
        return [e.reflection for e in self.of("reflection")]

    def tool_calls(self) -> list[pb.ToolCall]:
        return [e.tool_call for e in self.of("tool_call")]

    def cited(self) -> list[common_pb2.Citation]:
        return [e.citation for e in self.of("citation")]

    def streamed(self) -> str:
        return "".join(e.token.text for e in self.of("token"))


def retrieved(answer: TurnAnswer) -> set[tuple[str, str, str, str]]:
    """Every passage the turn's tool calls returned."""
    return {
        source_key(c)
        for outcome in answer.tool_calls
        if outcome.result is not None
        for c in outcome.result.citations
    }


def conference_agent(tools: Sequence[str], *, model: str = "models/toy_llm") -> pb.Agent:
    return pb.Agent(
        name="agents/assistant-test@r1",
        display_name="Summit assistant",
        role="conference assistant",
        system_prompt=(
            "You are the attendee assistant of the summit. Answer from the search results and "
            "cite them like [1]."
        ),
        tools=list(tools),
        model=model,
        revision_id="r1",
    )
