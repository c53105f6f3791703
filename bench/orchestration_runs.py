"""Watching assistant runs for the orchestration benchmark, through the SDK.

`Watch` reads a `client.orchestration.converse(...)` session in the background and stamps every
event with the moment it arrived (`time.perf_counter()`, the clock the generation tap uses), so
a section can wait for the assistant's `turn_ended`, send a cancel, and later line the streamed
tokens up against what generation produced. `log_gaps` compares what a client saw with the
conversation's event log in persistence.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import callisto
from callisto.api.generation.v1 import generation_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.orchestration import ConverseSession, assistant_start

# Log entries that are run events (events.py: `orchestration.<kind>`, and stored messages
# read back as `turn_ended`); anything else in a conversation's log is not delivered.
RUN_EVENT_PREFIX = "orchestration."
MESSAGE_CREATED = "message.created"


class RunFailed(RuntimeError):
    """The run ended with an `error` event, or its stream failed."""


@dataclass
class Seen:
    """One event as the client got it."""

    at: float
    event: pb.ConversationEvent

    @property
    def kind(self) -> str:
        return self.event.WhichOneof("kind") or ""


class Watch:
    """A Converse session whose events are read (and time-stamped) as they arrive."""

    def __init__(self, session: ConverseSession) -> None:
        self.session = session
        self.seen: list[Seen] = []
        self.failure: BaseException | None = None
        self.opened_at = 0.0
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, client: callisto.Client, start: pb.StartConversation) -> Watch:
        """A watch of the run `start` begins (any mode: an assistant turn, a simulation)."""
        return cls(client.orchestration.converse(start=start))

    @classmethod
    def start(
        cls,
        client: callisto.Client,
        agent: str,
        prompt: str,
        *,
        conversation: str = "",
        max_iterations: int = 0,
    ) -> Watch:
        start = assistant_start(
            agent,
            prompt,
            conversation=conversation,
            title=prompt[:80],
            max_iterations=max_iterations,
        )
        return cls.of(client, start)

    async def __aenter__(self) -> Watch:
        self.opened_at = time.perf_counter()
        await self.session.open()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.session.close()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass

    async def _read(self) -> None:
        try:
            async for event in self.session.events():
                self.seen.append(Seen(time.perf_counter(), event))
                self._changed.set()
        except Exception as error:  # a failed stream is a failed run for the benchmark
            self.failure = error
        finally:
            self._changed.set()

    @property
    def conversation(self) -> str:
        return self.session.conversation

    @property
    def ended(self) -> bool:
        return self._reader is not None and self._reader.done()

    async def until(
        self, wanted: Callable[[Seen], bool], within: float, after: int = 0
    ) -> tuple[int, Seen]:
        """The first event from index `after` on that `wanted` accepts, with its index;
        RunFailed if the run ends (or fails) first, TimeoutError after `within` seconds."""
        deadline = time.monotonic() + within
        index = after
        while True:
            while index < len(self.seen):
                seen = self.seen[index]
                if wanted(seen):
                    return index, seen
                if seen.kind == "error":
                    raise RunFailed(f"run failed: {seen.event.error.message}")
                index += 1
            if self.ended:
                raise RunFailed(f"the run's stream ended: {self.failure or 'after its end'}")
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no such event within {within} s")
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    async def answer(self, within: float, after: int = 0) -> AnsweredTurn:
        """Waits for the assistant's answer (the `turn_ended` of the speaker whose
        `turn_started` names an agent) from index `after` on."""
        start_index, started = await self.until(
            lambda s: s.kind == "turn_started" and bool(s.event.turn_started.agent),
            within,
            after,
        )
        speaker = started.event.turn_started.speaker
        end_index, _ = await self.until(
            lambda s: s.kind == "turn_ended" and s.event.turn_ended.speaker == speaker,
            within,
            start_index + 1,
        )
        return AnsweredTurn(self.seen[start_index : end_index + 1])

    async def terminal(self, within: float, after: int = 0) -> Seen:
        """The `done` event (RunFailed on an `error`)."""
        _, seen = await self.until(lambda s: s.kind == "done", within, after)
        return seen


@dataclass
class AnsweredTurn:
    """The events of one assistant turn, `turn_started` to `turn_ended`."""

    events: list[Seen]

    @property
    def ended(self) -> Seen:
        return self.events[-1]

    @property
    def turn_ended(self) -> pb.TurnEnded:
        return self.ended.event.turn_ended

    @property
    def tokens(self) -> list[Seen]:
        return [s for s in self.events if s.kind == "token"]

    @property
    def tool_calls(self) -> list[pb.ToolCall]:
        return [s.event.tool_call for s in self.events if s.kind == "tool_call"]

    @property
    def first_token_at(self) -> float | None:
        tokens = self.tokens
        return tokens[0].at if tokens else None

    @property
    def tool_ms(self) -> float:
        return sum(call.duration_ms for call in self.tool_calls)


async def chat_cancel_ms(
    client: callisto.Client, prompt: str, model: str, max_tokens: int
) -> float:
    """Milliseconds from cancelling a generation on a Chat stream, once its first token came,
    to the end of its results: the cancel baseline of a run's cancel."""
    async with client.generation.chat() as chat:
        generation = await chat.start(prompt, model=model, max_tokens=max_tokens)
        items = generation.__aiter__()
        while not isinstance(await items.__anext__(), generation_pb2.TokenDelta):
            pass
        asked = time.perf_counter()
        await generation.cancel()
        async for _ in items:
            pass
        return (time.perf_counter() - asked) * 1000


