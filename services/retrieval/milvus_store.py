"""Milvus storage for document chunks and faceted entities (pymilvus ``MilvusClient``).

The URI is configuration: a file path (``data/callisto.db``) runs Milvus Lite embedded, an
``http://host:port`` URI talks to a Milvus server. pymilvus is blocking, so every call runs on a
single worker thread owned by the store: calls stay ordered and the event loop never blocks.

Isolation: ``tenant`` is the collection's partition key, and every query, search, hybrid
sub-request and delete ANDs an escaped ``tenant == "..."`` clause (the partition key alone is not a
security boundary). Ids are validated before they reach an expression because pymilvus pastes
``ids=`` values unescaped; this module therefore never uses ``get(ids=...)``/``delete(ids=...)``
with caller-supplied ids.

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
import time
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
from callisto.services.retrieval.errors import BackendUnavailable, InvalidArgument, NotFound
from callisto.services.retrieval.filters import (
    CHUNK_FIELDS,
    ENTITY_FIELDS,
    Condition,
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

# Milvus caps offset + limit of a search or query at 16384.
MAX_WINDOW = 16384
_WRITE_BATCH = 256
_MAX_TEXT = 65535
_CHUNK_OUTPUT = [
    "id",
    "document_id",
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
    "document_id",
    "title",
    "source_uri",
    "mime_type",
    "tags",
    "attributes",
    "content_hash",
    "chunk_count",
    "created_time_ms",
]
_ENTITY_OUTPUT = ["id", "entity_id", "entity_type", "facet", "title", "text", "attributes"]


@dataclass(frozen=True, slots=True)
class MilvusConfig:
    """Where Milvus is and how the collections are laid out."""

    uri: str = "data/callisto.db"
    token: str = ""
    chunk_collection: str = "callisto_chunks"
    entity_collection: str = "callisto_entities"
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


def chunk_id(tenant: str, document_id: str, index: int) -> str:
    """Deterministic chunk primary key (hex, so it is always safe inside an expression)."""
    digest = hashlib.sha256(f"{tenant}\x1f{document_id}\x1f{index}".encode()).hexdigest()
    return digest[:40]


def entity_record_id(tenant: str, entity_id: str, facet: str) -> str:
    digest = hashlib.sha256(f"{tenant}\x1f{entity_id}\x1f{facet}".encode()).hexdigest()
    return digest[:40]


def _id_list(ids: Sequence[str]) -> str:
    return "[" + ", ".join(escape_string(i, "id") for i in ids) + "]"


class MilvusStore:
    """Async facade over one ``MilvusClient``; create with :meth:`open`."""

    def __init__(self, config: MilvusConfig) -> None:
        self.config = config
        # One thread keeps pymilvus calls ordered and off the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="milvus")
        self._client: Any = None
        # collection -> its keyword analyzer; None for a collection made before analysis
        # existed (BM25 then indexes the raw text, as it was written).
        self._analyzers: dict[str, TextAnalyzer | None] = {}

    @classmethod
    async def open(cls, config: MilvusConfig) -> MilvusStore:
        store = cls(config)
        try:
            await store._call(store._connect)
        except BaseException:
            # A caller that retries (a health probe) must not leak one thread per attempt.
            store._executor.shutdown(wait=False)
            raise
        return store

    async def close(self) -> None:
        if self._client is not None:
            await self._call(self._client.close)
            self._client = None
        self._executor.shutdown(wait=True)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from pymilvus.exceptions import MilvusException

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))
        except MilvusException as exc:
            raise BackendUnavailable("milvus", f"Milvus call failed: {exc}") from exc

    # ----------------------------------------------------------------- schema
    def _connect(self) -> None:
        from pymilvus import MilvusClient

        self._client = MilvusClient(
            uri=self.config.uri, token=self.config.token, timeout=self.config.timeout_s
        )
        if not self._client.has_collection(self.config.chunk_collection):
            self._create_chunks()
        if not self._client.has_collection(self.config.entity_collection):
            self._create_entities()
        self._client.load_collection(self.config.chunk_collection)
        self._client.load_collection(self.config.entity_collection)
        for name in (self.config.chunk_collection, self.config.entity_collection):
            self._analyzers[name] = self._stored_analyzer(name)

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
        self._finish_schema(
            schema,
            self.config.chunk_collection,
            ("document_id", "mime_type", "chunk_index", "created_time_ms"),
        )

    def _create_entities(self) -> None:
        from pymilvus import DataType

        schema = self._base_schema()
        schema.add_field("entity_id", DataType.VARCHAR, max_length=128)
        schema.add_field("entity_type", DataType.VARCHAR, max_length=64)
        schema.add_field("facet", DataType.VARCHAR, max_length=64)
        self._finish_schema(
            schema, self.config.entity_collection, ("entity_id", "entity_type", "facet")
        )

    # ---------------------------------------------------------------- documents
    async def document_hash(self, tenant: str, document_id: str) -> str | None:
        """The stored content hash of a document, or None when it is not stored."""
        row = await self._document_row(tenant, document_id)
        return None if row is None else str(row["content_hash"])

    async def _document_row(self, tenant: str, document_id: str) -> Row | None:
        validate_id(document_id, "document_id")
        expr = build_expression(
            tenant,
            [Condition("document_id", "eq", document_id), Condition("chunk_index", "eq", 0)],
        )
        rows = await self._call(
            self._client.query,
            self.config.chunk_collection,
            filter=expr,
            output_fields=_DOC_OUTPUT,
            limit=1,
        )
        return dict(rows[0]) if rows else None

    async def upsert_document(
        self,
        meta: DocumentMeta,
        chunks: Sequence[Chunk],
        vectors: npt.NDArray[np.float32],
        content_hash: str,
        *,
        flush: bool = True,
    ) -> UpsertResult:
        """Store a document's chunks idempotently.

        The same content hash and metadata writes nothing; otherwise the new chunks overwrite
        the old ones by id and any surplus old chunks are deleted, so a reader never sees the
        document missing while it is replaced. A batch writer passes ``flush=False`` and calls
        :meth:`flush` once per batch (a flush per document costs throughput).
        """
        tenant, document_id = meta.tenant, meta.document_id
        validate_id(tenant, "tenant")
        validate_id(document_id, "document_id")
        if len(chunks) != len(vectors):
            raise InvalidArgument("vectors", "one vector per chunk is required")
        if vectors.size and vectors.shape[1] != self.config.dim:
            raise InvalidArgument("vectors", f"vectors must have {self.config.dim} dimensions")
        for tag in meta.tags:
            if not tag or len(tag) > 128:
                raise InvalidArgument("tags", "tags are 1-128 characters")
        if len(meta.tags) > 64:
            raise InvalidArgument("tags", "at most 64 tags")
        existing = await self._document_row(tenant, document_id)
        if existing is not None and self._same_document(existing, meta, content_hash, chunks):
            return UpsertResult(document_id, content_hash, 0, 0, unchanged=True)
        created = int(existing["created_time_ms"]) if existing else int(time.time() * 1000)
        rows = [
            {
                "id": chunk_id(tenant, document_id, chunk.index),
                "tenant": tenant,
                "document_id": document_id,
                "title": meta.title[:1024],
                "source_uri": meta.source_uri[:2048],
                "mime_type": meta.mime_type[:128],
                "tags": list(meta.tags),
                "attributes": dict(meta.attributes),
                "chunk_index": chunk.index,
                "chunk_count": len(chunks),
                "start_offset": chunk.start,
                "end_offset": chunk.end,
                "page": chunk.page or 0,
                "section": section_path(chunk.section)[:2048],
                "text": chunk.text[:_MAX_TEXT],
                "content_hash": content_hash,
                "created_time_ms": created,
                "dense": vector.tolist(),
            }
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        written = await self._write(self.config.chunk_collection, rows)
        stale = build_expression(
            tenant,
            [
                Condition("document_id", "eq", document_id),
                Condition("chunk_index", "ge", len(chunks)),
            ],
        )
        deleted = await self._delete(self.config.chunk_collection, stale)
        if flush:
            await self.flush()
        return UpsertResult(
            document_id, content_hash, written, deleted, unchanged=False, created=existing is None
        )

    @staticmethod
    def _same_document(
        row: Row, meta: DocumentMeta, content_hash: str, chunks: Sequence[Chunk]
    ) -> bool:
        return (
            row["content_hash"] == content_hash
            and int(row["chunk_count"]) == len(chunks)
            and row["title"] == meta.title[:1024]
            and row["source_uri"] == meta.source_uri[:2048]
            and row["mime_type"] == meta.mime_type[:128]
            and list(row["tags"] or []) == list(meta.tags)
            and dict(row["attributes"] or {}) == dict(meta.attributes)
        )

    async def _write(self, collection: str, rows: Sequence[Row]) -> int:
        for i in range(0, len(rows), _WRITE_BATCH):
            await self._call(self._upsert, collection, rows[i : i + _WRITE_BATCH])
        return len(rows)

    def _upsert(self, collection: str, rows: Sequence[Row]) -> None:
        if self._analyzers.get(collection) is not None:
            rows = [{**row, "keywords": self._keywords(collection, row["text"])} for row in rows]
        self._client.upsert(collection, list(rows))

    async def _delete(self, collection: str, expr: str) -> int:
        result = await self._call(self._client.delete, collection, filter=expr)
        if isinstance(result, Mapping):
            return int(result.get("delete_count", 0))
        return len(result) if isinstance(result, Sequence) else 0

    async def flush(self) -> None:
        """Seal written rows; Milvus Lite searches unflushed rows very slowly."""
        await self._call(self._client.flush, self.config.chunk_collection)
        await self._call(self._client.flush, self.config.entity_collection)

    async def delete_document(self, tenant: str, document_id: str) -> int:
        """Delete every chunk of a document; returns the number of rows deleted."""
        validate_id(document_id, "document_id")
        expr = build_expression(tenant, [Condition("document_id", "eq", document_id)])
        deleted = await self._delete(self.config.chunk_collection, expr)
        await self._call(self._client.flush, self.config.chunk_collection)
        return deleted

    async def get_document(self, tenant: str, document_id: str) -> DocumentInfo:
        row = await self._document_row(tenant, document_id)
        if row is None:
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
        )

    async def list_documents(
        self,
        tenant: str,
        *,
        page_size: int = 50,
        page_token: str = "",
        conditions: Sequence[Condition] = (),
    ) -> DocumentPage:
        """Documents ordered by id; the page token is the last id of the previous page."""
        if not 1 <= page_size <= 1000:
            raise InvalidArgument("page_size", "must be between 1 and 1000")
        where = [*conditions, Condition("chunk_index", "eq", 0)]
        if page_token:
            validate_id(page_token, "page_token")
            where.append(Condition("document_id", "gt", page_token))
        rows = await self._call(
            self._client.query,
            self.config.chunk_collection,
            filter=build_expression(tenant, where),
            output_fields=_DOC_OUTPUT,
            limit=MAX_WINDOW,
        )
        # Milvus returns query rows unordered; one row per document makes sorting here cheap.
        rows = sorted(rows, key=lambda r: str(r["document_id"]))
        page = rows[:page_size]
        token = str(page[-1]["document_id"]) if len(rows) > page_size else ""
        return DocumentPage(tuple(self._document_info(tenant, r) for r in page), token)

    async def count_chunks(self, tenant: str, conditions: Sequence[Condition] = ()) -> int:
        rows = await self._call(
            self._client.query,
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
        scored = await self._search(
            self.config.chunk_collection,
            expr,
            mode=mode,
            query_text=query_text,
            query_vector=query_vector,
            top_k=top_k,
            offset=offset,
            fusion=fusion,
            score_threshold=score_threshold,
            output_fields=output,
        )
        return [self._hit(row, score) for row, score in scored]

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
        scored = await self._call(
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
        found = self._client.query(
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
        result = self._client.search(
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
        rows = await self._call(
            self._client.query,
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
            rows.append(
                {
                    "id": entity_record_id(tenant, record.entity_id, record.facet),
                    "tenant": tenant,
                    "entity_id": record.entity_id,
                    "entity_type": record.entity_type[:64],
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
        rows = await self._call(
            self._client.query,
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
        await self._call(self._client.has_collection, self.config.chunk_collection)
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
