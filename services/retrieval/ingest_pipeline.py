"""Streaming ingestion: read → parse → chunk → embed → store as bounded asyncio stages.

Stages are connected by queues bounded by a budget of chunks in flight (``max_chunks_in_flight``
between parsing and storage; a document larger than the budget goes alone), so the embedder stays
busy while the next documents are parsed and the previous ones written, and memory stays bounded
(a document's bytes are assembled only up to the size limit). Small documents are embedded and
written together: an embedding request takes the chunks of every document waiting (up to
``embed_batch_chunks``), and a write takes every embedded document waiting, so a stream of
one-chunk documents costs a few requests per batch rather than several per document.
Documents are parsed by a :class:`DocumentParser`: the service's is a pool of worker processes
bounded in memory and time. A failing document yields a ``DOCUMENT_FAILED`` event carrying its
typed error; the rest go on. An unexpected failure is logged with its traceback and reported as
INTERNAL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt

from callisto.services.common.errors import CallistoError, Internal, as_callisto_error
from callisto.services.retrieval.chunking import ChunkOptions
from callisto.services.retrieval.embedder import Embedder
from callisto.services.retrieval.errors import DocumentTooLarge, NotFound, RetrievalError
from callisto.services.retrieval.filters import validate_id
from callisto.services.retrieval.milvus_store import DocumentWrite, MilvusStore
from callisto.services.retrieval.models import (
    Chunk,
    DocumentMeta,
    ProgressEvent,
    ProgressKind,
)
from callisto.services.retrieval.parse_pool import DocumentParser, ThreadParser
from callisto.services.retrieval.parsing import ParseOptions, resolve_mime_type

log = logging.getLogger("callisto.retrieval")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IngestDocument:
    """A document to ingest; ``content`` yields its bytes in pieces (e.g. from a gRPC stream)."""

    meta: DocumentMeta
    content: AsyncIterable[bytes]
    filename: str = ""
    # Per-document chunking and CSV mode; the pipeline's options when None.
    chunk: ChunkOptions | None = None
    csv_mode: Literal["rows", "table"] | None = None


@dataclass(frozen=True, slots=True)
class IngestOptions:
    parse: ParseOptions = field(default_factory=ParseOptions)
    chunk: ChunkOptions = field(default_factory=ChunkOptions)
    # No longer bounds anything (the chunk budget below does); kept so callers still work.
    queue_size: int = 4
    embed_workers: int = 2
    # Chunks parsed but not yet stored; bounds memory and lets small documents batch up.
    max_chunks_in_flight: int = 2048
    # Chunks one embedding call takes from the documents waiting (the embedder splits further).
    embed_batch_chunks: int = 256
    # Chunks one store write takes from the embedded documents waiting.
    write_batch_chunks: int = 1024
    # Written chunks are flushed once this many are pending, and at the end of every batch:
    # Milvus Lite keeps unflushed rows in memory and slows down as they pile up.
    flush_every_chunks: int = 1024


@dataclass(slots=True)
class _Parsed:
    meta: DocumentMeta
    chunks: list[Chunk]
    content_hash: str
    size_bytes: int


@dataclass(slots=True)
class _Embedded:
    parsed: _Parsed
    vectors: npt.NDArray[np.float32]


class _Budget:
    """Chunks in flight between parsing and storage; a document larger than the whole budget
    waits until nothing else is in flight."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._changed = asyncio.Condition()

    async def acquire(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._used == 0 or self._used + count <= self._limit
            )
            self._used += count

    async def release(self, count: int) -> None:
        async with self._changed:
            self._used -= count
            self._changed.notify_all()


def _drain(queue: asyncio.Queue[T | None], first: T, size: Callable[[T], int], limit: int) -> (
    tuple[list[T], bool]
):  # fmt: skip
    """``first`` plus what is already waiting, up to ``limit`` in total size; True when the
    end-of-stream marker was taken."""
    items, total = [first], size(first)
    while total < limit and not queue.empty():
        item = queue.get_nowait()
        if item is None:
            return items, True
        items.append(item)
        total += size(item)
    return items, False


@dataclass(slots=True)
class _Counters:
    parsed: int = 0
    embedded: int = 0
    stored: int = 0
    failed: int = 0


