from __future__ import annotations

import itertools
import time

import pytest

from callisto.services.retrieval.chunking import ChunkOptions, chunk_document
from callisto.services.retrieval.errors import InvalidArgument
from callisto.services.retrieval.parsing import MARKDOWN, parse_document


def corpus() -> str:
    sentences = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(40))
    return f"# One\n{sentences}\n# Two\nShort section.\n## Deeper\n{'x' * 250} tail words."


def test_chunk_text_matches_full_text_offsets_exactly() -> None:
    doc = parse_document(corpus().encode(), MARKDOWN)
    chunks = chunk_document(doc, ChunkOptions(max_chars=200, overlap_chars=60))
    assert len(chunks) > 5
    for chunk in chunks:
        assert doc.full_text[chunk.start : chunk.end] == chunk.text
        assert len(chunk.text) <= 200
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_chunks_never_cross_sections() -> None:
    doc = parse_document(corpus().encode(), MARKDOWN)
    chunks = chunk_document(doc, ChunkOptions(max_chars=200, overlap_chars=60))
    for chunk in chunks:
        owners = [s for s in doc.segments if s.start <= chunk.start and chunk.end <= s.end]
        assert len(owners) == 1 and owners[0].section == chunk.section
    assert {c.section for c in chunks} == {("One",), ("Two",), ("Two", "Deeper")}


def test_chunks_end_on_sentence_boundaries_with_overlap() -> None:
    doc = parse_document(corpus().encode(), MARKDOWN)
    first_section = [c for c in chunk_document(doc, ChunkOptions(200, 60)) if c.section == ("One",)]
    for chunk in first_section:
        assert chunk.text.endswith(".")
    for prev, nxt in itertools.pairwise(first_section):
        assert nxt.start < prev.end  # consecutive chunks share trailing sentences
        assert nxt.start > prev.start


def test_only_overlong_sentences_are_hard_split() -> None:
    doc = parse_document(corpus().encode(), MARKDOWN)
    deeper = [
        c for c in chunk_document(doc, ChunkOptions(100, 20)) if c.section[-1:] == ("Deeper",)
    ]
    assert len(deeper) >= 3
    assert all(len(c.text) <= 100 for c in deeper)
    assert "".join(c.text for c in deeper).replace(" ", "").startswith("Deeper" + "x" * 250)


def test_invalid_options_are_rejected() -> None:
    doc = parse_document(b"text", "text/plain")
    with pytest.raises(InvalidArgument):
        chunk_document(doc, ChunkOptions(max_chars=100, overlap_chars=100))


@pytest.mark.parametrize(
    "text",
    [
        "." * 200_000,
        "\u2026" * 200_000,
        '."' * 100_000,
        "." * 100_000 + ")" * 100_000,
        "Word. " * 40_000,
    ],
    ids=["dots", "ellipses", "dot-quote", "dots-then-brackets", "short-sentences"],
)
def test_sentence_splitting_is_linear_on_pathological_punctuation(text: str) -> None:
    doc = parse_document(text.encode(), "text/plain")
    started = time.perf_counter()
    chunks = chunk_document(doc, ChunkOptions(max_chars=1000, overlap_chars=150))
    assert time.perf_counter() - started < 1.0
    assert chunks and all(doc.full_text[c.start : c.end] == c.text for c in chunks)


def test_sentences_end_after_runs_of_marks_and_closing_quotes() -> None:
    doc = parse_document('Wait... what?" She left!) Done\u2026 next.a. end'.encode(), "text/plain")
    chunks = chunk_document(doc, ChunkOptions(max_chars=20, overlap_chars=0))
    assert [c.text for c in chunks] == ['Wait... what?"', "She left!) Done\u2026", "next.a. end"]
