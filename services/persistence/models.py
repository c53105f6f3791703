"""Domain types of the persistence service, free of protobuf and of Redis.

Rich parts of resources (participants, metadata, message bodies, event data) are carried as JSON
text: the handlers translate them to and from protobuf, the store keeps them opaque.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

# Retention of a resource that has no ttl of its own: follow the tenant policy.
FOLLOW_POLICY = -1


class ConversationStatus(IntEnum):
    """Mirrors `callisto.persistence.v1.ConversationStatus`."""

    UNSPECIFIED = 0
    ACTIVE = 1
    PAUSED = 2
    COMPLETED = 3
    CANCELLED = 4
    FAILED = 5

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset(
    {ConversationStatus.COMPLETED, ConversationStatus.CANCELLED, ConversationStatus.FAILED}
)


@dataclass(frozen=True)
class Participant:
    """Someone taking part in a conversation (kept for filtering by id or company)."""

    id: str
    display_name: str = ""
    kind: int = 0
    role: str = ""
    company: str = ""


@dataclass(frozen=True)
class ConversationFields:
    """The writable part of a conversation."""

    title: str
    participants: tuple[Participant, ...]
    tags: tuple[str, ...]
    status: ConversationStatus
    metadata_json: str
    # Milliseconds; 0 keeps forever, FOLLOW_POLICY uses the tenant policy.
    ttl_ms: int


@dataclass(frozen=True)
class Conversation:
    """A stored conversation."""

    id: str
    fields: ConversationFields
    create_ms: int
    update_ms: int
    # 0 when the conversation is kept forever.
    expire_ms: int
    version: int
    message_count: int
    last_sequence: int


@dataclass(frozen=True)
class StoredMessage:
    """A message: its assigned position, event sequence and time, and its body as JSON."""

    position: int
    event_sequence: int
    create_ms: int
    body_json: str


@dataclass(frozen=True)
class StoredEvent:
    """One entry of a conversation's log; exactly one of `message` / `data_json` is set."""

    sequence: int
    type: str
    create_ms: int
    message: StoredMessage | None = None
    data_json: str | None = None


@dataclass(frozen=True)
class SessionFields:
    """The writable part of a session."""

    kind: str
    state_json: str
    ttl_ms: int


@dataclass(frozen=True)
class Session:
    """A stored, versioned session document."""

    id: str
    fields: SessionFields
    version: int
    create_ms: int
    update_ms: int
    expire_ms: int


@dataclass(frozen=True)
class RetentionPolicy:
    """A tenant's retention, in milliseconds (0 keeps forever)."""

    conversation_ttl_ms: int = 0
    session_ttl_ms: int = 0
    # 0 when the policy was never changed.
    update_ms: int = 0


@dataclass(frozen=True)
class ConversationFilter:
    """What ListConversations selects, besides paging."""

    start_ms: int | None = None
    end_ms: int | None = None
    tags: tuple[str, ...] = ()
    status: ConversationStatus = ConversationStatus.UNSPECIFIED
    participant: str = ""
    ascending: bool = False

    def matches(self, conversation: Conversation) -> bool:
        fields = conversation.fields
        if self.status and fields.status != self.status:
            return False
        if self.tags and not set(self.tags) <= set(fields.tags):
            return False
        if self.participant and not any(
            self.participant in (p.id, p.company) for p in fields.participants
        ):
            return False
        return True


@dataclass(frozen=True)
class Cursor:
    """Position in a time index: the (score, id) of the last item returned."""

    score: int
    id: str


@dataclass(frozen=True)
class Heartbeat:
    """Nothing new on a followed log; `last_sequence` was delivered."""

    last_sequence: int


@dataclass(frozen=True)
class EndOfLog:
    """The conversation is finished and its whole log was delivered."""

    last_sequence: int
    status: ConversationStatus


@dataclass(frozen=True)
class ArtifactFields:
    """What a caller gives of an artifact besides its bytes."""

    display_name: str
    content_type: str
    metadata_json: str


@dataclass(frozen=True)
class StoredArtifact:
    """A stored artifact; `content` only when it was read (GetArtifact)."""

    id: str
    fields: ArtifactFields
    size_bytes: int
    sha256: str
    create_ms: int
    content: bytes | None = None
