"""Milvus storage for document chunks and faceted entities (pymilvus ``MilvusClient``).

The URI is configuration: a file path (``data/callisto.db``) runs Milvus Lite embedded, an
``http://host:port`` URI talks to a Milvus server. pymilvus is blocking, so calls run on worker
threads owned by the store, never on the event loop: writes on one thread (they stay ordered),
reads (searches, lookups, the health ping) on a pool of their own with their own client, so a bulk
ingest never queues a search or a probe behind its batches.

Documents: one header row per document in its own collection (key ``tenant/document_id``) names
the document's current chunk *generation*. A write stores the new chunks under a fresh generation,
then switches the header, then deletes the old generation, so a reader sees the old version or
the new one, never a mix; an interrupted write leaves the old header (and content hash) in place,
so a retry re-ingests. Every per-document lookup, switch and delete goes by primary key (chunk ids
derive from tenant, document, generation and index), never by a filter scan: Milvus Lite scans
every unflushed row for a filter, which made long ingests slow down as they went.

Isolation: ``tenant`` is the collection's partition key, and every query, search, hybrid
sub-request and delete ANDs an escaped ``tenant == "..."`` clause (the partition key alone is not a
security boundary). Ids are validated before they reach an expression because pymilvus pastes
``ids=`` values unescaped; this module therefore never uses ``get(ids=...)``/``delete(ids=...)``
with caller-supplied ids. Lookups by primary keys this module derives from the tenant (header
keys, chunk ids) skip the tenant clause so Milvus can serve them without a scan; each returned
row's tenant is checked again here.

BM25 scores come back negative from Milvus Lite (the order is right); hits report ``abs(score)``
so larger is better on both Lite and a server. BM25 indexes the ``keywords`` field: the chunk text
after the collection's :class:`~callisto.services.retrieval.analysis.TextAnalyzer` (stemming and
stop words, which Milvus Lite's own analyzers lack). Hybrid search runs the dense and the BM25
search separately and fuses them here (:mod:`~callisto.services.retrieval.fusion`), which lets
fusion normalise scores the way measurements showed best.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from callisto.services.retrieval import fusion as fusing
from callisto.services.retrieval.analysis import PROPERTY as ANALYZER_PROPERTY
from callisto.services.retrieval.analysis import TextAnalyzer
from callisto.services.retrieval.errors import (
    BackendUnavailable,
    InvalidArgument,
    NotFound,
    RetrievalError,
)
from callisto.services.retrieval.filters import (
    CHUNK_FIELDS,
    ENTITY_FIELDS,
    Condition,
    FieldKind,
    build_expression,
    escape_string,
    validate_id,
)
from callisto.services.retrieval.models import (
    DEFAULT_FUSION,
    AttributeValue,
    Chunk,
    DocumentInfo,
    DocumentMeta,
    DocumentPage,
    Fusion,
    FusionKind,
    SearchHit,
    SearchMode,
    UpsertResult,
    section_path,
)

T = TypeVar("T")
Row = dict[str, Any]
log = logging.getLogger("callisto.retrieval.milvus")

# Milvus caps offset + limit of a search or query at 16384.
MAX_WINDOW = 16384
_WRITE_BATCH = 256
_MAX_TEXT = 65535
# Schema limits; request validation (server.py, facets.py) enforces the same numbers.
MAX_ID = 128
MAX_TITLE = 1024
MAX_SOURCE_URI = 2048
MAX_MIME_TYPE = 128
MAX_TAGS = 64
MAX_TAG = 128
MAX_ENTITY_TYPE = 64
MAX_FACET = 64
MAX_SECTION = 2048
# Filterable fields of the document header collection (ListDocuments).
DOCUMENT_FIELDS: Mapping[str, FieldKind] = {
    "document_id": "str",
    "title": "str",
    "source_uri": "str",
    "mime_type": "str",
    "tags": "str_array",
    "created_time_ms": "int",
    "updated_time_ms": "int",
}
_CHUNK_OUTPUT = [
    "id",
    "document_id",
    "generation",
    "title",
    "source_uri",
    "mime_type",
    "tags",
    "attributes",
    "chunk_index",
    "start_offset",
    "end_offset",
    "page",
    "section",
    "text",
]
_DOC_OUTPUT = [
    "id",
    "tenant",
    "document_id",
    "title",
    "source_uri",
    "mime_type",
    "tags",
    "attributes",
    "content_hash",
    "chunk_count",
    "generation",
    "orphan_generation",
    "orphan_count",
    "created_time_ms",
    "updated_time_ms",
    "size_bytes",
]
_ENTITY_OUTPUT = ["id", "entity_id", "entity_type", "facet", "title", "text", "attributes"]


@dataclass(frozen=True, slots=True)
class MilvusConfig:
    """Where Milvus is and how the collections are laid out."""

    uri: str = "data/callisto.db"
    token: str = ""
    chunk_collection: str = "callisto_chunks"
    entity_collection: str = "callisto_entities"
    document_collection: str = "callisto_documents"
    dim: int = 384
    num_partitions: int = 16
    # HNSW needs ef >= 256 for good recall on Milvus Lite (measured); FLAT is exact.
    index_type: str = "HNSW"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef: int = 256
    timeout_s: float = 30.0
    # Candidates each hybrid sub-search contributes to fusion; a fixed pool (rather than
    # offset + top_k) keeps fused ranks, and so offset pages, stable.
    hybrid_candidates: int = 100
    # Keyword analyzer of new collections (a Snowball language or "none"); an existing
    # collection keeps the analyzer it was created with.
    text_analyzer: str = "english"
    # Threads serving reads (searches, lookups, health pings); writes have one of their own.
    read_workers: int = 4


@dataclass(frozen=True, slots=True)
class EntityRow:
    """One stored entity record: the master (``facet == "master"``) or one facet."""

    entity_id: str
    entity_type: str
    facet: str
    title: str
    text: str
    attributes: Mapping[str, AttributeValue]
    content_hash: str


@dataclass(frozen=True, slots=True)
class EntityRecordHit:
    """A matching entity record and its search score."""

    record_id: str
    entity_id: str
    entity_type: str
    facet: str
    title: str
    text: str
    attributes: dict[str, AttributeValue]
    score: float


@dataclass(frozen=True, slots=True)
class DocumentWrite:
    """One document to store: its metadata, chunks, one vector per chunk and content hash."""

    meta: DocumentMeta
    chunks: Sequence[Chunk]
    vectors: npt.NDArray[np.float32]
    content_hash: str
    size_bytes: int = 0


class BackendRejected(RetrievalError):
    """Milvus refused a request as invalid: a bug here (validation should have caught it), so
    it is not retryable and Milvus's text stays in the log."""


