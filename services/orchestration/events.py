"""The conversation's event log as runs see it: writing events (tokens coalesced), reading them
back as `ConversationEvent`s, and watching a run up to its terminal event.

A run event is a persistence event of type `orchestration.<kind>` whose data is the event as
JSON; stored messages (the human turns and the assistant's answers) are persistence's own
`message.created` events, read back as `turn_ended`, so the log holds each answer once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from google.protobuf import json_format, struct_pb2

from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2
from callisto.persistence import PersistenceClient

EVENT_PREFIX = "orchestration."
MESSAGE_CREATED = "message.created"
TERMINAL_KINDS = frozenset({"done", "error"})


def event_type(event: pb.ConversationEvent) -> str:
    kind = event.WhichOneof("kind")
    if kind is None:
        raise ValueError("a conversation event needs its kind set")
    return EVENT_PREFIX + kind


def event_data(event: pb.ConversationEvent) -> struct_pb2.Struct:
    """The event as the JSON data of its log entry (without what the log itself supplies:
    sequence, conversation and append time)."""
    stored = pb.ConversationEvent()
    stored.CopyFrom(event)
    stored.ClearField("event_id")
    stored.ClearField("conversation")
    stored.ClearField("create_time")
    data = struct_pb2.Struct()
    data.update(json_format.MessageToDict(stored, preserving_proto_field_name=True))
    return data


def from_log(event: persistence_pb2.Event, conversation: str) -> pb.ConversationEvent | None:
    """The run event a log entry stands for; None for entries that are not run events."""
    if event.type == MESSAGE_CREATED and event.HasField("message"):
        result = pb.ConversationEvent(turn_ended=turn_ended(event.message))
    elif event.type.startswith(EVENT_PREFIX) and event.HasField("data"):
        result = pb.ConversationEvent()
        json_format.ParseDict(
            json_format.MessageToDict(event.data), result, ignore_unknown_fields=True
        )
        if result.WhichOneof("kind") != event.type[len(EVENT_PREFIX) :]:
            return None
    else:
        return None
    result.event_id = event.sequence
    result.conversation = conversation
    if result.HasField("turn_ended"):
        result.step_id = _step_of(event.message)
    if event.HasField("create_time"):
        result.create_time.CopyFrom(event.create_time)
    return result


def turn_ended(message: persistence_pb2.Message) -> pb.TurnEnded:
    """A stored message as the `turn_ended` of its speaker (cost, generation time, turn number,
    human and keyword hits come from the metadata the run stored with it)."""
    metadata = json_format.MessageToDict(message.metadata) if message.HasField("metadata") else {}
    turn = pb.TurnEnded(
        speaker=message.author,
        text=message.text,
        message=message.name,
        cost=float(metadata.get("cost", 0.0)),
        generation_ms=float(metadata.get("generation_ms", 0.0)),
        citations=message.citations,
    )
    # A simulation's turns say their number, whether the human spoke and the keywords hit.
    number = metadata.get("turn")
    if isinstance(number, (int, float)) and 0 < number < 2**31:
        turn.turn = int(number)
    turn.human = metadata.get("human") is True
    hits = metadata.get("keyword_hits")
    if isinstance(hits, list):
        turn.keyword_hits.extend(str(hit) for hit in hits if isinstance(hit, str))
    if message.HasField("sentiment"):
        turn.sentiment.CopyFrom(message.sentiment)
    if message.HasField("usage"):
        turn.usage.CopyFrom(message.usage)
    return turn


def _step_of(message: persistence_pb2.Message) -> str:
    """The workflow step a stored message is the output of ("" for other messages)."""
    if not message.HasField("metadata"):
        return ""
    step = message.metadata.fields.get("step")
    return step.string_value if step is not None else ""


def is_terminal(event: pb.ConversationEvent) -> bool:
    return event.WhichOneof("kind") in TERMINAL_KINDS


async def watch(
    persistence: PersistenceClient, conversation: str, after_event_id: int
) -> AsyncIterator[pb.ConversationEvent]:
    """The run events of the log after `after_event_id`, live, up to and including the first
    terminal one; the subscription resumes by itself, so nothing is skipped or repeated."""
    subscription = persistence.subscribe_events(conversation, after_sequence=after_event_id)
    try:
        async for entry in subscription:
            event = from_log(entry, conversation)
            if event is None:
                continue
            yield event
            if is_terminal(event):
                return
    finally:
        await subscription.aclose()


# Most characters of answer text in one `token` event.
MAX_TOKEN_EVENT_CHARS = 16384


class EventWriter:
    """The `RunSink` of a run: appends its events in order, each with a request id made of the
    run, its attempt and a counter, so a retried append is stored once. Token text is
    coalesced: the first piece after any other event goes at once, the rest is gathered for
    `coalesce_s` into one `token` event."""

    def __init__(
        self,
        persistence: PersistenceClient,
        conversation: str,
        request_prefix: str,
        coalesce_s: float,
        *,
        step_id: str = "",
    ) -> None:
        self._persistence = persistence
        # Every event written is of this workflow step (parallel steps share one log).
        self._step_id = step_id
        self._conversation = conversation
        self._prefix = request_prefix
        self._coalesce_s = coalesce_s
        self._count = 0
        self._lock = asyncio.Lock()
        self._speaker = ""
        self._pending: list[str] = []
        self._pending_chars = 0
        self._eager = True
        self._timer: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        # Id of the last event appended.
        self.last_event_id = 0

    async def emit(self, event: pb.ConversationEvent) -> int:
        await self.flush()
        async with self._lock:
            event_id = await self._append(event)
        self._eager = True
        return event_id

    async def token(self, speaker: str, text: str) -> None:
        if self._failure is not None:
            raise self._failure
        if self._pending and speaker != self._speaker:
            await self.flush()
        self._speaker = speaker
        # One token event holds at most MAX_TOKEN_EVENT_CHARS, so even JSON-escaped control
        # characters stay far below the log's per-event size limit.
        for start in range(0, len(text), MAX_TOKEN_EVENT_CHARS):
            self._pending.append(text[start : start + MAX_TOKEN_EVENT_CHARS])
            self._pending_chars += len(self._pending[-1])
            if self._eager or self._pending_chars >= MAX_TOKEN_EVENT_CHARS:
                self._eager = False
                await self.flush()
        if self._pending and self._timer is None:
            self._timer = asyncio.create_task(self._flush_later())

    async def flush(self) -> None:
        """Appends the gathered token text now (emit and the end of a turn call it)."""
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        if self._failure is not None:
            raise self._failure
        async with self._lock:
            if not self._pending:
                return
            text, self._pending, self._pending_chars = "".join(self._pending), [], 0
            await self._append(
                pb.ConversationEvent(token=pb.TokenChunk(speaker=self._speaker, text=text))
            )

    async def close(self) -> None:
        """Drops what was not yet written (a cancelled or abandoned turn)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self._pending, self._pending_chars = [], 0

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._coalesce_s)
        self._timer = None
        try:
            async with self._lock:
                if not self._pending:
                    return
                text, self._pending, self._pending_chars = "".join(self._pending), [], 0
                await self._append(
                    pb.ConversationEvent(token=pb.TokenChunk(speaker=self._speaker, text=text))
                )
        except Exception as error:  # reported by the turn's next call
            self._failure = error

    async def _append(self, event: pb.ConversationEvent) -> int:
        self._count += 1
        if self._step_id:
            event.step_id = self._step_id
        stored = await self._persistence.append_event(
            self._conversation,
            event_type(event),
            event_data(event),
            request_id=f"{self._prefix}.{self._count}",
        )
        self.last_event_id = stored.sequence
        return int(stored.sequence)
