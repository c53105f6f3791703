"""What a downloaded conversation shows, independent of the format: the scenario, the agents
with their companies, roles, tools and prompts, the human, every turn (number, speaker, time,
sentiment, text, citations) and the metrics.

Everything here is cut to fixed bounds so a long or hostile conversation renders in bounded time
and size; what was cut is said in `notes`, which every format prints. The metrics always cover
the whole conversation, rendered or not."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.protobuf import json_format, timestamp_pb2

from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2

MAX_RENDERED_TURNS = 300
"""Turns rendered in a Markdown or PDF document; later ones are counted, not shown."""
MAX_DOCUMENT_CHARS = 400_000
"""Characters of turn text rendered over the whole document; turns past it are not shown."""
MAX_TURN_CHARS = 4_000
"""Characters of one turn's text rendered; the rest is cut and the cut is marked."""
MAX_PROMPT_CHARS = 8_000
"""Characters of the scenario and of each agent's system prompt rendered."""
MAX_FIELD_CHARS = 300
"""Characters of a name, company, role, title, tag or source rendered."""
MAX_AGENTS = 16
MAX_TOOLS = 32
MAX_TAGS = 64
MAX_CITATIONS = 20
"""Citations of one turn rendered as footnotes."""

SENTIMENT_LABELS = {
    common_pb2.SENTIMENT_LABEL_NEGATIVE: "negative",
    common_pb2.SENTIMENT_LABEL_NEUTRAL: "neutral",
    common_pb2.SENTIMENT_LABEL_POSITIVE: "positive",
}
STATUSES = {
    persistence_pb2.CONVERSATION_STATUS_ACTIVE: "active",
    persistence_pb2.CONVERSATION_STATUS_PAUSED: "paused",
    persistence_pb2.CONVERSATION_STATUS_COMPLETED: "completed",
    persistence_pb2.CONVERSATION_STATUS_CANCELLED: "cancelled",
    persistence_pb2.CONVERSATION_STATUS_FAILED: "failed",
}
TURN_ROLES = (common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT)


@dataclass(frozen=True)
class Agent:
    participant: str
    display_name: str
    company: str
    role: str
    agent: str
    model: str
    tools: list[str]
    system_prompt: str


@dataclass(frozen=True)
class Human:
    participant: str
    display_name: str
    company: str
    role: str


@dataclass(frozen=True)
class Source:
    marker: int
    title: str
    source_uri: str
    page: int
    section: str


@dataclass(frozen=True)
class Turn:
    number: int
    speaker: str
    display_name: str
    company: str
    human: bool
    time: str
    sentiment_label: str
    sentiment_score: float | None
    text: str
    cut: bool
    sources: list[Source]


@dataclass
class Document:
    name: str
    title: str
    status: str
    outcome: str
    created: str
    ended: str
    tags: list[str]
    scenario: str
    agents: list[Agent]
    human: Human | None
    turns: list[Turn]
    metrics: pb.ConversationMetrics
    notes: list[str] = field(default_factory=list)
    # When the conversation was created (the PDF's creation date), if known.
    create_time: datetime | None = None


def build_document(
    conversation: persistence_pb2.Conversation,
    messages: Sequence[persistence_pb2.Message],
    metrics: pb.ConversationMetrics,
    *,
    total_turns: int | None = None,
) -> Document:
    """The document of `conversation`: `messages` are the first stored messages (oldest first),
    `metrics` the figures of all of them; `total_turns` is how many turns the conversation has
    when `messages` are only its beginning (the metrics' count otherwise)."""
    meta = json_format.MessageToDict(conversation.metadata) if conversation.metadata else {}
    participants = {p.id: p for p in conversation.participants}
    agents = _agents(meta.get("agents"), conversation.participants)
    document = Document(
        name=_cut(conversation.name),
        title=_cut(conversation.title) or "Conversation",
        status=STATUSES.get(conversation.status, ""),
        outcome=_cut(metrics.outcome),
        created=_time(conversation.create_time) if conversation.HasField("create_time") else "",
        ended=_ended(meta.get("end_time")),
        tags=[_cut(tag) for tag in conversation.tags[:MAX_TAGS]],
        scenario=_cut(_text(meta.get("scenario")), MAX_PROMPT_CHARS),
        agents=agents[:MAX_AGENTS],
        human=_human(meta.get("human"), conversation.participants),
        turns=[],
        metrics=metrics,
    )
    if conversation.HasField("create_time"):
        document.create_time = conversation.create_time.ToDatetime(tzinfo=UTC)
    if len(agents) > MAX_AGENTS:
        document.notes.append(f"Only the first {MAX_AGENTS} of {len(agents)} agents are shown.")
    budget = MAX_DOCUMENT_CHARS
    cut_turns = 0
    order = 0
    figures = {t.message: t for t in metrics.turn_metrics if t.message}
    for message in messages:
        if message.role not in TURN_ROLES:
            continue
        order += 1
        if len(document.turns) >= MAX_RENDERED_TURNS or budget <= 0:
            break
        turn = _turn(message, order, figures.get(message.name), participants, budget)
        budget -= len(turn.text)
        cut_turns += turn.cut
        document.turns.append(turn)
    total = metrics.turns if total_turns is None else total_turns
    shown = len(document.turns)
    if shown < total:
        document.notes.append(
            f"Only the first {shown} of {total} turns are shown (a document renders at most "
            f"{MAX_RENDERED_TURNS} turns and {MAX_DOCUMENT_CHARS} characters of turn text); "
            "the metrics cover every turn."
        )
    if cut_turns:
        document.notes.append(
            f"The text of {cut_turns} turn(s) is cut at {MAX_TURN_CHARS} characters "
            "(marked [cut]); the stored messages keep it whole."
        )
    return document