def chunk_id(tenant: str, document_id: str, generation: str, index: int) -> str:
    """Deterministic chunk primary key (hex, so it is always safe inside an expression)."""
    key = f"{tenant}\x1f{document_id}\x1f{generation}\x1f{index}"
    return hashlib.sha256(key.encode()).hexdigest()[:40]


def document_key(tenant: str, document_id: str) -> str:
    """Primary key of a document's header row; within a tenant it sorts like the document id
    ('/' is in neither id alphabet, so keys never collide)."""
    return f"{tenant}/{document_id}"


def _chunk_ids(tenant: str, document_id: str, generation: str, count: int) -> list[str]:
    return (
        [chunk_id(tenant, document_id, generation, i) for i in range(count)] if generation else []
    )


_RETRYABLE_CODES = frozenset({1, 2, 3, 4, 7, 8})  # not ready, unavailable, limits, rate limit
# "Collection is in state 'released'": a Milvus server that restarted loads nothing by itself.
_NOT_LOADED = 101


class _CollectionReleased(Exception):
    """Milvus holds the collection but has not loaded it (its server restarted)."""


def classify_milvus_error(exc: BaseException) -> RetrievalError:
    """Connection failures, timeouts and overload are retryable (UNAVAILABLE); anything else
    Milvus rejects is permanent. Neither carries Milvus's text to the caller."""
    import grpc
    from pymilvus import exceptions as mx

    # pymilvus's own checks of a request (code 1 like a server that is not ready yet).
    client_side = (
        mx.ParamError
        | mx.DataNotMatchException
        | mx.DataTypeNotMatchException
        | mx.DataTypeNotSupportException
        | mx.SchemaNotReadyException
        | mx.PrimaryKeyException
        | mx.PartitionKeyException
        | mx.FieldTypeException
        | mx.FieldsTypeException
        | mx.CollectionNotExistException
    )
    retryable = not isinstance(exc, client_side) and isinstance(
        exc,
        mx.ConnectError
        | mx.ConnectionNotExistException
        | mx.MilvusUnavailableException
        | grpc.RpcError
        | grpc.FutureTimeoutError
        | TimeoutError,
    )
    if isinstance(exc, mx.MilvusException) and not isinstance(exc, client_side) and not retryable:
        code = exc.code
        # pymilvus reports a gRPC failure with the gRPC status code as its code.
        retryable = isinstance(code, grpc.StatusCode) or code in _RETRYABLE_CODES
    if retryable:
        log.warning("milvus unavailable", extra={"fields": {"error": repr(exc)}})
        return BackendUnavailable("milvus", "Milvus did not answer; retry later")
    log.error("milvus rejected a request", extra={"fields": {"error": repr(exc)}})
    return BackendRejected("milvus", "the storage backend rejected the request")


def entity_record_id(tenant: str, entity_id: str, facet: str) -> str:
    digest = hashlib.sha256(f"{tenant}\x1f{entity_id}\x1f{facet}".encode()).hexdigest()
    return digest[:40]


def _id_list(ids: Sequence[str]) -> str:
    return "[" + ", ".join(escape_string(i, "id") for i in ids) + "]"


