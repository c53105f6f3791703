from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import grpc
import numpy as np
import numpy.typing as npt
import pytest

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
    codes = {i: e.failure.code for i, e in failed.items() if e.failure is not None}
    assert codes == {
        "broken-pdf": grpc.StatusCode.INVALID_ARGUMENT,
        "image": grpc.StatusCode.INVALID_ARGUMENT,
        "huge": grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
    assert "PDF" in failed["broken-pdf"].error
    assert "limit" in failed["huge"].error
    stored = [e.document_id for e in events if e.kind is ProgressKind.DOCUMENT_STORED]
    assert sorted(stored) == [f"good-{i}" for i in range(5)]
    last = events[-1]
    assert (last.documents_failed, last.chunks_stored) == (3, 5)
    assert last.chunks_embedded == 5 and last.documents_parsed == 5
    assert await store.count_chunks(tenant) == 5


class BrokenEmbedder:
    """Fails the way a bug would: with an untyped exception."""

    dim = 384

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        raise RuntimeError("embedder bug: index out of range")


async def test_an_unexpected_failure_is_logged_with_its_traceback_and_reported_as_internal(
    store: MilvusStore, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="callisto.retrieval")

    async def source() -> AsyncIterator[IngestDocument]:
        yield _doc(tenant, "victim", b"Some text to embed.", "text/plain")

    events = [e async for e in IngestPipeline(store, BrokenEmbedder()).run(source())]
    failed = [e for e in events if e.kind is ProgressKind.DOCUMENT_FAILED]
    assert len(failed) == 1 and failed[0].failure is not None
    assert failed[0].failure.code == grpc.StatusCode.INTERNAL
    assert "embedder bug" not in failed[0].failure.message  # never leaked to the client
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "embedder bug" in caplog.text and "Traceback" in caplog.text
    assert errors[0].fields == {"tenant": tenant, "document_id": "victim"}  # type: ignore[attr-defined]