def _turn(
    message: persistence_pb2.Message,
    order: int,
    figures: pb.TurnMetrics | None,
    participants: Mapping[str, persistence_pb2.Participant],
    budget: int,
) -> Turn:
    number = figures.turn if figures is not None else order
    speaker = figures.speaker if figures is not None else message.author
    human = figures.human if figures is not None else message.role == common_pb2.ROLE_USER
    participant = participants.get(speaker)
    limit = min(MAX_TURN_CHARS, budget)
    text = message.text[:limit]
    has_sentiment = message.HasField("sentiment") and message.sentiment.label in SENTIMENT_LABELS
    stamp = message.create_time
    meta = message.metadata.fields if message.HasField("metadata") else {}
    started = meta.get("started")
    if started is not None and started.WhichOneof("kind") == "string_value":
        parsed = _parse_time(started.string_value)
        stamp = parsed if parsed is not None else stamp
    return Turn(
        number=number,
        speaker=_cut(speaker),
        display_name=_cut(participant.display_name if participant else "") or _cut(speaker),
        company=_cut(participant.company if participant else ""),
        human=human,
        time=_time(stamp) if stamp.seconds or stamp.nanos else "",
        sentiment_label=SENTIMENT_LABELS.get(message.sentiment.label, "") if has_sentiment else "",
        sentiment_score=message.sentiment.score if has_sentiment else None,
        text=text,
        cut=len(message.text) > limit,
        sources=[
            Source(
                marker=c.marker or index + 1,
                title=_cut(c.title) or _cut(c.document_id),
                source_uri=_cut(c.source_uri),
                page=c.page,
                section=_cut(c.section),
            )
            for index, c in enumerate(message.citations[:MAX_CITATIONS])
        ],
    )


def _agents(value: object, participants: Sequence[persistence_pb2.Participant]) -> list[Agent]:
    """The agents of `metadata.agents`, or the agent participants when it says none."""
    found: list[Agent] = []
    if isinstance(value, list):
        for item in value[: MAX_AGENTS + 1]:
            if not isinstance(item, dict):
                continue
            tools = item.get("tools")
            found.append(
                Agent(
                    participant=_cut(_text(item.get("participant"))),
                    display_name=_cut(_text(item.get("display_name")))
                    or _cut(_text(item.get("participant"))),
                    company=_cut(_text(item.get("company"))),
                    role=_cut(_text(item.get("role"))),
                    agent=_cut(_text(item.get("agent"))),
                    model=_cut(_text(item.get("model"))),
                    tools=[
                        _cut(t)
                        for t in (tools if isinstance(tools, list) else [])[:MAX_TOOLS]
                        if isinstance(t, str)
                    ],
                    system_prompt=_cut(_text(item.get("system_prompt")), MAX_PROMPT_CHARS),
                )
            )
    if found:
        return found
    return [
        Agent(
            participant=_cut(p.id),
            display_name=_cut(p.display_name) or _cut(p.id),
            company=_cut(p.company),
            role=_cut(p.role),
            agent="",
            model="",
            tools=[],
            system_prompt="",
        )
        for p in participants[: MAX_AGENTS + 1]
        if p.kind == persistence_pb2.PARTICIPANT_KIND_AGENT
    ]


def _human(value: object, participants: Sequence[persistence_pb2.Participant]) -> Human | None:
    if isinstance(value, dict):
        return Human(
            participant=_cut(_text(value.get("id"))),
            display_name=_cut(_text(value.get("display_name"))) or _cut(_text(value.get("id"))),
            company=_cut(_text(value.get("company"))),
            role=_cut(_text(value.get("role"))),
        )
    for p in participants:
        if p.kind == persistence_pb2.PARTICIPANT_KIND_HUMAN:
            return Human(
                participant=_cut(p.id),
                display_name=_cut(p.display_name) or _cut(p.id),
                company=_cut(p.company),
                role=_cut(p.role),
            )
    return None


def _ended(value: object) -> str:
    parsed = _parse_time(value) if isinstance(value, str) else None
    return _time(parsed) if parsed is not None else ""


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _cut(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _time(stamp: timestamp_pb2.Timestamp) -> str:
    moment = datetime.fromtimestamp(stamp.seconds, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _parse_time(text: str) -> timestamp_pb2.Timestamp | None:
    if len(text) > 64:
        return None
    result = timestamp_pb2.Timestamp()
    try:
        result.FromJsonString(text)
    except ValueError:
        return None
    return result