class MilvusStore:
    """Async facade over pymilvus ``MilvusClient``s; create with :meth:`open`."""

    def __init__(self, config: MilvusConfig) -> None:
        self.config = config
        # One writer thread keeps writes ordered; reads get their own threads and client.
        self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="milvus-write")
        self._reads = ThreadPoolExecutor(
            max_workers=max(1, config.read_workers), thread_name_prefix="milvus-read"
        )
        self._client: Any = None
        # collection -> its keyword analyzer; None for a collection made before analysis
        # existed (BM25 then indexes the raw text, as it was written).
        self._analyzers: dict[str, TextAnalyzer | None] = {}
        self._reader: Any = None

    @classmethod
    async def open(cls, config: MilvusConfig) -> MilvusStore:
        store = cls(config)
        try:
            await store._call(store._connect)
            await store._read(store._connect_reader)
        except BaseException:
            # A caller that retries (a health probe) must not leak threads per attempt.
            store._shutdown(wait=False)
            raise
        return store

    def _shutdown(self, *, wait: bool) -> None:
        self._writes.shutdown(wait=wait)
        self._reads.shutdown(wait=wait)

    async def close(self) -> None:
        if self._reader is not None:
            await self._read(self._reader.close)
            self._reader = None
        if self._client is not None:
            await self._call(self._client.close)
            self._client = None
        self._shutdown(wait=True)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a write (or schema) call on the writer thread."""
        return await self._loaded(self._writes, fn, *args, **kwargs)

    async def _read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a read on the read pool: never queued behind writes."""
        return await self._loaded(self._reads, fn, *args, **kwargs)

    async def _loaded(
        self, executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """Runs the call; when Milvus came back without the collections loaded, loads them
        and runs it once more (still released: unavailable, to be retried)."""
        try:
            return await self._run(executor, fn, *args, **kwargs)
        except _CollectionReleased:
            log.warning("milvus collections were released (a server restart); loading them")
        try:
            await self._run(self._writes, self._load_collections)
            return await self._run(executor, fn, *args, **kwargs)
        except _CollectionReleased as error:
            raise BackendUnavailable("milvus", "Milvus is loading the collections") from error

    def _load_collections(self) -> None:
        for name in (
            self.config.chunk_collection,
            self.config.entity_collection,
            self.config.document_collection,
        ):
            self._client.load_collection(name)

    @staticmethod
    async def _run(
        executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        import grpc
        from pymilvus.exceptions import MilvusException

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, partial(fn, *args, **kwargs))
        except (MilvusException, grpc.RpcError, grpc.FutureTimeoutError, TimeoutError) as exc:
            if isinstance(exc, MilvusException) and exc.code == _NOT_LOADED:
                raise _CollectionReleased() from exc
            raise classify_milvus_error(exc) from exc

    # ----------------------------------------------------------------- schema
    def _new_client(self) -> Any:
        from pymilvus import MilvusClient

        return MilvusClient(
            uri=self.config.uri, token=self.config.token, timeout=self.config.timeout_s
        )

    def _connect(self) -> None:
        self._client = self._new_client()
        if not self._client.has_collection(self.config.chunk_collection):
            self._create_chunks()
        if not self._client.has_collection(self.config.entity_collection):
            self._create_entities()
        if not self._client.has_collection(self.config.document_collection):
            self._create_documents()
        self._load_collections()
        for name in (self.config.chunk_collection, self.config.entity_collection):
            self._analyzers[name] = self._stored_analyzer(name)

    def _connect_reader(self) -> None:
        # Milvus Lite serves every client of one .db from the same in-process server.
        self._reader = self._new_client()

    def _stored_analyzer(self, name: str) -> TextAnalyzer | None:
        described = self._client.describe_collection(name)
        if not any(f.get("name") == "keywords" for f in described.get("fields", ())):
            return None
        language = (described.get("properties") or {}).get(ANALYZER_PROPERTY, "")
        return TextAnalyzer(str(language or self.config.text_analyzer))

    def _keywords(self, collection: str, text: str) -> str:
        """What BM25 sees of a text (or a query) in ``collection``."""
        analyzer = self._analyzers.get(collection)
        return text if analyzer is None else analyzer.analyse(text)[:_MAX_TEXT]

    def _base_schema(self) -> Any:
        from pymilvus import DataType

        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, max_length=64, is_primary=True)
        schema.add_field("tenant", DataType.VARCHAR, max_length=128, is_partition_key=True)
        return schema

    def _finish_schema(self, schema: Any, name: str, scalar_indexes: Sequence[str]) -> None:
        from pymilvus import DataType, Function, FunctionType

        schema.add_field("title", DataType.VARCHAR, max_length=1024)
        schema.add_field("attributes", DataType.JSON)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("text", DataType.VARCHAR, max_length=_MAX_TEXT)
        # Analysed words (TextAnalyzer); Milvus only splits them for BM25.
        schema.add_field(
            "keywords",
            DataType.VARCHAR,
            max_length=_MAX_TEXT,
            enable_analyzer=True,
            analyzer_params={"tokenizer": "standard"},
        )
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.config.dim)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            Function(
                name=f"{name}_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["keywords"],
                output_field_names=["sparse"],
            )
        )
        index = self._client.prepare_index_params()
        if self.config.index_type == "HNSW":
            index.add_index(
                "dense",
                index_type="HNSW",
                metric_type="COSINE",
                params={
                    "M": self.config.hnsw_m,
                    "efConstruction": self.config.hnsw_ef_construction,
                },
            )
        else:
            index.add_index("dense", index_type=self.config.index_type, metric_type="COSINE")
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        for field in ("tenant", *scalar_indexes):
            index.add_index(field, index_type="INVERTED")
        analyzer = TextAnalyzer(self.config.text_analyzer)
        self._client.create_collection(
            name,
            schema=schema,
            index_params=index,
            num_partitions=self.config.num_partitions,
            properties={ANALYZER_PROPERTY: analyzer.language},
        )

    def _create_chunks(self) -> None:
        from pymilvus import DataType

        schema = self._base_schema()
        schema.add_field("document_id", DataType.VARCHAR, max_length=128)
        schema.add_field("source_uri", DataType.VARCHAR, max_length=2048)
        schema.add_field("mime_type", DataType.VARCHAR, max_length=128)
        schema.add_field(
            "tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=64, max_length=128
        )
        schema.add_field("chunk_index", DataType.INT64)
        schema.add_field("chunk_count", DataType.INT64)
        schema.add_field("start_offset", DataType.INT64)
        schema.add_field("end_offset", DataType.INT64)
        # 0 when the format has no pages.
        schema.add_field("page", DataType.INT64)
        schema.add_field("section", DataType.VARCHAR, max_length=2048)
        schema.add_field("created_time_ms", DataType.INT64)
        # The write that stored the chunk; only the header's current generation is visible.
        schema.add_field("generation", DataType.VARCHAR, max_length=32)
        self._finish_schema(
            schema,
            self.config.chunk_collection,
            ("document_id", "mime_type", "chunk_index", "created_time_ms"),
        )

    def _create_documents(self) -> None:
        """One header row per document: its metadata and the generation of its chunks."""
        from pymilvus import DataType

        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, max_length=300, is_primary=True)
        schema.add_field("tenant", DataType.VARCHAR, max_length=128, is_partition_key=True)
        schema.add_field("document_id", DataType.VARCHAR, max_length=MAX_ID)
        schema.add_field("title", DataType.VARCHAR, max_length=MAX_TITLE)
        schema.add_field("source_uri", DataType.VARCHAR, max_length=MAX_SOURCE_URI)
        schema.add_field("mime_type", DataType.VARCHAR, max_length=MAX_MIME_TYPE)
        schema.add_field(
            "tags",
            DataType.ARRAY,
            element_type=DataType.VARCHAR,
            max_capacity=MAX_TAGS,
            max_length=MAX_TAG,
        )
        schema.add_field("attributes", DataType.JSON)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("chunk_count", DataType.INT64)
        # Empty until the first write of the document completes (the header is then hidden).
        schema.add_field("generation", DataType.VARCHAR, max_length=32)
        # Chunks that may exist outside the current generation (an interrupted write, or the
        # previous version while it is deleted); the next write deletes them by id.
        schema.add_field("orphan_generation", DataType.VARCHAR, max_length=32)
        schema.add_field("orphan_count", DataType.INT64)
        schema.add_field("created_time_ms", DataType.INT64)
        schema.add_field("updated_time_ms", DataType.INT64)
        schema.add_field("size_bytes", DataType.INT64)
        # Milvus requires a vector field in every collection; this one is never searched.
        schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=2)
        index = self._client.prepare_index_params()
        index.add_index("placeholder", index_type="FLAT", metric_type="L2")
        for field in ("tenant", "document_id"):
            index.add_index(field, index_type="INVERTED")
        self._client.create_collection(
            self.config.document_collection,
            schema=schema,
            index_params=index,
            num_partitions=self.config.num_partitions,
        )

    def _create_entities(self) -> None:
        from pymilvus import DataType

        schema = self._base_schema()
        schema.add_field("entity_id", DataType.VARCHAR, max_length=128)
        schema.add_field("entity_type", DataType.VARCHAR, max_length=64)
        schema.add_field("facet", DataType.VARCHAR, max_length=MAX_FACET)
        self._finish_schema(
            schema, self.config.entity_collection, ("entity_id", "entity_type", "facet")
        )

    # ---------------------------------------------------------------- documents
    async def document_hash(self, tenant: str, document_id: str) -> str | None:
        """The stored content hash of a document, or None when it is not stored."""
        row = (await self._headers(tenant, [document_id])).get(document_id)
        return None if row is None or not row["generation"] else str(row["content_hash"])

    async def _headers(self, tenant: str, document_ids: Sequence[str]) -> dict[str, Row]:
        """document id -> header row (also hidden, unfinished ones), looked up by key."""
        validate_id(tenant, "tenant")
        for document_id in document_ids:
            validate_id(document_id, "document_id")
        keys = sorted({document_key(tenant, d) for d in document_ids})
        found: dict[str, Row] = {}
        for i in range(0, len(keys), 1000):
            # A bare `id in [...]` is a key lookup in Milvus (no scan); keys embed the tenant,
            # and the tenant is checked on every row anyway.
            rows = await self._read(
                self._reader.query,
                self.config.document_collection,
                filter=f"id in {_id_list(keys[i : i + 1000])}",
                output_fields=_DOC_OUTPUT,
                # A reader must see the switch the writer client has just made.
                consistency_level="Strong",
            )
            for row in rows:
                if row["tenant"] == tenant:
                    found[str(row["document_id"])] = dict(row)
        return found

    async def upsert_document(
        self,
        meta: DocumentMeta,
        chunks: Sequence[Chunk],
        vectors: npt.NDArray[np.float32],
        content_hash: str,
        *,
        size_bytes: int = 0,
        flush: bool = True,
    ) -> UpsertResult:
        """Store one document; see :meth:`upsert_documents`."""
        write = DocumentWrite(meta, chunks, vectors, content_hash, size_bytes)
        (result,) = await self.upsert_documents([write], flush=flush)
        return result

    async def upsert_documents(
        self, writes: Sequence[DocumentWrite], *, flush: bool = False
    ) -> list[UpsertResult]:
        """Store documents idempotently, each switching atomically to its new chunks.

        The same content hash and metadata writes nothing. Otherwise, per batch: mark the new
        generation as orphan-to-be in each header (so an interrupted write is cleaned up by the
        next one), insert the new chunks, switch the headers to them, delete the old chunks. A
        batch writer passes ``flush=False`` and calls :meth:`flush` now and then (a flush per
        document costs throughput).
        """
        for write in writes:
            self._validate_write(write)
        by_tenant: dict[str, list[str]] = {}
        for write in writes:
            by_tenant.setdefault(write.meta.tenant, []).append(write.meta.document_id)
        keys = [(w.meta.tenant, w.meta.document_id) for w in writes]
        if len(set(keys)) != len(keys):
            # The same document twice in one batch: write them one after the other.
            return [r for w in writes for r in await self.upsert_documents([w], flush=flush)]
        existing: dict[tuple[str, str], Row] = {}
        for tenant, ids in by_tenant.items():
            for document_id, header in (await self._headers(tenant, ids)).items():
                existing[(tenant, document_id)] = header
        results: dict[int, UpsertResult] = {}
        changed: list[tuple[int, DocumentWrite, Row | None, str]] = []
        for i, write in enumerate(writes):
            row = existing.get(keys[i])
            if row is not None and row["generation"] and self._same_document(row, write):
                results[i] = UpsertResult(
                    write.meta.document_id, write.content_hash, 0, 0, unchanged=True
                )
            else:
                changed.append((i, write, row, uuid.uuid4().hex))
        if changed:
            results.update(await self._switch(changed))
        if flush:
            await self.flush()
        return [results[i] for i in range(len(writes))]

    async def _switch(
        self, changed: Sequence[tuple[int, DocumentWrite, Row | None, str]]
    ) -> dict[int, UpsertResult]:
        now = int(time.time() * 1000)
        # 1. Chunks of earlier interrupted writes go; the header then records the new
        #    generation as the orphan to delete should this write be interrupted too.
        leftovers: list[str] = []
        pending: list[Row] = []
        for _, write, row, generation in changed:
            tenant, document_id = write.meta.tenant, write.meta.document_id
            if row is not None and row["orphan_generation"] != row["generation"]:
                leftovers += _chunk_ids(
                    tenant, document_id, str(row["orphan_generation"]), int(row["orphan_count"])
                )
            base = row or self._header_row(write, generation="", created=now, updated=now)
            pending.append(
                {
                    **base,
                    "orphan_generation": generation,
                    "orphan_count": len(write.chunks),
                    "placeholder": [0.0, 0.0],
                }
            )
        await self._delete_ids(self.config.chunk_collection, leftovers)
        await self._write(self.config.document_collection, pending, upsert=True)
        # 2. The new generation's chunks: fresh ids, so a plain insert (no lookup per row).
        chunk_rows = [
            self._chunk_row(write, generation, created=int(row["created_time_ms"]) if row else now)
            for _, write, row, generation in changed
        ]
        await self._write(
            self.config.chunk_collection, [r for rows in chunk_rows for r in rows], upsert=False
        )
        # 3. The switch: one header row per document, so readers see old or new, never both.
        headers = []
        stale: list[str] = []
        for _, write, row, generation in changed:
            old = str(row["generation"]) if row is not None else ""
            old_count = int(row["chunk_count"]) if row is not None and old else 0
            created = int(row["created_time_ms"]) if row is not None and old else now
            header = self._header_row(write, generation=generation, created=created, updated=now)
            header.update(orphan_generation=old, orphan_count=old_count)
            headers.append(header)
            stale += _chunk_ids(write.meta.tenant, write.meta.document_id, old, old_count)
        await self._write(self.config.document_collection, headers, upsert=True)
        # 4. The old generation goes; if this fails the header still names it for later.
        deleted = 0
        try:
            deleted = await self._delete_ids(self.config.chunk_collection, stale)
        except BackendUnavailable:
            log.warning("old chunks not deleted yet", extra={"fields": {"chunks": len(stale)}})
        return {
            i: UpsertResult(
                write.meta.document_id,
                write.content_hash,
                len(write.chunks),
                deleted if len(changed) == 1 else 0,
                unchanged=False,
                created=row is None or not row["generation"],
            )
            for i, write, row, _ in changed
        }

    def _validate_write(self, write: DocumentWrite) -> None:
        meta = write.meta
        validate_id(meta.tenant, "tenant")
        validate_id(meta.document_id, "document_id")
        if len(write.chunks) != len(write.vectors):
            raise InvalidArgument("vectors", "one vector per chunk is required")
        if write.vectors.size and write.vectors.shape[1] != self.config.dim:
            raise InvalidArgument("vectors", f"vectors must have {self.config.dim} dimensions")
        for tag in meta.tags:
            if not tag or len(tag) > MAX_TAG:
                raise InvalidArgument("tags", f"tags are 1-{MAX_TAG} characters")
        if len(meta.tags) > MAX_TAGS:
            raise InvalidArgument("tags", f"at most {MAX_TAGS} tags")
        if len(meta.mime_type) > MAX_MIME_TYPE:
            raise InvalidArgument("mime_type", f"at most {MAX_MIME_TYPE} characters")

    @staticmethod
    def _header_row(write: DocumentWrite, *, generation: str, created: int, updated: int) -> Row:
        meta = write.meta
        return {
            "id": document_key(meta.tenant, meta.document_id),
            "tenant": meta.tenant,
            "document_id": meta.document_id,
            "title": meta.title[:MAX_TITLE],
            "source_uri": meta.source_uri[:MAX_SOURCE_URI],
            "mime_type": meta.mime_type,
            "tags": list(meta.tags),
            "attributes": dict(meta.attributes),
            "content_hash": write.content_hash,
            "chunk_count": len(write.chunks),
            "generation": generation,
            "orphan_generation": "",
            "orphan_count": 0,
            "created_time_ms": created,
            "updated_time_ms": updated,
            "size_bytes": write.size_bytes,
            "placeholder": [0.0, 0.0],
        }

    @staticmethod
    def _chunk_row(write: DocumentWrite, generation: str, *, created: int) -> list[Row]:
        meta = write.meta
        return [
            {
                "id": chunk_id(meta.tenant, meta.document_id, generation, chunk.index),
                "tenant": meta.tenant,
                "document_id": meta.document_id,
                "generation": generation,
                "title": meta.title[:MAX_TITLE],
                "source_uri": meta.source_uri[:MAX_SOURCE_URI],
                "mime_type": meta.mime_type,
                "tags": list(meta.tags),
                "attributes": dict(meta.attributes),
                "chunk_index": chunk.index,
                "chunk_count": len(write.chunks),
                "start_offset": chunk.start,
                "end_offset": chunk.end,
                "page": chunk.page or 0,
                "section": section_path(chunk.section)[:MAX_SECTION],
                "text": chunk.text[:_MAX_TEXT],
                "content_hash": write.content_hash,
                "created_time_ms": created,
                "dense": vector.tolist(),
            }
            for chunk, vector in zip(write.chunks, write.vectors, strict=True)
        ]

    @staticmethod
    def _same_document(row: Row, write: DocumentWrite) -> bool:
        meta = write.meta
        return (
            row["content_hash"] == write.content_hash
            and int(row["chunk_count"]) == len(write.chunks)
            and row["title"] == meta.title[:MAX_TITLE]
            and row["source_uri"] == meta.source_uri[:MAX_SOURCE_URI]
            and row["mime_type"] == meta.mime_type
            and list(row["tags"] or []) == list(meta.tags)
            and dict(row["attributes"] or {}) == dict(meta.attributes)
        )

    async def _write(self, collection: str, rows: Sequence[Row], *, upsert: bool = True) -> int:
        for i in range(0, len(rows), _WRITE_BATCH):
            await self._call(self._put, collection, rows[i : i + _WRITE_BATCH], upsert)
        return len(rows)

    def _put(self, collection: str, rows: Sequence[Row], upsert: bool) -> None:
        """Write rows on the writer thread, adding what BM25 indexes of their text."""
        if self._analyzers.get(collection) is not None:
            rows = [{**row, "keywords": self._keywords(collection, row["text"])} for row in rows]
        (self._client.upsert if upsert else self._client.insert)(collection, list(rows))

    async def _delete(self, collection: str, expr: str) -> int:
        result = await self._call(self._client.delete, collection, filter=expr)
        if isinstance(result, Mapping):
            return int(result.get("delete_count", 0))
        return len(result) if isinstance(result, Sequence) else 0

    async def _delete_ids(self, collection: str, ids: Sequence[str]) -> int:
        """Delete rows by primary keys this module derived (a key delete, no scan)."""
        deleted = 0
        for i in range(0, len(ids), 1000):
            deleted += await self._delete(collection, f"id in {_id_list(ids[i : i + 1000])}")
        return deleted

    async def flush(self) -> None:
        """Seal written rows; Milvus Lite searches unflushed rows very slowly."""
        await self._call(self._client.flush, self.config.chunk_collection)
        await self._call(self._client.flush, self.config.document_collection)
        await self._call(self._client.flush, self.config.entity_collection)

    async def delete_document(self, tenant: str, document_id: str) -> int:
        """Delete every chunk of a document; returns the number of rows deleted."""
        validate_id(document_id, "document_id")
        # The header goes first: the document disappears for readers in one step.
        await self._delete_ids(self.config.document_collection, [document_key(tenant, document_id)])
        expr = build_expression(tenant, [Condition("document_id", "eq", document_id)])
        deleted = await self._delete(self.config.chunk_collection, expr)
        await self._call(self._client.flush, self.config.document_collection)
        await self._call(self._client.flush, self.config.chunk_collection)
        return deleted

    async def get_document(self, tenant: str, document_id: str) -> DocumentInfo:
        row = (await self._headers(tenant, [document_id])).get(document_id)
        if row is None or not row["generation"]:
            raise NotFound("document_id", f"document {document_id!r} not found")
        return self._document_info(tenant, row)

    @staticmethod
    def _document_info(tenant: str, row: Row) -> DocumentInfo:
        return DocumentInfo(
            tenant=tenant,
            document_id=str(row["document_id"]),
            title=str(row["title"]),
            source_uri=str(row["source_uri"]),
            mime_type=str(row["mime_type"]),
            tags=tuple(row["tags"] or ()),
            attributes=dict(row["attributes"] or {}),
            content_hash=str(row["content_hash"]),
            chunk_count=int(row["chunk_count"]),
            created_time_ms=int(row["created_time_ms"]),
            updated_time_ms=int(row["updated_time_ms"]),
            size_bytes=int(row["size_bytes"]),
        )

    async def list_documents(
        self,
        tenant: str,
        *,
        page_size: int = 50,
        page_token: str = "",
        conditions: Sequence[Condition] = (),
    ) -> DocumentPage:
        """Documents ordered by id; the page token is the last id of the previous page.

        An iterator-mode query returns rows in primary-key order (``tenant/document_id``), so
        each page is one ordered read after the previous page's last key, however many
        documents the tenant holds (a plain query is unordered and capped at 16384 rows).
        """
        if not 1 <= page_size <= 1000:
            raise InvalidArgument("page_size", "must be between 1 and 1000")
        extra = ['generation != ""']
        if page_token:
            validate_id(page_token, "page_token")
            extra.append(f"id > {escape_string(document_key(tenant, page_token), 'page_token')}")
        expr = build_expression(tenant, conditions, DOCUMENT_FIELDS, extra=extra)
        rows = await self._read(self._first_ordered, expr, page_size + 1)
        page = rows[:page_size]
        token = str(page[-1]["document_id"]) if len(rows) > page_size else ""
        return DocumentPage(tuple(self._document_info(tenant, r) for r in page), token)

    def _first_ordered(self, expr: str, count: int) -> list[Row]:
        # Iterator mode (what pymilvus's query iterator sends) makes Milvus return rows in
        # primary-key order; one request is a page, so no iterator state is needed.
        rows = self._reader.query(
            self.config.document_collection,
            filter=expr,
            output_fields=_DOC_OUTPUT,
            limit=count,
            iterator="True",
            reduce_stop_for_best="True",
        )
        return sorted((dict(r) for r in rows), key=lambda r: str(r["id"]))

    async def count_chunks(self, tenant: str, conditions: Sequence[Condition] = ()) -> int:
        rows = await self._read(
            self._reader.query,
            self.config.chunk_collection,
            filter=build_expression(tenant, conditions),
            output_fields=["count(*)"],
        )
        return int(rows[0]["count(*)"]) if rows else 0

    # ------------------------------------------------------------------ search
    async def search_chunks(
        self,
        tenant: str,
        *,
        mode: SearchMode,
        query_text: str = "",
        query_vector: npt.NDArray[np.float32] | None = None,
        top_k: int = 10,
        offset: int = 0,
        conditions: Sequence[Condition] = (),
        fusion: Fusion = DEFAULT_FUSION,
        score_threshold: float | None = None,
        with_embeddings: bool = False,
    ) -> list[SearchHit]:
        """Dense, BM25 or hybrid search over a tenant's chunks, best first."""
        expr = build_expression(tenant, conditions, CHUNK_FIELDS)
        output = [*_CHUNK_OUTPUT, "dense"] if with_embeddings else _CHUNK_OUTPUT
        window = offset + top_k
        limit = window
        while True:
            scored = await self._search(
                self.config.chunk_collection,
                expr,
                mode=mode,
                query_text=query_text,
                query_vector=query_vector,
                top_k=limit,
                offset=0,
                fusion=fusion,
                score_threshold=None,
                output_fields=output,
            )
            current = await self._current(tenant, scored)
            # Hits of a write in progress (or an interrupted one) are dropped; ask for more
            # only when that left the window short and Milvus had more to give.
            if len(current) >= window or len(scored) < limit or limit >= MAX_WINDOW:
                break
            limit = min(limit * 2, MAX_WINDOW)
        if score_threshold is not None:
            current = [pair for pair in current if pair[1] >= score_threshold]
        return [self._hit(row, score) for row, score in current[offset:window]]

    async def _current(
        self, tenant: str, scored: list[tuple[Row, float]]
    ) -> list[tuple[Row, float]]:
        """The hits whose chunk belongs to its document's current generation."""
        if not scored:
            return scored
        headers = await self._headers(tenant, sorted({str(r["document_id"]) for r, _ in scored}))
        return [
            (row, score)
            for row, score in scored
            if (header := headers.get(str(row["document_id"]))) is not None
            and header["generation"]
            and header["generation"] == row["generation"]
        ]

    @staticmethod
    def _hit(row: Row, score: float) -> SearchHit:
        dense = row.get("dense")
        section = str(row["section"])
        return SearchHit(
            chunk_id=str(row["id"]),
            document_id=str(row["document_id"]),
            title=str(row["title"]),
            source_uri=str(row["source_uri"]),
            mime_type=str(row["mime_type"]),
            chunk_index=int(row["chunk_index"]),
            start=int(row["start_offset"]),
            end=int(row["end_offset"]),
            page=int(row["page"]) or None,
            section=tuple(section.split(" > ")) if section else (),
            text=str(row["text"]),
            score=score,
            tags=tuple(row["tags"] or ()),
            attributes=dict(row["attributes"] or {}),
            embedding=tuple(float(x) for x in dense) if dense is not None else None,
        )

    async def _search(
        self,
        collection: str,
        expr: str,
        *,
        mode: SearchMode,
        query_text: str,
        query_vector: npt.NDArray[np.float32] | None,
        top_k: int,
        offset: int,
        fusion: Fusion,
        score_threshold: float | None,
        output_fields: Sequence[str],
    ) -> list[tuple[Row, float]]:
        if not 1 <= top_k or offset < 0 or offset + top_k > MAX_WINDOW:
            raise InvalidArgument("top_k", f"need top_k >= 1, offset >= 0, sum <= {MAX_WINDOW}")
        needs_vector = mode in (SearchMode.DENSE, SearchMode.HYBRID)
        needs_text = mode in (SearchMode.BM25, SearchMode.HYBRID)
        if needs_vector and (query_vector is None or query_vector.shape != (self.config.dim,)):
            raise InvalidArgument("query", f"a {self.config.dim}-dim query vector is required")
        if needs_text and not query_text.strip():
            raise InvalidArgument("query", "query text is required for keyword search")
        window = offset + top_k
        scored = await self._read(
            self._search_sync,
            collection,
            expr,
            mode=mode,
            query_text=query_text,
            query_vector=query_vector,
            window=window,
            fusion=fusion,
            output_fields=output_fields,
        )
        if score_threshold is not None:
            scored = [pair for pair in scored if pair[1] >= score_threshold]
        return scored[offset:window]

    def _search_sync(
        self,
        collection: str,
        expr: str,
        *,
        mode: SearchMode,
        query_text: str,
        query_vector: npt.NDArray[np.float32] | None,
        window: int,
        fusion: Fusion,
        output_fields: Sequence[str],
    ) -> list[tuple[Row, float]]:
        """One search on the worker thread, best first; hybrid runs both sides, then fuses."""
        if mode is not SearchMode.HYBRID:
            return self._side(
                collection, expr, mode, query_text, query_vector, window, output_fields
            )
        # Each side brings a fixed pool (at least the window) so fused ranks, and pages, are stable.
        # The sides return ids only; the rows of the fused window are read once afterwards.
        depth = min(MAX_WINDOW, max(window, fusion.candidates or self.config.hybrid_candidates))
        lists = [
            [
                (str(row["id"]), score)
                for row, score in self._side(
                    collection, expr, side, query_text, query_vector, depth, ["id"]
                )
            ]
            for side in (SearchMode.DENSE, SearchMode.BM25)
        ]
        if fusion.kind is FusionKind.RRF:
            fused = fusing.reciprocal_rank_fusion(
                [[key for key, _ in items] for items in lists], key=str, k=fusion.rrf_k
            )
        else:
            fused = fusing.weighted_fusion(
                lists, [fusion.dense_weight, fusion.sparse_weight], key=str
            )
        fused = fused[:window]
        if not fused:
            return []
        found = self._reader.query(
            collection,
            filter=f"({expr}) and (id in {_id_list([key for key, _ in fused])})",
            output_fields=list(output_fields),
            limit=len(fused),
        )
        rows = {str(row["id"]): dict(row) for row in found}
        # A row deleted between the search and the read is left out.
        return [(rows[key], score) for key, score in fused if key in rows]

    def _side(
        self,
        collection: str,
        expr: str,
        mode: SearchMode,
        query_text: str,
        query_vector: npt.NDArray[np.float32] | None,
        limit: int,
        output_fields: Sequence[str],
    ) -> list[tuple[Row, float]]:
        """A dense or BM25 search, best first (BM25 scores made positive)."""
        if mode is SearchMode.DENSE:
            assert query_vector is not None
            data: list[Any] = [query_vector.tolist()]
            field = "dense"
            params: dict[str, Any] = {
                "metric_type": "COSINE",
                "params": {"ef": max(self.config.hnsw_ef, limit)},
            }
        else:
            keywords = self._keywords(collection, query_text)
            if not keywords.strip():
                return []  # only stop words: nothing for BM25 to match
            data, field, params = [keywords], "sparse", {"metric_type": "BM25"}
        result = self._reader.search(
            collection,
            data=data,
            anns_field=field,
            filter=expr,
            limit=limit,
            output_fields=list(output_fields),
            search_params=params,
        )
        hits = list(result[0]) if result else []
        scored = [
            (
                dict(hit["entity"]),
                abs(float(hit["distance"])) if field == "sparse" else float(hit["distance"]),
            )
            for hit in hits
        ]
        scored.sort(key=lambda pair: pair[1], reverse=True)
        return scored

    # --------------------------------------------------------------- entities
    async def entity_record_hashes(self, tenant: str, entity_ids: Sequence[str]) -> dict[str, str]:
        """record id -> content hash for every stored record of the given entities."""
        for entity_id in entity_ids:
            validate_id(entity_id, "entity_id")
        if not entity_ids:
            return {}
        rows = await self._read(
            self._reader.query,
            self.config.entity_collection,
            filter=build_expression(
                tenant, [Condition("entity_id", "in", list(entity_ids))], ENTITY_FIELDS
            ),
            output_fields=["id", "content_hash"],
            limit=MAX_WINDOW,
        )
        return {str(r["id"]): str(r["content_hash"]) for r in rows}

    async def write_entity_records(
        self,
        tenant: str,
        records: Sequence[EntityRow],
        vectors: npt.NDArray[np.float32],
        stale_record_ids: Sequence[str] = (),
    ) -> int:
        """Upsert entity records (with their vectors) and delete records no longer present."""
        validate_id(tenant, "tenant")
        rows = []
        for record, vector in zip(records, vectors, strict=True):
            validate_id(record.entity_id, "entity_id")
            validate_id(record.facet, "facet")
            if len(record.facet) > MAX_FACET:
                raise InvalidArgument("facet", f"facet names are at most {MAX_FACET} characters")
            rows.append(
                {
                    "id": entity_record_id(tenant, record.entity_id, record.facet),
                    "tenant": tenant,
                    "entity_id": record.entity_id,
                    "entity_type": record.entity_type[:MAX_ENTITY_TYPE],
                    "facet": record.facet,
                    "title": record.title[:1024],
                    "text": record.text[:_MAX_TEXT],
                    "attributes": dict(record.attributes),
                    "content_hash": record.content_hash,
                    "dense": vector.tolist(),
                }
            )
        written = await self._write(self.config.entity_collection, rows)
        if stale_record_ids:
            # Record ids are hex digests made here; escape them anyway, never paste.
            expr = build_expression(
                tenant, extra=[f"id in {_id_list(stale_record_ids)}"], fields=ENTITY_FIELDS
            )
            await self._delete(self.config.entity_collection, expr)
        await self._call(self._client.flush, self.config.entity_collection)
        return written

    async def entity_records(self, tenant: str, entity_ids: Sequence[str]) -> list[EntityRow]:
        """Every stored record (master and facets) of the given entities of one tenant."""
        for entity_id in entity_ids:
            validate_id(entity_id, "entity_id")
        if not entity_ids:
            return []
        rows = await self._read(
            self._reader.query,
            self.config.entity_collection,
            filter=build_expression(
                tenant, [Condition("entity_id", "in", list(entity_ids))], ENTITY_FIELDS
            ),
            output_fields=[*_ENTITY_OUTPUT, "content_hash"],
            limit=MAX_WINDOW,
        )
        return [
            EntityRow(
                entity_id=str(r["entity_id"]),
                entity_type=str(r["entity_type"]),
                facet=str(r["facet"]),
                title=str(r["title"]),
                text=str(r["text"]),
                attributes=dict(r["attributes"] or {}),
                content_hash=str(r["content_hash"]),
            )
            for r in rows
        ]

    async def ping(self) -> bool:
        """Whether Milvus answers (for health checks)."""
        await self._read(self._reader.has_collection, self.config.chunk_collection)
        return True

    async def delete_entity(self, tenant: str, entity_id: str) -> int:
        validate_id(entity_id, "entity_id")
        expr = build_expression(tenant, [Condition("entity_id", "eq", entity_id)], ENTITY_FIELDS)
        deleted = await self._delete(self.config.entity_collection, expr)
        await self._call(self._client.flush, self.config.entity_collection)
        return deleted

    async def search_entity_records(
        self,
        tenant: str,
        *,
        mode: SearchMode,
        query_text: str,
        query_vector: npt.NDArray[np.float32] | None,
        limit: int,
        conditions: Sequence[Condition] = (),
        fusion: Fusion = DEFAULT_FUSION,
    ) -> list[EntityRecordHit]:
        expr = build_expression(tenant, conditions, ENTITY_FIELDS)
        scored = await self._search(
            self.config.entity_collection,
            expr,
            mode=mode,
            query_text=query_text,
            query_vector=query_vector,
            top_k=limit,
            offset=0,
            fusion=fusion,
            score_threshold=None,
            output_fields=_ENTITY_OUTPUT,
        )
        return [
            EntityRecordHit(
                record_id=str(row["id"]),
                entity_id=str(row["entity_id"]),
                entity_type=str(row["entity_type"]),
                facet=str(row["facet"]),
                title=str(row["title"]),
                text=str(row["text"]),
                attributes=dict(row["attributes"] or {}),
                score=score,
            )
            for row, score in scored
        ]


def attributes_json(attributes: Mapping[str, AttributeValue]) -> str:
    """Canonical JSON of attributes, for content hashes."""
    return json.dumps(dict(attributes), sort_keys=True, separators=(",", ":"))
