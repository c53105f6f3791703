"""One agent turn of a simulation, as a function from what the conversation holds to the line
the agent says: retrieval from its own company's documents (when it has `search_documents`),
the prompt, the streamed generation with its citations, and the model's choice of the next
speaker. The run (simulation.py) stores the line, scores it and checkpoints; a turn only emits
events through its `RunSink` and calls models through its `ModelCaller`."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.errors import CallistoError
from callisto.services.common.validation import MAX_MESSAGE_TEXT_BYTES
from callisto.services.orchestration import citations, prompts
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.model_json import to_struct
from callisto.services.orchestration.simulation_state import Simulation, Speaker
from callisto.services.orchestration.tools.registry import ToolContext, ToolOutcome, ToolRegistry
from callisto.services.orchestration.turns import ModelCaller, RunSink

log = logging.getLogger("callisto.orchestration.simulation")

SEARCH_TOOL = "search_documents"
# Characters of each passage a turn's prompt shows.
PASSAGE_CHARS = 400
# Most tokens of the next-speaker choice.
SELECTION_MAX_TOKENS = 24
MAX_STOPS = 4
PARAGRAPH = "\n\n"


@dataclass(frozen=True)
class Line:
    """One earlier turn of the conversation."""

    speaker: str
    text: str


@dataclass
class AgentTurnInput:
    tenant: str
    conversation: str
    simulation: Simulation
    speaker: Speaker
    turn: int
    # Earlier turns, oldest first (the latest `history_turns` are shown).
    history: list[Line]
    history_turns: int
    turn_chars: int
    sources: int
    max_tokens: int
    temperature: float
    repetition_penalty: float = 1.0


@dataclass
class AgentLine:
    """What the agent said."""

    text: str
    citations: list[common_pb2.Citation]
    model: str
    passages: int = 0
    tool_calls: list[ToolOutcome] = field(default_factory=list)


class SpeakerHeading:
    """Drops a speaker's "Name:" (or "Name (aside):") that opens a line, as it streams: a small
    model often heads its line with its own name, or another's. Text that cannot be such a
    heading passes at once."""

    def __init__(self, names: Sequence[str]) -> None:
        self._names = [name for name in dict.fromkeys(names) if name]
        alternatives = "|".join(re.escape(n) for n in sorted(self._names, key=len, reverse=True))
        self._pattern = re.compile(rf"\s*(?:{alternatives})\s*(\([^()]{{0,80}}\))?\s*:\s*")
        self._held = ""
        self._decided = not self._names

    def feed(self, text: str) -> str:
        if self._decided:
            return text
        self._held += text
        opening = self._held.lstrip()
        if any(name.startswith(opening) for name in self._names):
            return ""
        named = [n for n in self._names if opening.startswith(n)]
        # The name must end there: "Tessaline" is not "Tessa".
        if not any(opening[len(n)].isspace() or opening[len(n)] in "(:" for n in named):
            return self._release(self._held)
        heading = self._pattern.match(self._held)
        if heading is not None and heading.end() < len(self._held):
            return self._release(self._held[heading.end() :])
        after = opening[min(len(n) for n in named) :]
        if len(after) > 90 or "\n" in after or (heading is None and ":" in after):
            return self._release(self._held)
        return ""

    def finish(self) -> str:
        if self._decided:
            return ""
        heading = self._pattern.match(self._held)
        return self._release(self._held[heading.end() :] if heading else self._held)

    def _release(self, text: str) -> str:
        self._decided, self._held = True, ""
        return text


def cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at a space when one is near the end."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[:limit]
    space = head.rfind(" ")
    return head[:space] if space > limit * 3 // 4 else head


def fit(text: str, limit: int) -> str:
    """The longest start of `text` that is at most `limit` bytes as UTF-8 (whole characters)."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: max(limit, 0)].decode(errors="ignore")


def query_of(turn: AgentTurnInput) -> str:
    """What the agent looks up: the latest other speaker's line, or the scenario."""
    for line in reversed(turn.history):
        if line.speaker != turn.speaker.participant and line.text.strip():
            return cut(line.text, 200)
    return cut(turn.simulation.scenario, 200)


