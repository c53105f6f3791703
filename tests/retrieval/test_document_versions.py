"""Document versions in the Milvus store: atomic switches, paging, timestamps, reads beside
writes and how Milvus errors surface (real Milvus Lite, the word-hashing embedder)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest
from retrieval_test_support import HashingEmbedder

from callisto.services.retrieval.errors import BackendUnavailable
from callisto.services.retrieval.ingest_pipeline import (
    IngestDocument,
    IngestOptions,
    IngestPipeline,
)
from callisto.services.retrieval.milvus_store import (
    BackendRejected,
    DocumentWrite,
    MilvusConfig,
    MilvusStore,
)
from callisto.services.retrieval.models import Chunk, DocumentMeta, ProgressKind, SearchMode


def version(tenant: str, word: str, count: int) -> tuple[DocumentMeta, list[Chunk], str]:
    """A document of ``count`` one-sentence chunks naming its version."""
    chunks, start = [], 0
    for i in range(count):
        text = f"Sentence {i} of the {word} version."
        chunks.append(Chunk(index=i, text=text, start=start, end=start + len(text)))
        start += len(text) + 1
    meta = DocumentMeta(tenant=tenant, document_id="doc", title="Doc", mime_type="text/plain")
    return meta, chunks, word


class InterruptedStore(MilvusStore):
    """The real store whose next chunk write stops after its first batch, as a client cancel or
    a Milvus timeout would stop it."""

    interrupt: BaseException | None = None

    async def _write(self, collection: str, rows: Sequence[dict[str, Any]], **kwargs: Any) -> int:
        if self.interrupt is None or collection != self.config.chunk_collection:
            return await super()._write(collection, rows, **kwargs)
        await super()._write(collection, rows[:256], **kwargs)
        error, self.interrupt = self.interrupt, None
        raise error


@pytest.fixture
async def interrupted(store: MilvusStore) -> AsyncIterator[InterruptedStore]:
    opened = await InterruptedStore.open(store.config)
    yield opened
    await opened.close()


async def words_found(store: MilvusStore, tenant: str, word: str) -> set[str]:
    hits = await store.search_chunks(tenant, mode=SearchMode.BM25, query_text=word, top_k=100)
    return {w for h in hits for w in ("old", "new") if f"the {w} version" in h.text}


@pytest.mark.parametrize(
    "interruption",
    [asyncio.CancelledError(), BackendUnavailable("milvus", "timed out")],
    ids=["client-cancel", "milvus-timeout"],
)
async def test_an_interrupted_write_keeps_the_old_version_whole_and_a_retry_reingests(
    interrupted: InterruptedStore,
    embedder: HashingEmbedder,
    tenant: str,
    interruption: BaseException,
) -> None:
    meta, old_chunks, _ = version(tenant, "old", 300)
    old_vectors = await embedder.embed([c.text for c in old_chunks])
    await interrupted.upsert_document(meta, old_chunks, old_vectors, "hash-old")
    _, new_chunks, _ = version(tenant, "new", 320)
    assert len(new_chunks) > 256, "the write must need more than one batch"
    new_vectors = await embedder.embed([c.text for c in new_chunks])

    interrupted.interrupt = interruption
    with pytest.raises(type(interruption)):
        await interrupted.upsert_document(meta, new_chunks, new_vectors, "hash-new")
    await interrupted.flush()

    info = await interrupted.get_document(tenant, "doc")
    assert (info.content_hash, info.chunk_count) == ("hash-old", len(old_chunks))
    assert await words_found(interrupted, tenant, "version") == {"old"}
    assert await words_found(interrupted, tenant, "new") == set()
    assert await interrupted.document_hash(tenant, "doc") == "hash-old"

    retry = await interrupted.upsert_document(meta, new_chunks, new_vectors, "hash-new")
    assert not retry.unchanged
    info = await interrupted.get_document(tenant, "doc")
    assert (info.content_hash, info.chunk_count) == ("hash-new", len(new_chunks))
    assert await words_found(interrupted, tenant, "version") == {"new"}
    # The interrupted write's chunks and the old version are gone, not just hidden.
    assert await interrupted.count_chunks(tenant) == len(new_chunks)


async def test_list_documents_pages_past_the_16384_row_query_window(
    store: MilvusStore, tenant: str
) -> None:
    total = 16_384 + 1_616
    rows = [
        MilvusStore._header_row(
            DocumentWrite(
                DocumentMeta(tenant=tenant, document_id=f"d{i:05d}"),
                (),
                np.zeros((0, 384), dtype=np.float32),
                "h",
            ),
            generation="g",
            created=1,
            updated=1,
        )
        for i in reversed(range(total))
    ]
    for i in range(0, total, 5000):
        await store._call(
            store._client.insert, store.config.document_collection, rows[i : i + 5000]
        )
    await store.flush()
    seen: list[str] = []
    token = ""
    while True:
        page = await store.list_documents(tenant, page_size=1000, page_token=token)
        seen += [d.document_id for d in page.documents]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"d{i:05d}" for i in range(total)]


async def test_documents_report_their_update_time_and_size(
    store: MilvusStore, embedder: HashingEmbedder, tenant: str
) -> None:
    meta, chunks, _ = version(tenant, "old", 3)
    await store.upsert_document(
        meta, chunks, await embedder.embed([c.text for c in chunks]), "h1", size_bytes=111
    )
    first = await store.get_document(tenant, "doc")
    await asyncio.sleep(0.02)
    _, chunks, _ = version(tenant, "new", 5)
    await store.upsert_document(
        meta, chunks, await embedder.embed([c.text for c in chunks]), "h2", size_bytes=222
    )
    second = await store.get_document(tenant, "doc")
    assert first.size_bytes == 111 and second.size_bytes == 222
    assert second.created_time_ms == first.created_time_ms
    assert first.updated_time_ms >= first.created_time_ms
    assert second.updated_time_ms > first.updated_time_ms
    listed = (await store.list_documents(tenant)).documents
    assert [(d.size_bytes, d.updated_time_ms) for d in listed] == [(222, second.updated_time_ms)]


async def test_reads_never_wait_behind_a_write_in_progress(
    store: MilvusStore, embedder: HashingEmbedder, tenant: str
) -> None:
    meta, chunks, _ = version(tenant, "old", 3)
    await store.upsert_document(meta, chunks, await embedder.embed([c.text for c in chunks]), "h")
    # Occupy the writer as a long bulk write would.
    busy = asyncio.create_task(store._call(time.sleep, 3.0))
    await asyncio.sleep(0.1)
    try:
        started = time.perf_counter()
        async with asyncio.timeout(2.0):
            assert await store.ping()
            hits = await store.search_chunks(
                tenant, mode=SearchMode.BM25, query_text="version", top_k=3
            )
            await store.get_document(tenant, "doc")
        assert hits and time.perf_counter() - started < 2.0
        assert not busy.done()
    finally:
        await busy


async def test_milvus_rejections_are_permanent_and_keep_milvus_text_out(
    store: MilvusStore,
) -> None:
    with pytest.raises(BackendRejected) as rejected:
        await store._read(
            store._reader.query, store.config.chunk_collection, filter="bogus ==== 3", limit=1
        )
    assert "bogus" not in rejected.value.description
    assert not isinstance(rejected.value, BackendUnavailable)


async def test_an_unreachable_milvus_is_retryable_and_keeps_milvus_text_out() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.perf_counter()
    with pytest.raises(BackendUnavailable) as unavailable:
        await MilvusStore.open(MilvusConfig(uri=f"http://127.0.0.1:{port}", timeout_s=2.0))
    assert str(port) not in unavailable.value.description
    assert time.perf_counter() - started < 30


async def test_ingestion_keeps_its_speed_while_unflushed_rows_pile_up(
    store: MilvusStore, embedder: HashingEmbedder, tenant: str
) -> None:
    """Per-document lookups, switches and deletes go by key: a stream of one-chunk documents
    must not slow down as unflushed rows grow (filter scans made it fall ~10x by 2,500)."""
    count, window = 3000, 500
    arrivals: list[float] = []

    async def source() -> AsyncIterator[IngestDocument]:
        for i in range(count):
            meta = DocumentMeta(tenant=tenant, document_id=f"n{i:05d}", mime_type="text/plain")
            yield IngestDocument(meta, _one(f"Note {i} about cargo {i * 7919 % 104729}."))

    # No flush until the end: every row stays in Milvus Lite's unflushed table.
    pipeline = IngestPipeline(store, embedder, IngestOptions(flush_every_chunks=10**9))
    started = time.perf_counter()
    async for event in pipeline.run(source()):
        assert event.kind is not ProgressKind.DOCUMENT_FAILED, event
        if event.kind is ProgressKind.DOCUMENT_STORED:
            arrivals.append(time.perf_counter())
    assert len(arrivals) == count
    first = window / (arrivals[window - 1] - started)
    last = window / (arrivals[-1] - arrivals[-window - 1])
    assert last >= 0.5 * first, f"first {window}: {first:.0f}/s, last {window}: {last:.0f}/s"


async def _one(text: str) -> AsyncIterator[bytes]:
    yield text.encode()