async def read_limited(content: AsyncIterable[bytes], max_bytes: int) -> tuple[bytes, str]:
    """Assemble at most ``max_bytes`` bytes (else :class:`DocumentTooLarge`) and their sha256."""
    digest = hashlib.sha256()
    parts: list[bytes] = []
    size = 0
    async for piece in content:
        size += len(piece)
        if size > max_bytes:
            raise DocumentTooLarge("content", f"document is larger than the {max_bytes}-byte limit")
        digest.update(piece)
        parts.append(piece)
    return b"".join(parts), digest.hexdigest()


class IngestPipeline:
    """Runs batches of documents through parse → embed → store, yielding progress events.

    ``parser`` defaults to parsing in a thread of this process, which suits trusted documents
    only; the service passes its :class:`~callisto.services.retrieval.parse_pool.ParserPool`.
    """

    def __init__(
        self,
        store: MilvusStore,
        embedder: Embedder,
        options: IngestOptions | None = None,
        parser: DocumentParser | None = None,
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._options = options or IngestOptions()
        self._parser = parser or ThreadParser()

    async def run(self, documents: AsyncIterable[IngestDocument]) -> AsyncIterator[ProgressEvent]:
        """Ingest ``documents``; events arrive as work completes, ending when all are done."""
        options = self._options
        # Unbounded queues: the chunk budget bounds what they hold.
        parsed_q: asyncio.Queue[_Parsed | None] = asyncio.Queue()
        embedded_q: asyncio.Queue[_Embedded | None] = asyncio.Queue()
        budget = _Budget(options.max_chunks_in_flight)
        events: asyncio.Queue[ProgressEvent | None] = asyncio.Queue()
        counters = _Counters()

        def emit(
            kind: ProgressKind,
            document_id: str,
            chunk_count: int = 0,
            error: CallistoError | None = None,
            *,
            created: bool = False,
            content_hash: str = "",
            size_bytes: int = 0,
        ) -> None:
            events.put_nowait(
                ProgressEvent(
                    kind=kind,
                    document_id=document_id,
                    documents_parsed=counters.parsed,
                    chunks_embedded=counters.embedded,
                    chunks_stored=counters.stored,
                    documents_failed=counters.failed,
                    chunk_count=chunk_count,
                    error_field=_field(error),
                    error=_description(error),
                    failure=error,
                    created=created,
                    content_hash=content_hash,
                    size_bytes=size_bytes,
                )
            )

        def fail(meta: DocumentMeta, exc: BaseException) -> None:
            counters.failed += 1
            error = as_callisto_error(exc)
            if error is None:
                log.error(
                    "ingest of a document failed unexpectedly",
                    exc_info=exc,
                    extra={"fields": {"tenant": meta.tenant, "document_id": meta.document_id}},
                )
                error = Internal("internal error")
            emit(ProgressKind.DOCUMENT_FAILED, meta.document_id, error=error)

        async def produce() -> None:
            try:
                async for document in documents:
                    meta = document.meta
                    try:
                        validate_id(meta.tenant, "tenant")
                        validate_id(meta.document_id, "document_id")
                        mime = resolve_mime_type(meta.mime_type, document.filename)
                        if mime != meta.mime_type:
                            meta = _with_mime(meta, mime)
                        data, content_hash = await read_limited(
                            document.content, options.parse.max_bytes
                        )
                        size = len(data)
                        if await self._unchanged(meta, content_hash):
                            counters.parsed += 1
                            emit(
                                ProgressKind.DOCUMENT_UNCHANGED,
                                meta.document_id,
                                content_hash=content_hash,
                                size_bytes=size,
                            )
                            continue
                        if meta is not document.meta:
                            document = dataclasses.replace(document, meta=meta)
                        chunks = await self._parse(data, document)
                        del data
                    except Exception as exc:  # one bad document must not stop the batch
                        fail(meta, exc)
                        continue
                    counters.parsed += 1
                    emit(ProgressKind.DOCUMENT_PARSED, meta.document_id, len(chunks))
                    await budget.acquire(len(chunks))
                    await parsed_q.put(_Parsed(meta, chunks, content_hash, size))
            finally:
                for _ in range(options.embed_workers):
                    await parsed_q.put(None)

        async def embed() -> None:
            ended = False
            while not ended and (first := await parsed_q.get()) is not None:
                batch, ended = _drain(
                    parsed_q, first, lambda p: len(p.chunks), options.embed_batch_chunks
                )
                try:
                    vectors = await self._embedder.embed(
                        [c.text for item in batch for c in item.chunks]
                    )
                except Exception as exc:
                    for item in batch:
                        await budget.release(len(item.chunks))
                        fail(item.meta, exc)
                    continue
                start = 0
                for item in batch:
                    count = len(item.chunks)
                    counters.embedded += count
                    emit(ProgressKind.CHUNKS_EMBEDDED, item.meta.document_id, count)
                    await embedded_q.put(_Embedded(item, vectors[start : start + count]))
                    start += count

        async def store() -> None:
            pending = 0
            ended = False
            while not ended and (first := await embedded_q.get()) is not None:
                batch, ended = _drain(
                    embedded_q, first, lambda e: len(e.parsed.chunks), options.write_batch_chunks
                )
                writes = [
                    DocumentWrite(
                        e.parsed.meta,
                        e.parsed.chunks,
                        e.vectors,
                        e.parsed.content_hash,
                        e.parsed.size_bytes,
                    )
                    for e in batch
                ]
                try:
                    try:
                        results = await self._store.upsert_documents(writes)
                        pending += sum(r.chunks_written for r in results)
                        if pending >= options.flush_every_chunks:
                            pending = 0
                            await self._store.flush()
                    finally:
                        for write in writes:
                            await budget.release(len(write.chunks))
                except Exception as exc:
                    for write in writes:
                        fail(write.meta, exc)
                    continue
                for write, result in zip(writes, results, strict=True):
                    kind = (
                        ProgressKind.DOCUMENT_UNCHANGED
                        if result.unchanged
                        else ProgressKind.DOCUMENT_STORED
                    )
                    counters.stored += result.chunks_written
                    emit(
                        kind,
                        write.meta.document_id,
                        result.chunks_written,
                        created=result.created,
                        content_hash=write.content_hash,
                        size_bytes=write.size_bytes,
                    )
            if pending:
                await self._store.flush()

        async def orchestrate() -> None:
            try:
                embedders = [asyncio.create_task(embed()) for _ in range(options.embed_workers)]
                writer = asyncio.create_task(store())
                try:
                    await produce()
                    await asyncio.gather(*embedders)
                    await embedded_q.put(None)
                    await writer
                except BaseException:
                    for task in (*embedders, writer):
                        task.cancel()
                    raise
            finally:
                events.put_nowait(None)

        runner = asyncio.create_task(orchestrate())
        try:
            while (event := await events.get()) is not None:
                yield event
            await runner  # re-raise a failure of the document source itself
        finally:
            if not runner.done():
                runner.cancel()

    async def _parse(self, data: bytes, document: IngestDocument) -> list[Chunk]:
        parse = self._options.parse
        if document.csv_mode is not None and document.csv_mode != parse.csv_mode:
            parse = dataclasses.replace(parse, csv_mode=document.csv_mode)
        return await self._parser.parse_and_chunk(
            data,
            document.meta.mime_type,
            document.filename,
            parse,
            document.chunk or self._options.chunk,
            tenant=document.meta.tenant,
        )

    async def _unchanged(self, meta: DocumentMeta, content_hash: str) -> bool:
        """Skip parsing and embedding when the stored document already has this content."""
        try:
            info = await self._store.get_document(meta.tenant, meta.document_id)
        except NotFound:
            return False
        return (
            info.content_hash == content_hash
            and info.title == meta.title
            and info.source_uri == meta.source_uri
            and info.mime_type == meta.mime_type
            and info.tags == tuple(meta.tags)
            and info.attributes == dict(meta.attributes)
        )


def _field(error: CallistoError | None) -> str:
    if isinstance(error, RetrievalError):
        return error.field
    return error.violations[0].field if error is not None and error.violations else ""


def _description(error: CallistoError | None) -> str:
    if isinstance(error, RetrievalError):
        return error.description
    if error is not None and error.violations:
        return error.violations[0].description
    return error.message if error is not None else ""


def _with_mime(meta: DocumentMeta, mime_type: str) -> DocumentMeta:
    return DocumentMeta(
        tenant=meta.tenant,
        document_id=meta.document_id,
        title=meta.title,
        source_uri=meta.source_uri,
        mime_type=mime_type,
        tags=meta.tags,
        attributes=meta.attributes,
    )
