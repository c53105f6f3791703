from __future__ import annotations

from collections.abc import AsyncIterator

from callisto.services.retrieval.embedder import Embedder
from callisto.services.retrieval.ingest_pipeline import (
    IngestDocument,
    IngestOptions,
    IngestPipeline,
)
from callisto.services.retrieval.milvus_store import MilvusStore
from callisto.services.retrieval.models import DocumentMeta, ProgressKind
from callisto.services.retrieval.parsing import ParseOptions


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 64):
        yield data[i : i + 64]


def _doc(tenant: str, document_id: str, data: bytes, mime: str) -> IngestDocument:
    meta = DocumentMeta(tenant=tenant, document_id=document_id, title=document_id, mime_type=mime)
    return IngestDocument(meta=meta, content=_pieces(data))


async def test_bad_documents_fail_with_typed_reasons_while_the_rest_is_stored(
    store: MilvusStore, embedder: Embedder, tenant: str
) -> None:
    good = [
        _doc(tenant, f"good-{i}", f"# Doc {i}\nGood document number {i}.".encode(), "text/markdown")
        for i in range(5)
    ]
    batch = [
        good[0],
        _doc(tenant, "broken-pdf", b"%PDF-1.4\n garbage", "application/pdf"),
        good[1],
        _doc(tenant, "image", b"\x89PNG", "image/png"),
        good[2],
        _doc(tenant, "huge", b"word " * 400, "text/plain"),
        good[3],
        good[4],
    ]

    async def source() -> AsyncIterator[IngestDocument]:
        for d in batch:
            yield d

    pipeline = IngestPipeline(
        store, embedder, IngestOptions(parse=ParseOptions(max_bytes=1000), queue_size=2)
    )
    events = [e async for e in pipeline.run(source())]
    failed = {e.document_id: e for e in events if e.kind is ProgressKind.DOCUMENT_FAILED}
    assert set(failed) == {"broken-pdf", "image", "huge"}
    assert failed["image"].error_field == "mime_type"
    assert "PDF" in failed["broken-pdf"].error
    assert "limit" in failed["huge"].error
    stored = [e.document_id for e in events if e.kind is ProgressKind.DOCUMENT_STORED]
    assert sorted(stored) == [f"good-{i}" for i in range(5)]
    last = events[-1]
    assert (last.documents_failed, last.chunks_stored) == (3, 5)
    assert last.chunks_embedded == 5 and last.documents_parsed == 5
    assert await store.count_chunks(tenant) == 5