def messages(
    turn: AgentTurnInput, sources: Sequence[common_pb2.Citation]
) -> list[generation_pb2.ChatMessage]:
    """The prompt of an agent turn: who the agent is and who the others are, the scenario, its
    sources, then the latest turns (its own as assistant, the others' as user "Name (Company):
    text"); the last message is always a user message."""
    sim, me = turn.simulation, turn.speaker
    others = [s.label() for s in sim.agents if s.participant != me.participant]
    if sim.human is not None:
        others.append(sim.human.label())
    role = f", {me.spec.role}" if me.spec.role else ""
    company = f" at {me.spec.company}" if me.spec.company else ""
    lines = [
        me.spec.system_prompt.strip(),
        f"Scenario: {cut(sim.scenario, turn.turn_chars)}",
        f"You are {me.name}{role}{company}. Also in the conversation: {', '.join(others)}.",
    ]
    if sources:
        lines.append("Sources you may cite as [n]:")
        lines.extend(
            f"[{c.marker}] {c.title or c.document_id}: {cut(c.text, PASSAGE_CHARS)}"
            for c in sources
        )
    lines.append(f"Reply in 1-3 sentences as {me.name}, only your own line.")
    chat = [prompts.system("\n".join(line for line in lines if line))]
    for line in turn.history[-turn.history_turns :] if turn.history_turns > 0 else []:
        text = cut(line.text, turn.turn_chars)
        if line.speaker == me.participant:
            chat.append(prompts.assistant(text))
        else:
            chat.append(prompts.user(f"{sim.label_of(line.speaker)}: {text}"))
    if len(chat) == 1:
        chat.append(
            prompts.user(
                f"{cut(sim.scenario, turn.turn_chars)}\nWrite {me.name}'s opening line to "
                f"{others[0] if others else 'the others'}."
            )
        )
    elif chat[-1].role != common_pb2.ROLE_USER:
        chat.append(prompts.user(f"Go on as {me.name}."))
    return chat


def stops(turn: AgentTurnInput) -> list[str]:
    """Where a line ends: at a blank line (the small model rambles on in paragraphs) or when
    the model starts a new line of another speaker (or one more of its own: one turn is one
    line)."""
    sim = turn.simulation
    names = [s.name for s in sim.agents if s.participant != turn.speaker.participant]
    if sim.human is not None:
        names.append(sim.human.name)
    names.append(turn.speaker.name)
    # Generation takes at most MAX_STOPS stop strings: the next speakers' first (the line
    # filter still cuts a line at any speaker's heading).
    return [PARAGRAPH, *(f"\n{name}:" for name in dict.fromkeys(names))][:MAX_STOPS]


async def retrieve(
    turn: AgentTurnInput, sink: RunSink, tools: ToolRegistry, backends: Backends
) -> tuple[list[common_pb2.Citation], list[ToolOutcome]]:
    """The agent's own company's passages for the turn: one `search_documents` call through the
    registry for this agent (so filtered to its company and knowledge tags), emitted as a
    `tool_call`; the passages numbered as sources."""
    agent = turn.speaker.spec
    if SEARCH_TOOL not in agent.tools or SEARCH_TOOL not in tools.names():
        return [], []
    context = ToolContext(
        tenant=turn.tenant,
        conversation=turn.conversation,
        agent=agent,
        backends=backends,
        idempotency_key=f"{turn.conversation}/turns/{turn.turn}/search",
    )
    arguments: dict[str, Any] = {"query": query_of(turn), "top_k": max(1, turn.sources)}
    outcome = await tools.call(SEARCH_TOOL, arguments, context, call_id=f"{turn.turn}.1")
    await sink.emit(pb.ConversationEvent(tool_call=outcome.event()))
    found = outcome.result.citations if outcome.ok and outcome.result is not None else []
    return citations.number(citations.unique(found)[: turn.sources]), [outcome]


