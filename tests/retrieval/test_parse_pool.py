"""Zip bombs are refused before they inflate, and a parse that runs past its time or memory is
stopped in its worker process while the event loop and the other parses go on."""

from __future__ import annotations

import asyncio
import pickle
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from hostile_documents import DOCX, docx_with_part, lying_docx, small_docx, spinning_pdf
from hostile_documents import zip_bomb_docx as bomb

from callisto.services.retrieval.chunking import ChunkOptions
from callisto.services.retrieval.errors import (
    CorruptDocument,
    DocumentTooComplex,
    DocumentTooLarge,
    RetrievalError,
)
from callisto.services.retrieval.parse_pool import ParserLimits, ParserPool
from callisto.services.retrieval.parsing import ParseOptions, parse_document

PARSE = ParseOptions()
CHUNK = ChunkOptions()


def test_a_zip_bomb_docx_is_refused_before_it_inflates() -> None:
    data = bomb()
    assert len(data) < 300 * 1024
    started = time.perf_counter()
    with pytest.raises(DocumentTooLarge) as refused:
        parse_document(data, DOCX)
    assert time.perf_counter() - started < 0.5
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.field == "content" and "inflates" in refused.value.description


def test_a_part_that_inflates_too_many_fold_is_refused() -> None:
    data = docx_with_part("word/media/image1.bin", 4 * 1024 * 1024)  # 4 MiB, ~1000-fold
    with pytest.raises(DocumentTooLarge, match="fold"):
        parse_document(data, DOCX)
    parse_document(data, DOCX, options=ParseOptions(max_compression_ratio=5000))


def test_an_archive_with_too_many_parts_is_refused() -> None:
    with pytest.raises(DocumentTooLarge, match="entries"):
        parse_document(small_docx(), DOCX, options=ParseOptions(max_archive_entries=3))


def test_an_archive_lying_about_its_sizes_is_corrupt_not_inflated() -> None:
    data = lying_docx()
    started = time.perf_counter()
    with pytest.raises(CorruptDocument, match="CRC"):
        parse_document(data, DOCX)
    assert time.perf_counter() - started < 0.5


def test_retrieval_errors_carry_their_status_and_survive_pickling() -> None:
    error = DocumentTooComplex("content", "took too long")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is DocumentTooComplex and copy.description == "took too long"
    status = copy.renamed({"content": "data"}).to_status()
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "data" in status.message
    corrupt = CorruptDocument("content", "bad")
    assert corrupt.code == grpc.StatusCode.INVALID_ARGUMENT
    assert corrupt.renamed({}) is corrupt and isinstance(corrupt, RetrievalError)


@pytest_asyncio.fixture
async def pool() -> AsyncIterator[ParserPool]:
    parsers = ParserPool(ParserLimits(workers=2, timeout_s=2.0, memory_bytes=1024**3))
    await parsers.start()
    yield parsers
    await parsers.close()


def _workers(parsers: ParserPool) -> set[int]:
    assert parsers._pool is not None
    return set(parsers._pool._pool_manager.worker_manager.workers)


async def _settled(parsers: ParserPool, before: set[int]) -> None:
    """Waits (5 s at most) until the pool has all its workers again, not all the old ones."""
    for _ in range(100):
        workers = _workers(parsers)
        if len(workers) == parsers.limits.workers and workers != before:
            return
        await asyncio.sleep(0.05)


async def _max_loop_lag(until: asyncio.Future[Any]) -> float:
    lag = 0.0
    while not until.done():
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        lag = max(lag, time.perf_counter() - started - 0.01)
    return lag


async def test_a_parse_past_its_time_is_killed_and_its_worker_replaced(pool: ParserPool) -> None:
    before = _workers(pool)
    started = time.perf_counter()
    spin = asyncio.ensure_future(pool.parse_and_chunk(spinning_pdf(), "application/pdf", "",
                                                      PARSE, CHUNK))  # fmt: skip
    # Other documents are parsed meanwhile, and the event loop never stalls.
    lag = asyncio.ensure_future(_max_loop_lag(spin))
    chunks = await pool.parse_and_chunk(b"# Tides\nHigh tide at noon.", "text/markdown", "",
                                        PARSE, CHUNK)  # fmt: skip
    assert chunks[0].section == ("Tides",)
    with pytest.raises(DocumentTooComplex, match="longer than 2 s") as stopped:
        await spin
    elapsed = time.perf_counter() - started
    assert 2.0 <= elapsed < 6.0, elapsed
    assert stopped.value.to_status().code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert await lag < 0.25
    again = await pool.parse_and_chunk(b"after the kill", "text/plain", "", PARSE, CHUNK)
    assert again[0].text == "after the kill"
    await _settled(pool, before)  # pebble starts the replacement within a tick
    assert len(_workers(pool)) == 2 and len(_workers(pool) & before) == 1


async def test_a_parse_past_its_memory_fails_alone_and_the_pool_goes_on() -> None:
    parsers = ParserPool(ParserLimits(workers=1, timeout_s=30.0, memory_bytes=400 * 1024**2))
    await parsers.start()
    try:
        text = ("word " * 1_000 + "\n") * 20_000  # 100 MB: its text and chunks exceed 400 MB
        with pytest.raises(DocumentTooComplex, match=r"memory|died"):
            await parsers.parse_and_chunk(
                text.encode(), "text/plain", "", ParseOptions(max_bytes=len(text) + 1), CHUNK
            )
        assert await parsers.parse_and_chunk(b"still here", "text/plain", "", PARSE, CHUNK)
    finally:
        await parsers.close()


async def test_a_cancelled_parse_kills_its_worker(pool: ParserPool) -> None:
    before = _workers(pool)
    spin = asyncio.ensure_future(pool.parse_and_chunk(spinning_pdf(), "application/pdf", "",
                                                      PARSE, CHUNK))  # fmt: skip
    await asyncio.sleep(0.5)
    spin.cancel()
    with pytest.raises(asyncio.CancelledError):
        await spin
    await _settled(pool, before)
    assert len(_workers(pool)) == 2
    assert len(_workers(pool) & before) == 1  # the busy one was replaced, the idle one kept
    assert all(Path(f"/proc/{pid}").exists() for pid in _workers(pool))  # noqa: ASYNC240


async def test_one_tenant_cannot_hold_every_worker(pool: ParserPool) -> None:
    hostile = [
        asyncio.ensure_future(
            pool.parse_and_chunk(spinning_pdf(), "application/pdf", "", PARSE, CHUNK, "hostile")
        )
        for _ in range(2)
    ]
    await asyncio.sleep(0.3)
    started = time.perf_counter()
    chunks = await pool.parse_and_chunk(b"quick", "text/plain", "", PARSE, CHUNK, "polite")
    assert time.perf_counter() - started < 1.0 and chunks[0].text == "quick"
    for task in hostile:
        with pytest.raises(DocumentTooComplex):
            await task


async def test_a_docx_past_the_memory_limit_is_too_complex_not_corrupt() -> None:
    parsers = ParserPool(ParserLimits(workers=1, timeout_s=30.0, memory_bytes=250 * 1024**2))
    await parsers.start()
    lenient = ParseOptions(max_inflated_bytes=1024**3, max_compression_ratio=1e9)
    # python-docx reads the main part whole: 200 MiB past a 250 MiB address space.
    data = docx_with_part("word/document.xml", 200 * 1024 * 1024, byte=b" ")
    try:
        with pytest.raises(DocumentTooComplex, match=r"memory|died"):
            await parsers.parse_and_chunk(data, DOCX, "", lenient, CHUNK)
    finally:
        await parsers.close()
