"""Numbered sources of an answer, and the streaming filter that keeps only the markers `[n]`
that point at one of them.

The answer streams token by token, so a marker may arrive in pieces (`[`, `1`, `]`): text from a
`[` that could still become a marker is held back until it resolves. A marker naming a source is
passed on (the caller emits that source's `citation` event first, the first time it is cited);
one naming nothing is dropped together with the space before it, so "the fee [9]." reads "the
fee." in the stream and in the stored answer alike.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

from callisto.api.common.v1 import common_pb2

# `[1]`, `[1, 3]`, `[1,3]`: at most three digits a number, a few numbers a marker.
MARKER = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3}){0,7})\]")
# What the start of a marker can look like before its `]` arrives.
_PARTIAL = re.compile(r"\[(?:\d{1,3}(?:\s*,\s*\d{0,3}){0,7})?")
# Longest text held back waiting for a `]`: past it, the `[` was not a marker.
_MAX_MARKER = 40
# Punctuation that follows a word directly: the space before a dropped marker goes with it.
_CLOSING = ".,;:!?)"


def source_key(citation: common_pb2.Citation) -> tuple[str, str, str, str]:
    """What makes two retrieved passages the same source."""
    return (citation.document_id, citation.chunk_id, citation.section, citation.text)


def unique(citations: Iterable[common_pb2.Citation]) -> list[common_pb2.Citation]:
    """The passages without repeats (a second round or a second tool finding one again), in
    the order first found."""
    seen: set[tuple[str, str, str, str]] = set()
    kept: list[common_pb2.Citation] = []
    for citation in citations:
        key = source_key(citation)
        if key not in seen:
            seen.add(key)
            kept.append(citation)
    return kept


def number(citations: Iterable[common_pb2.Citation]) -> list[common_pb2.Citation]:
    """Copies of the passages with `marker` = 1, 2, … in order: the answer's sources."""
    numbered: list[common_pb2.Citation] = []
    for index, citation in enumerate(citations, start=1):
        copy = common_pb2.Citation()
        copy.CopyFrom(citation)
        copy.marker = index
        numbered.append(copy)
    return numbered


class MarkerFilter:
    """Feeds streamed answer text through, passing markers of `valid` sources and dropping the
    rest; `cited` lists the sources cited, in the order they were first cited."""

    def __init__(self, valid: Collection[int]) -> None:
        self._valid = set(valid)
        self.cited: list[int] = []
        # Text not yet resolved: from a `[` that may still become a marker.
        self._pending = ""
        # Whitespace after the last word emitted, held in case a dropped marker follows it.
        self._space = ""
        self._dropped = False
        self._out: list[str] = []
        self._new: list[int] = []

    def feed(self, text: str) -> tuple[str, list[int]]:
        """(text that may be shown now, sources cited for the first time in it)."""
        self._pending += text
        self._scan(final=False)
        return self._take()

    def finish(self) -> tuple[str, list[int]]:
        """What was held back, resolved now that the answer is complete: a marker cut off by
        the end of the answer (`[7`) is dropped; trailing whitespace is not part of it."""
        if _PARTIAL.fullmatch(self._pending):
            self._pending = ""
            self._dropped = True
        self._scan(final=True)
        self._space = ""
        return self._take()

    def _take(self) -> tuple[str, list[int]]:
        out, new = "".join(self._out), self._new
        self._out, self._new = [], []
        return out, new

    def _scan(self, *, final: bool) -> None:
        buffer, position = self._pending, 0
        while position < len(buffer):
            start = buffer.find("[", position)
            if start < 0:
                self._write(buffer[position:])
                position = len(buffer)
                break
            self._write(buffer[position:start])
            marker = MARKER.match(buffer, start)
            if marker is not None:
                self._marker(marker.group(1))
                position = marker.end()
                continue
            waiting = len(buffer) - start <= _MAX_MARKER
            if not final and waiting and _PARTIAL.fullmatch(buffer, start):
                position = start  # hold from the `[` until more text arrives
                break
            self._write("[")
            position = start + 1
        self._pending = buffer[position:]

    def _marker(self, numbers: str) -> None:
        kept = list(dict.fromkeys(int(n) for n in re.split(r"\s*,\s*", numbers)))
        kept = [n for n in kept if n in self._valid]
        if not kept:
            self._dropped = True
            return
        for n in kept:
            if n not in self.cited:
                self.cited.append(n)
                self._new.append(n)
        self._write("[" + ", ".join(str(n) for n in kept) + "]")

    def _write(self, text: str) -> None:
        if not text:
            return
        if self._dropped:
            # A dropped marker takes the space before it when a space or punctuation follows.
            if text[0].isspace() or text[0] in _CLOSING:
                self._space = ""
            self._dropped = False
        body = text.rstrip()
        if body:
            self._out.append(self._space + body)
            self._space = text[len(body) :]
        else:
            self._space += text


def strip_markers(text: str, valid: Collection[int]) -> tuple[str, list[int]]:
    """The whole text filtered at once (as the stream would be), and the sources it cites."""
    markers = MarkerFilter(valid)
    head, _ = markers.feed(text)
    tail, _ = markers.finish()
    return head + tail, markers.cited