# --- event sequences ----------------------------------------------------------------------


@dataclass
class Sequence_:
    """How one client's event sequence compares with the conversation's log."""

    conversation: str
    delivered: int
    duplicates: int = 0
    out_of_order: int = 0
    # Run events of the log after the client's first event that it never got (gaps), ids it
    # got that the log lacks, and run events logged before its first one (the run's own
    # prompt, which Converse does not echo).
    missing: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)
    before_first: list[int] = field(default_factory=list)

    @property
    def gap_free(self) -> bool:
        return not (self.duplicates or self.out_of_order or self.missing or self.unknown)


async def log_gaps(client: callisto.Client, conversation: str, ids: Sequence[int]) -> Sequence_:
    """Compares the event ids a client received with the run events of the conversation's log
    (read from persistence), between the first and the last id the client got."""
    result = Sequence_(conversation, len(ids))
    result.duplicates = len(ids) - len(set(ids))
    result.out_of_order = sum(1 for a, b in itertools.pairwise(ids) if b <= a)
    first, last = min(ids, default=0), max(ids, default=0)
    logged = []
    async for entry in client.persistence.list_events(conversation):
        if entry.sequence > last:
            break
        if entry.type.startswith(RUN_EVENT_PREFIX) or entry.type == MESSAGE_CREATED:
            logged.append(entry.sequence)
    got = set(ids)
    result.before_first = [i for i in logged if i < first]
    result.missing = [i for i in logged if i >= first and i not in got]
    result.unknown = sorted(got - set(logged))
    return result


# --- token lag ----------------------------------------------------------------------------


def line_up(
    produced: Sequence[tuple[float, str]], received: Sequence[tuple[float, str]]
) -> tuple[list[tuple[float, int]], int]:
    """Each produced delta (its time, text) with the index of the received piece that shows
    its last visible character; returns ((produced time, received index) pairs, deltas with
    no counterpart).

    Deltas are found in order in the received text, each no earlier than the previous one and
    only in pieces that arrived after it was produced: the run coalesces, may drop a citation
    marker, and may stream text of its own (toy_llm's words repeat the prompt, so text alone
    could match a listing the loop streamed before the model spoke).
    """
    received_text = "".join(text for _, text in received)
    holder: list[int] = []  # character offset -> index of the piece holding it
    for index, (_, text) in enumerate(received):
        holder.extend([index] * len(text))
    pairs: list[tuple[float, int]] = []
    unmatched = 0
    position = 0
    for at, text in produced:
        visible = text.strip()
        if not visible:
            continue
        start = position
        while start < len(holder) and received[holder[start]][0] < at:
            start += 1
        found = received_text.find(visible, start)
        # A dropped token must not send the search far ahead onto a later repetition.
        if found < 0 or found - start > 4 * len(text) + 32:
            unmatched += 1
            continue
        last = found + len(visible) - 1
        pairs.append((at, holder[last]))
        position = last + 1
    return pairs, unmatched


def token_lags(
    produced: Sequence[tuple[float, str]], received: Sequence[tuple[float, str]]
) -> tuple[list[float], int]:
    """Milliseconds from each produced delta to the arrival of the received piece that
    completes it; returns (lags, deltas left unmatched)."""
    pairs, unmatched = line_up(produced, received)
    return [(received[index][0] - at) * 1000 for at, index in pairs], unmatched
