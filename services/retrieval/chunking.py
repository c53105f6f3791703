"""Sentence-aware chunking that never crosses a section (segment) boundary.

Each segment of a :class:`ParsedDocument` is split into sentences (or lines, for lists and CSV
records); consecutive sentences are packed into chunks of at most ``max_chars`` characters, and
the next chunk repeats trailing sentences of the previous one up to ``overlap_chars``. A sentence
longer than ``max_chars`` is the only thing ever cut mid-sentence (at whitespace where possible).
Offsets index the document's ``full_text``: ``full_text[c.start:c.end] == c.text``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from callisto.services.retrieval.errors import InvalidArgument
from callisto.services.retrieval.models import Chunk, ParsedDocument

# A sentence ends at terminal punctuation (plus closing quotes/brackets) before whitespace, or at a
# newline: lines of lists, tables and CSV records are units of their own. Linear time on any input:
# a match only starts at the first mark of a run (the lookbehind) and possessive quantifiers never
# give back what they took, so a long run of marks is scanned once, not once per position.
_BOUNDARY = re.compile(r"(?<![.!?\u2026])[.!?\u2026]++[\"'\u201d\u2019)\]]*+(?=\s)|\n")


@dataclass(frozen=True, slots=True)
class ChunkOptions:
    max_chars: int = 1000
    overlap_chars: int = 150

    def validate(self) -> None:
        if self.max_chars < 20:
            raise InvalidArgument("chunk_size", "chunk size must be at least 20 characters")
        if not 0 <= self.overlap_chars < self.max_chars:
            raise InvalidArgument("chunk_overlap", "overlap must be >= 0 and below the chunk size")


def _sentences(text: str, base: int) -> list[tuple[int, int]]:
    """Absolute (start, end) spans of the non-blank sentences of ``text``."""
    spans: list[tuple[int, int]] = []
    pos = 0

    def add(start: int, end: int) -> None:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start < end:
            spans.append((base + start, base + end))

    for match in _BOUNDARY.finditer(text):
        add(pos, match.start() if match.group() == "\n" else match.end())
        pos = match.end()
    add(pos, len(text))
    return spans


def _hard_split(full_text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Cut an over-long sentence into pieces of at most ``max_chars``, preferring whitespace."""
    pieces: list[tuple[int, int]] = []
    while end - start > max_chars:
        limit = start + max_chars
        cut = full_text.rfind(" ", start + max_chars // 2, limit + 1)
        cut = cut if cut > start else limit
        pieces.append((start, cut))
        start = cut
        while start < end and full_text[start].isspace():
            start += 1
    if start < end:
        pieces.append((start, end))
    return pieces


def chunk_document(document: ParsedDocument, options: ChunkOptions | None = None) -> list[Chunk]:
    """Split ``document`` into chunks; indexes run 0..n-1 across the whole document."""
    options = options or ChunkOptions()
    options.validate()
    full = document.full_text
    chunks: list[Chunk] = []
    for segment in document.segments:
        spans: list[tuple[int, int]] = []
        for start, end in _sentences(segment.text, segment.start):
            if end - start > options.max_chars:
                spans.extend(_hard_split(full, start, end, options.max_chars))
            else:
                spans.append((start, end))
        i = 0
        while i < len(spans):
            first = spans[i][0]
            j = i + 1
            while j < len(spans) and spans[j][1] - first <= options.max_chars:
                j += 1
            last = spans[j - 1][1]
            chunks.append(
                Chunk(
                    index=len(chunks),
                    text=full[first:last],
                    start=first,
                    end=last,
                    section=segment.section,
                    page=segment.page,
                )
            )
            if j >= len(spans):
                break
            # Step back over trailing sentences that fit the overlap, but always move forward.
            k = j
            while k - 1 > i and last - spans[k - 1][0] <= options.overlap_chars:
                k -= 1
            i = k
    return chunks