async def agent_turn(
    turn: AgentTurnInput,
    sink: RunSink,
    llm: ModelCaller,
    tools: ToolRegistry,
    backends: Backends,
) -> AgentLine:
    """The agent's line, streamed through `sink` as it is generated; the `citation` event of a
    source goes out before the token that first cites it."""
    sources, calls = await retrieve(turn, sink, tools, backends)
    speaker = turn.speaker.participant
    markers = citations.MarkerFilter(range(1, len(sources) + 1))
    parts: list[str] = []
    # A line is stored as one message: what would not fit is neither streamed nor kept.
    room = MAX_MESSAGE_TEXT_BYTES

    async def show(text: str, cited: list[int]) -> None:
        nonlocal room
        if room <= 0:
            return
        for marker in cited:
            await sink.emit(pb.ConversationEvent(citation=sources[marker - 1]))
        if not parts:
            text = text.lstrip()
        text = fit(text, room)
        if text:
            room -= len(text.encode())
            parts.append(text)
            await sink.token(speaker, text)

    sim = turn.simulation
    names = [s.name for s in sim.agents] + ([sim.human.name] if sim.human is not None else [])
    own = SpeakerHeading(names)

    async def on_text(text: str) -> None:
        await show(*markers.feed(own.feed(text)))

    agent = turn.speaker.spec
    request = generation_pb2.GenerateRequest(
        model=agent.model,
        messages=messages(turn, sources),
        parameters=generation_pb2.SamplingParameters(
            max_tokens=turn.max_tokens,
            temperature=turn.temperature,
            repetition_penalty=turn.repetition_penalty,
            seed=turn.turn,
            stop=stops(turn),
        ),
    )
    streamed = False

    async def streaming(text: str) -> None:
        nonlocal streamed
        streamed = True
        await on_text(text)

    result = await llm.generate(request, on_text=streaming)
    if not streamed and result.text:
        await on_text(result.text)
    await show(*markers.feed(own.finish()))
    await show(*markers.finish())
    text = "".join(parts).rstrip()
    if not text:
        text = "..."
        await sink.token(speaker, text)
    cited = [sources[n - 1] for n in sorted(markers.cited)]
    return AgentLine(
        text=text,
        citations=cited,
        model=result.model or agent.model,
        passages=len(sources),
        tool_calls=calls,
    )


def selection_schema(candidates: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"next_speaker": {"enum": list(candidates)}},
        "required": ["next_speaker"],
        "additionalProperties": False,
    }


async def choose_next(
    simulation: Simulation,
    last: Speaker,
    history: Sequence[Line],
    llm: ModelCaller,
    turn_chars: int,
) -> int | None:
    """The index of the agent the model picks to speak after `last` (among the others); None
    when its answer is unusable (the run goes round robin). BudgetExhausted and cancellation
    propagate."""
    others = [s for s in simulation.agents if s.participant != last.participant]
    if len(others) < 2:
        return None
    roster = "\n".join(f"- {s.participant}: {s.label()}, {s.spec.role}" for s in others)
    recent = "\n".join(
        f"{simulation.label_of(line.speaker)}: {cut(line.text, turn_chars)}"
        for line in history[-4:]
    )
    request = generation_pb2.GenerateRequest(
        model=last.spec.model,
        messages=[
            prompts.system(
                "Pick who speaks next in this conversation, by id, from:\n"
                + roster
                + f"\nScenario: {cut(simulation.scenario, turn_chars)}"
            ),
            prompts.user(recent or cut(simulation.scenario, turn_chars)),
        ],
        parameters=generation_pb2.SamplingParameters(
            max_tokens=SELECTION_MAX_TOKENS, temperature=0.0
        ),
        response_format=generation_pb2.ResponseFormat(
            json_schema=to_struct(selection_schema([s.participant for s in others])),
            name="next_speaker",
        ),
    )
    try:
        result = await llm.generate(request)
    except CallistoError as error:
        log.warning("next-speaker choice failed: %s", error)
        return None
    try:
        value = (
            json_format.MessageToDict(result.parsed)
            if result.HasField("parsed")
            else json.loads(result.text)
        )
    except ValueError:
        return None
    chosen = value.get("next_speaker") if isinstance(value, dict) else None
    for index, speaker in enumerate(simulation.agents):
        if speaker.participant == chosen and speaker.participant != last.participant:
            return index
    return None
