"""RetrievalService handlers: validate, translate protobuf ⇄ backend types, call the backends.

Milvus (Lite embedded, or a server) is opened in the background so the process starts at once
and reports NOT_SERVING until both Milvus and the Triton embedder answer. Backend errors are typed
`CallistoError`s with their own status; the handlers only rename the field they name to the
request's path (`filters[2].field`, `header.mime_type`). Documents are parsed in a pool of worker
processes bounded in memory and time. The tenant always comes from the API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from callisto.api.common.v1 import common_pb2
from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from callisto.attributes import from_proto as attribute_from_proto
from callisto.attributes import to_proto as attribute_to_proto
from callisto.documents import document_id_from
from callisto.services.common.errors import (
    CallistoError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    MalformedRequest,
    NotFound,
    Unavailable,
)
from callisto.services.common.health import DependencyCheck
from callisto.services.common.interceptors import reports_malformed_requests
from callisto.services.common.pagination import page_tokens
from callisto.services.common.server import Runtime, ServiceDefinition
from callisto.services.common.tenancy import current_tenant
from callisto.services.common.validation import Violations, check_page_size
from callisto.services.retrieval import errors as rerrors
from callisto.services.retrieval.analysis import TextAnalyzer
from callisto.services.retrieval.chunking import ChunkOptions
from callisto.services.retrieval.embedder import TritonEmbedder
from callisto.services.retrieval.facets import MASTER, FacetedSearch, parse_entity
from callisto.services.retrieval.filters import (
    CHUNK_FIELDS,
    ENTITY_FIELDS,
    ID_PATTERN,
    Condition,
    FieldKind,
    Operator,
    compile_condition,
)
from callisto.services.retrieval.ingest_pipeline import (
    IngestDocument,
    IngestOptions,
    IngestPipeline,
)
from callisto.services.retrieval.milvus_store import EntityRow, MilvusConfig, MilvusStore
from callisto.services.retrieval.models import (
    AttributeValue,
    DocumentInfo,
    DocumentMeta,
    EntityRecord,
    Fusion,
    FusionKind,
    ProgressEvent,
    ProgressKind,
    SearchMode,
)
from callisto.services.retrieval.parse_pool import ParserLimits, ParserPool
from callisto.services.retrieval.parsing import CsvMode, ParseOptions
from callisto.services.retrieval.rerank import Reranker
from callisto.services.retrieval.search import Retriever, SearchRequest
from callisto.services.retrieval.settings import RetrievalSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RetrievalService"].full_name
Context = grpc.aio.ServicerContext[Any, Any]
log = logging.getLogger("callisto.retrieval")

MAX_QUERY = 4096
MAX_TITLE = 1024
MAX_SOURCE_URI = 2048
MAX_TAGS = 64
MAX_TAG = 128
MAX_ATTRIBUTES = 64
ATTRIBUTE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
RETRY_AFTER_S = 2.0
ID_RULE = "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"

_MODES = {
    pb.SEARCH_MODE_UNSPECIFIED: SearchMode.HYBRID,
    pb.SEARCH_MODE_HYBRID: SearchMode.HYBRID,
    pb.SEARCH_MODE_DENSE: SearchMode.DENSE,
    pb.SEARCH_MODE_KEYWORD: SearchMode.BM25,
}
_OPERATORS: dict[int, Operator] = {
    pb.FILTER_OPERATOR_EQUAL: "eq",
    pb.FILTER_OPERATOR_NOT_EQUAL: "ne",
    pb.FILTER_OPERATOR_GREATER: "gt",
    pb.FILTER_OPERATOR_GREATER_OR_EQUAL: "ge",
    pb.FILTER_OPERATOR_LESS: "lt",
    pb.FILTER_OPERATOR_LESS_OR_EQUAL: "le",
    pb.FILTER_OPERATOR_IN: "in",
    pb.FILTER_OPERATOR_CONTAINS: "contains",
    pb.FILTER_OPERATOR_CONTAINS_ANY: "contains_any",
}
_LIST_OPERATORS = frozenset({"in", "contains_any"})


# Errors


@contextlib.contextmanager
def backend_errors(fields: Mapping[str, str] | None = None) -> Iterator[None]:
    """Backend errors carry their own status; `fields` renames the backend field names they
    name to request field paths."""
    try:
        yield
    except rerrors.RetrievalError as error:
        renamed = error.renamed(fields or {})
        if renamed is error:
            raise
        raise renamed from error


# Ingest field names of the pipeline -> paths in an IngestDocuments / IngestDocument request.
_STREAM_FIELDS = {
    "document_id": "header.document_id",
    "mime_type": "header.mime_type",
    "tags": "header.tags",
    "chunk_size": "header.chunking.chunk_size",
    "chunk_overlap": "header.chunking.chunk_overlap",
    "content": "data",
    "document": "data",
}
_UNARY_FIELDS = {**_STREAM_FIELDS, "content": "content", "document": "content"}


# Protobuf <-> backend values


def _attributes(
    v: Violations, attributes: Mapping[str, common_pb2.AttributeValue], field: str
) -> dict[str, AttributeValue]:
    if len(attributes) > MAX_ATTRIBUTES:
        v.add(field, f"at most {MAX_ATTRIBUTES} attributes")
    result: dict[str, AttributeValue] = {}
    for key, raw in attributes.items():
        if not ATTRIBUTE_KEY.match(key):
            v.add(f"{field}[{key}]", "keys are letters, digits and '_' (max 64), not a digit first")
            continue
        value = attribute_from_proto(raw)
        if value is None:
            v.add(f"{field}[{key}]", "a value must be set")
        elif isinstance(value, float) and not math.isfinite(value):
            v.add(f"{field}[{key}]", "numbers must be finite")
        else:
            result[key] = value
    return result


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def document_proto(info: DocumentInfo) -> pb.Document:
    return pb.Document(
        name=f"documents/{info.document_id}",
        title=info.title,
        source_uri=info.source_uri,
        mime_type=info.mime_type,
        tags=list(info.tags),
        attributes={k: attribute_to_proto(v) for k, v in info.attributes.items()},
        content_hash=info.content_hash,
        chunk_count=info.chunk_count,
        size_bytes=info.size_bytes,
        update_time=_timestamp(info.updated_time_ms or info.created_time_ms),
    )


def _document_id(name: str, field: str = "name") -> str:
    prefix = "documents/"
    document_id = name[len(prefix) :] if name.startswith(prefix) else ""
    if not ID_PATTERN.fullmatch(document_id):
        raise InvalidArgument.field(field, f"must look like documents/{{id}}; the id {ID_RULE}")
    return document_id


def _entity_id(name: str, field: str) -> str:
    prefix = "entities/"
    entity_id = name[len(prefix) :] if name.startswith(prefix) else ""
    if not ID_PATTERN.fullmatch(entity_id):
        raise InvalidArgument.field(field, f"must look like entities/{{id}}; the id {ID_RULE}")
    return entity_id


def entity_proto(rows: Sequence[EntityRow]) -> pb.Entity:
    first = rows[0]
    master = next((r.text for r in rows if r.facet == MASTER), "")
    return pb.Entity(
        name=f"entities/{first.entity_id}",
        entity_type=first.entity_type,
        title=first.title,
        master=master,
        facets={r.facet: r.text for r in rows if r.facet != MASTER},
        attributes={k: attribute_to_proto(v) for k, v in first.attributes.items()},
    )


def record_proto(record: EntityRecord) -> pb.Entity:
    return pb.Entity(
        name=f"entities/{record.entity_id}",
        entity_type=record.entity_type,
        title=record.title,
        master=record.master,
        facets=dict(record.facets),
        attributes={k: attribute_to_proto(v) for k, v in record.attributes.items()},
    )


def filter_conditions(
    v: Violations,
    filters: Sequence[pb.MetadataFilter],
    fields: Mapping[str, FieldKind],
    path: str = "filters",
) -> list[Condition]:
    """Typed conditions; each problem becomes a violation on `filters[i].<part>`."""
    conditions: list[Condition] = []
    for i, item in enumerate(filters):
        where = f"{path}[{i}]"
        name = item.field.strip()
        known = name in fields or (
            name.startswith("attributes.")
            and ATTRIBUTE_KEY.match(name.removeprefix("attributes.")) is not None
        )
        if not known:
            allowed = ", ".join(sorted(fields))
            v.add(f"{where}.field", f"unknown filter field {name!r}; allowed: {allowed}, "
                  "attributes.<key>")  # fmt: skip
            continue
        op = _OPERATORS.get(item.operator)
        if op is None:
            v.add(f"{where}.operator", "is required")
            continue
        value: Any
        if op in _LIST_OPERATORS:
            values = [attribute_from_proto(x) for x in item.values]
            if not values or any(x is None for x in values):
                v.add(f"{where}.values", "needs one or more set values")
                continue
            value = values
        else:
            value = attribute_from_proto(item.value) if item.HasField("value") else None
            if value is None:
                v.add(f"{where}.value", "is required")
                continue
        condition = Condition(name, op, value)
        try:
            compile_condition(condition, fields)
        except rerrors.RetrievalError as error:
            part = "operator" if "operator" in error.description else (
                "values" if op in _LIST_OPERATORS else "value"
            )  # fmt: skip
            v.add(f"{where}.{part}", error.description)
            continue
        conditions.append(condition)
    return conditions


# Backends


class Backends:
    """The embedder client and the Milvus store, opened lazily and re-opened after failures."""

    def __init__(self, settings: RetrievalSettings) -> None:
        self.settings = settings
        self.embedder = TritonEmbedder(
            settings.triton_url,
            model_name=settings.embedder_model,
            max_concurrency=settings.embed_concurrency,
            query_concurrency=settings.embed_query_concurrency,
            ingest_batch_size=settings.embed_ingest_batch,
            timeout_s=settings.embed_timeout_seconds,
        )
        self.parser = ParserPool(
            ParserLimits(
                workers=settings.parse_workers,
                per_tenant=settings.parse_workers_per_tenant,
                timeout_s=settings.parse_timeout_seconds,
                memory_bytes=settings.parse_memory_bytes,
            )
        )
        self._store: MilvusStore | None = None
        self._lock = asyncio.Lock()
        self._opener: asyncio.Task[Any] | None = None
        self._parser_starter: asyncio.Task[Any] | None = None

    def milvus_config(self) -> MilvusConfig:
        settings = self.settings
        return MilvusConfig(
            uri=settings.resolved_milvus_uri,
            token=settings.milvus_token,
            index_type=settings.milvus_index,
            timeout_s=settings.milvus_timeout_seconds,
            # One fixed pool for every page keeps fused ranks, and so pages, stable.
            hybrid_candidates=settings.max_result_window,
            text_analyzer=settings.text_analyzer,
        )

    def start(self) -> None:
        self._opener = asyncio.create_task(self._open_quietly(), name="milvus-open")
        # Workers start in the background; a failed start is retried by the first document.
        self._parser_starter = asyncio.create_task(self.parser.start(), name="parser-start")

    async def _open_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self._open()

    async def _open(self) -> MilvusStore:
        async with self._lock:
            if self._store is None:
                config = self.milvus_config()
                if "://" not in config.uri:
                    Path(config.uri).parent.mkdir(parents=True, exist_ok=True)
                try:
                    self._store = await MilvusStore.open(config)
                except Exception as error:
                    log.warning("milvus unavailable", extra={"fields": {"error": repr(error)}})
                    raise
                log.info("milvus open", extra={"fields": {"uri": config.uri}})
            return self._store

    async def store(self) -> MilvusStore:
        """The open store, or UNAVAILABLE with RetryInfo while Milvus cannot be reached."""
        try:
            return await self._open()
        except Exception as error:
            raise Unavailable(
                "Milvus is not available", retry_after=RETRY_AFTER_S, reason="MILVUS_UNAVAILABLE"
            ) from error

    async def milvus_ready(self) -> bool:
        store = await self._open()
        return await store.ping()

    async def close(self) -> None:
        for task in (self._opener, self._parser_starter):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.parser.close()
        if self._store is not None:
            await self._store.close()
        await self.embedder.close()


# Ingestion stream


@dataclass
class _Pending:
    """What the handler knows about a document of the stream (for its result message)."""

    meta: DocumentMeta
    size: int = 0
    # Why the header was rejected (reported once the document's data has been skipped).
    failure: CallistoError | None = None


@dataclass
class _Demux:
    """Splits `header, data*, end` request messages into documents for the pipeline.

    Each document's bytes flow straight from the stream into the pipeline (never a whole corpus
    in memory); if the pipeline gives up on a document early, its remaining data is skipped.
    A protocol violation inside a document (a header before its end, a message with no item, the
    stream ending) fails that document with INVALID_ARGUMENT, and a header that came early starts
    the next document, so no document is ever swallowed. A violation outside any document (data or
    an end with no header, an undecodable message) ends the stream: the documents received so far
    still get their results, then `error` is the stream's terminal status.
    """

    requests: AsyncIterator[pb.IngestDocumentsRequest]
    tenant: str
    settings: RetrievalSettings
    pending: dict[str, _Pending] = field(default_factory=dict)
    # Why the stream itself failed, if it did.
    error: InvalidArgument | None = None
    messages: int = 0
    _open: bool = False
    _ended: bool = False
    _lookahead: pb.IngestDocumentsRequest | None = None

    async def documents(self) -> AsyncIterator[IngestDocument]:
        while True:
            if self._open:
                await self._skip_rest()
            message = await self._next()
            if message is None:
                return
            kind = message.WhichOneof("item")
            if kind != "header":
                self._fail_stream(
                    kind or "item",
                    f"message {self.messages}: a document starts with a header, not "
                    + (f"{kind}" if kind else "a message with no item"),
                )
                return
            self._open = True
            yield self._document(message.header)

    async def _next(self) -> pb.IngestDocumentsRequest | None:
        if self._lookahead is not None:
            message, self._lookahead = self._lookahead, None
            return message
        if self._ended:
            return None
        try:
            message = await anext(self.requests)
        except StopAsyncIteration:
            self._ended = True
            return None
        except MalformedRequest:
            # The shared interceptor could not decode it; the stream ends there.
            self._ended = True
            self._fail_stream(
                "item", f"message {self.messages + 1} is not an IngestDocumentsRequest"
            )
            return None
        self.messages += 1
        return message

    def _fail_stream(self, field: str, description: str) -> None:
        if self.error is None:
            self.error = InvalidArgument.field(field, description)

    async def _skip_rest(self) -> None:
        """Drops the rest of a document that already failed, up to its end or the next header."""
        while self._open:
            message = await self._next()
            kind = message.WhichOneof("item") if message is not None else None
            if message is None or kind == "end":
                self._open = False
            elif kind == "header":
                self._lookahead = message
                self._open = False

    async def _content(
        self, pending: _Pending, failure: CallistoError | None = None
    ) -> AsyncIterator[bytes]:
        while self._open:
            message = await self._next()
            if message is None:
                self._open = False
                raise self.error or InvalidArgument.field(
                    "end", "the stream ended before this document's end"
                )
            kind = message.WhichOneof("item")
            if kind == "end":
                self._open = False
            elif kind == "data":
                pending.size += len(message.data)
                if failure is None:
                    yield message.data
            elif kind == "header":
                # It starts the next document: keep it for documents().
                self._lookahead = message
                self._open = False
                raise InvalidArgument.field(
                    "end", f"message {self.messages}: a header arrived before this document's end"
                )
            else:  # the rest of the document is skipped up to its end
                raise InvalidArgument.field(
                    "item", f"message {self.messages}: has no header, data or end"
                )
        if failure is not None:
            # Raised once the document's data is consumed, so the stream stays in step.
            raise failure

    def _document(self, header: pb.DocumentHeader) -> IngestDocument:
        meta, failure, chunk, csv_mode = header_to_meta(header, self.tenant, self.settings)
        pending = _Pending(meta, failure=failure)
        self.pending[meta.document_id] = pending
        return IngestDocument(
            meta=meta,
            content=self._content(pending, failure),
            filename=header.source_uri.rsplit("/", 1)[-1],
            chunk=chunk,
            csv_mode=csv_mode,
        )


def header_to_meta(
    header: pb.DocumentHeader, tenant: str, settings: RetrievalSettings, prefix: str = "header"
) -> tuple[DocumentMeta, CallistoError | None, ChunkOptions | None, CsvMode | None]:
    """The document's metadata, the header's validation error (if any), its chunking options and
    CSV mode (None: the service's)."""
    v = Violations()
    document_id = header.document_id or document_id_from(header.source_uri)
    if not document_id:
        v.add(f"{prefix}.document_id", "is required when source_uri is empty")
    elif not ID_PATTERN.fullmatch(document_id):
        v.add(f"{prefix}.document_id", ID_RULE)
    v.check(len(header.title) <= MAX_TITLE, f"{prefix}.title", f"at most {MAX_TITLE} characters")
    v.check(
        len(header.source_uri) <= MAX_SOURCE_URI,
        f"{prefix}.source_uri",
        f"at most {MAX_SOURCE_URI} characters",
    )
    v.check(len(header.tags) <= MAX_TAGS, f"{prefix}.tags", f"at most {MAX_TAGS} tags")
    for i, tag in enumerate(header.tags):
        v.check(0 < len(tag) <= MAX_TAG, f"{prefix}.tags[{i}]", f"1-{MAX_TAG} characters")
    attributes = _attributes(v, header.attributes, f"{prefix}.attributes")
    chunk: ChunkOptions | None = None
    options = header.chunking
    if options.chunk_size or options.chunk_overlap:
        size = options.chunk_size or settings.chunk_size
        overlap = options.chunk_overlap or min(settings.chunk_overlap, size // 4)
        chunk = ChunkOptions(max_chars=size, overlap_chars=overlap)
        try:
            chunk.validate()
        except rerrors.RetrievalError as error:
            v.add(f"{prefix}.chunking.{error.field}", error.description)
    meta = DocumentMeta(
        tenant=tenant,
        # An invalid id is kept as sent: the pipeline rejects it before touching Milvus, and the
        # client recognises its document in the result.
        document_id=document_id,
        title=header.title,
        source_uri=header.source_uri,
        mime_type=header.mime_type,
        tags=tuple(header.tags),
        attributes=attributes,
    )
    failure: CallistoError | None = None
    try:
        v.raise_if_any()
    except InvalidArgument as error:
        failure = error
    # An unset `chunking` keeps the service's CSV mode; a set one says rows or one table.
    csv_mode: CsvMode | None = None
    if header.HasField("chunking"):
        csv_mode = "rows" if options.csv_row_per_record else "table"
    return meta, failure, chunk, csv_mode


class _IngestRun:
    """Turns pipeline events into IngestDocumentsResponse messages."""

    def __init__(self, demux: _Demux, store: MilvusStore) -> None:
        self.demux = demux
        self.store = store
        self.sequence = 0
        self.unchanged = 0
        self.failures: dict[str, CallistoError] = {}
        self.started = time.perf_counter()
        self.last: ProgressEvent | None = None

    def progress(self, event: ProgressEvent | None = None) -> pb.IngestProgress:
        event = event or self.last
        if event is None:
            return pb.IngestProgress()
        return pb.IngestProgress(
            documents_parsed=event.documents_parsed,
            chunks_embedded=event.chunks_embedded,
            chunks_stored=event.chunks_stored,
            documents_failed=event.documents_failed,
            documents_unchanged=self.unchanged,
        )

    def message(self, **payload: Any) -> pb.IngestDocumentsResponse:
        self.sequence += 1
        return pb.IngestDocumentsResponse(sequence=self.sequence, **payload)

    async def result(self, event: ProgressEvent, fields: Mapping[str, str]) -> pb.DocumentResult:
        pending = self.demux.pending.get(event.document_id)
        if event.kind is ProgressKind.DOCUMENT_FAILED:
            header_error = pending.failure if pending is not None else None
            error = header_error or self.failure(event, fields)
            self.failures[event.document_id] = error
            return pb.DocumentResult(
                document_id=event.document_id,
                outcome=pb.DOCUMENT_OUTCOME_FAILED,
                error=error.to_status(),
            )
        if event.kind is ProgressKind.DOCUMENT_UNCHANGED:
            self.unchanged += 1
            with backend_errors():
                info = await self.store.get_document(self.demux.tenant, event.document_id)
            document = document_proto(info)
            outcome = pb.DOCUMENT_OUTCOME_UNCHANGED
        else:
            meta = pending.meta if pending else DocumentMeta(self.demux.tenant, event.document_id)
            document = pb.Document(
                name=f"documents/{event.document_id}",
                title=meta.title,
                source_uri=meta.source_uri,
                mime_type=meta.mime_type,
                tags=list(meta.tags),
                attributes={k: attribute_to_proto(v) for k, v in meta.attributes.items()},
                content_hash=event.content_hash,
                chunk_count=event.chunk_count,
                update_time=_timestamp(int(time.time() * 1000)),
            )
            outcome = pb.DOCUMENT_OUTCOME_CREATED if event.created else pb.DOCUMENT_OUTCOME_UPDATED
        if pending is not None:
            document.size_bytes = pending.size
        return pb.DocumentResult(document_id=event.document_id, outcome=outcome, document=document)

    @staticmethod
    def failure(event: ProgressEvent, fields: Mapping[str, str]) -> CallistoError:
        error = event.failure or Internal("internal error")
        return error.renamed(fields) if isinstance(error, rerrors.RetrievalError) else error


# Handlers


class RetrievalServicer(pb_grpc.RetrievalServiceServicer):
    """Every RPC of `callisto.retrieval.v1.RetrievalService`."""

    def __init__(
        self, backends: Backends, settings: RetrievalSettings, reranker: Reranker | None = None
    ) -> None:
        self._backends = backends
        self._settings = settings
        # The relevance reranker behind `rerank` (a cross-encoder, e.g. on a GPU Triton). None
        # ships with the service (rerank.py), so `rerank` answers FAILED_PRECONDITION.
        self._reranker = reranker
        weight = settings.hybrid_dense_weight
        if not 0.0 <= weight <= 1.0:
            raise ValueError("CALLISTO_RETRIEVAL_HYBRID_DENSE_WEIGHT must be between 0 and 1")
        self._default_fusion = Fusion(
            FusionKind.WEIGHTED, dense_weight=weight, sparse_weight=1.0 - weight
        )
        TextAnalyzer(settings.text_analyzer)  # an unknown language fails at start, not later

    def _pipeline(self, store: MilvusStore) -> IngestPipeline:
        settings = self._settings
        return IngestPipeline(
            store,
            # Ingestion's own embedding capacity: queries never wait behind bulk batches.
            self._backends.embedder.ingestion,
            IngestOptions(
                parse=ParseOptions(
                    max_bytes=settings.max_document_bytes,
                    max_inflated_bytes=settings.max_inflated_bytes,
                    max_archive_entries=settings.max_archive_entries,
                    max_compression_ratio=settings.max_compression_ratio,
                ),
                chunk=ChunkOptions(settings.chunk_size, settings.chunk_overlap),
            ),
            parser=self._backends.parser,
        )

    # Documents

    @reports_malformed_requests
    async def IngestDocuments(
        self, request_iterator: AsyncIterator[pb.IngestDocumentsRequest], context: Context
    ) -> AsyncIterator[pb.IngestDocumentsResponse]:
        store = await self._backends.store()
        demux = _Demux(aiter(request_iterator), current_tenant(), self._settings)
        run = _IngestRun(demux, store)
        terminal: status_pb2.Status | None = None
        try:
            async for event in self._pipeline(store).run(demux.documents()):
                run.last = event
                if event.kind in (ProgressKind.DOCUMENT_PARSED, ProgressKind.CHUNKS_EMBEDDED):
                    yield run.message(progress=run.progress(event))
                else:
                    result = await run.result(event, _STREAM_FIELDS)
                    yield run.message(document=result)
        except CallistoError as error:
            terminal = error.to_status()
        if terminal is None and demux.error is not None:
            # After the results of every document received before the stream broke.
            terminal = demux.error.to_status()
        if terminal is not None:
            yield run.message(error=terminal)
            return
        summary = pb.IngestSummary(
            progress=run.progress(), duration_ms=(time.perf_counter() - run.started) * 1000
        )
        yield run.message(summary=summary)

    async def IngestDocument(
        self, request: pb.IngestDocumentRequest, context: Context
    ) -> pb.IngestDocumentResponse:
        if not request.HasField("header"):
            raise InvalidArgument.field("header", "is required")
        if not request.content:
            raise InvalidArgument.field("content", "is required")
        if len(request.content) > self._settings.max_document_bytes:
            raise rerrors.DocumentTooLarge(
                "content", f"document is larger than the {self._settings.max_document_bytes}-byte "
                "limit"
            )  # fmt: skip
        tenant = current_tenant()
        meta, failure, chunk, csv_mode = header_to_meta(request.header, tenant, self._settings)
        if failure is not None:
            raise failure
        store = await self._backends.store()

        async def content() -> AsyncIterator[bytes]:
            yield request.content

        async def one() -> AsyncIterator[IngestDocument]:
            yield IngestDocument(
                meta,
                content(),
                filename=request.header.source_uri.rsplit("/", 1)[-1],
                chunk=chunk,
                csv_mode=csv_mode,
            )

        demux = _Demux(_no_requests(), tenant, self._settings)
        demux.pending[meta.document_id] = _Pending(meta, len(request.content))
        run = _IngestRun(demux, store)
        result: pb.DocumentResult | None = None
        with backend_errors(_UNARY_FIELDS):
            async for event in self._pipeline(store).run(one()):
                if event.kind in (
                    ProgressKind.DOCUMENT_STORED,
                    ProgressKind.DOCUMENT_UNCHANGED,
                    ProgressKind.DOCUMENT_FAILED,
                ):
                    result = await run.result(event, _UNARY_FIELDS)
        if meta.document_id in run.failures:
            raise run.failures[meta.document_id]
        if result is None:
            raise Internal("the document produced no result")
        return pb.IngestDocumentResponse(result=result)

    async def GetDocument(
        self, request: pb.GetDocumentRequest, context: Context
    ) -> pb.GetDocumentResponse:
        document_id = _document_id(request.name)
        store = await self._backends.store()
        with backend_errors({"document_id": "name"}):
            info = await store.get_document(current_tenant(), document_id)
        return pb.GetDocumentResponse(document=document_proto(info))

    async def ListDocuments(
        self, request: pb.ListDocumentsRequest, context: Context
    ) -> pb.ListDocumentsResponse:
        v = Violations()
        page_size = check_page_size(v, request.page_size, default=50, maximum=1000)
        for i, tag in enumerate(request.tags):
            v.check(0 < len(tag) <= MAX_TAG, f"tags[{i}]", f"1-{MAX_TAG} characters")
        v.raise_if_any()
        query = {"tags": sorted(request.tags)}
        cursor = await page_tokens.decode(request.page_token, query) or {}
        after = cursor.get("a", "")
        if not isinstance(after, str) or (after and not ID_PATTERN.fullmatch(after)):
            raise InvalidArgument.field("page_token", "is not a token this service issued")
        conditions = [Condition("tags", "contains_all", list(request.tags))] if request.tags else []
        store = await self._backends.store()
        with backend_errors():
            page = await store.list_documents(
                current_tenant(), page_size=page_size, page_token=after, conditions=conditions
            )
        token = ""
        if page.next_page_token:
            token = await page_tokens.encode({"a": page.next_page_token}, query)
        return pb.ListDocumentsResponse(
            documents=[document_proto(d) for d in page.documents], next_page_token=token
        )

    async def DeleteDocument(
        self, request: pb.DeleteDocumentRequest, context: Context
    ) -> pb.DeleteDocumentResponse:
        document_id = _document_id(request.name)
        tenant = current_tenant()
        store = await self._backends.store()
        with backend_errors({"document_id": "name"}):
            await store.get_document(tenant, document_id)  # NOT_FOUND, also for other tenants'
            await store.delete_document(tenant, document_id)
        return pb.DeleteDocumentResponse()

    async def Search(self, request: pb.SearchRequest, context: Context) -> pb.SearchResponse:
        settings = self._settings
        v = Violations()
        query = request.query.strip()
        if not query:
            v.add("query", "is required")
        v.check(len(query) <= MAX_QUERY, "query", f"at most {MAX_QUERY} characters")
        page_size = check_page_size(v, request.page_size, default=10, maximum=100)
        mode = _MODES.get(request.mode)
        v.check(mode is not None, "mode", "unknown search mode")
        v.check(math.isfinite(request.min_score), "min_score", "must be a finite number")
        for name in ("dense_weight", "keyword_weight"):
            weight = getattr(request, name)
            v.check(0.0 <= weight <= 1.0, name, "must be between 0 and 1")
        fusion = self._default_fusion
        if request.fusion == pb.FUSION_METHOD_WEIGHTED:
            dense, keyword = request.dense_weight, request.keyword_weight
            if dense == 0.0 and keyword == 0.0:
                fusion = self._default_fusion
            else:
                fusion = Fusion(FusionKind.WEIGHTED, dense_weight=dense, sparse_weight=keyword)
        elif request.fusion == pb.FUSION_METHOD_RRF:
            fusion = Fusion(FusionKind.RRF)
        elif request.fusion != pb.FUSION_METHOD_UNSPECIFIED:
            v.add("fusion", "unknown fusion method")
        mmr_lambda = settings.mmr_lambda
        if request.HasField("mmr_lambda"):
            mmr_lambda = request.mmr_lambda
            v.check(request.diversify, "mmr_lambda", "only applies with diversify")
            v.check(0.0 <= mmr_lambda <= 1.0, "mmr_lambda", "must be between 0 and 1")
        conditions = filter_conditions(v, request.filters, CHUNK_FIELDS)
        v.raise_if_any()
        assert mode is not None
        if request.rerank and self._reranker is None:
            raise FailedPrecondition(
                "rerank needs a relevance reranker model and none is configured on this service;"
                " set diversify for MMR diversification",
                reason="RERANKER_NOT_CONFIGURED",
            )
        key = {
            "query": query,
            "mode": mode.value,
            "min_score": request.min_score,
            "filters": [f.SerializeToString().hex() for f in request.filters],
            "fusion": [fusion.kind.value, fusion.dense_weight, fusion.sparse_weight],
            "rerank": request.rerank,
            "diversify": [request.diversify, mmr_lambda],
        }
        cursor = await page_tokens.decode(request.page_token, key) or {}
        offset = cursor.get("o", 0)
        if not isinstance(offset, int) or not 0 <= offset < settings.max_result_window:
            raise InvalidArgument.field("page_token", "is not a token this service issued")
        top_k = min(page_size, settings.max_result_window - offset)
        store = await self._backends.store()
        retriever = Retriever(store, self._backends.embedder, self._reranker)
        with backend_errors({"top_k": "page_size"}):
            hits = await retriever.search(
                SearchRequest(
                    tenant=current_tenant(),
                    query=query,
                    mode=mode,
                    top_k=top_k,
                    offset=offset,
                    conditions=conditions,
                    fusion=fusion,
                    score_threshold=request.min_score if request.min_score else None,
                    rerank=request.rerank,
                    diversify=request.diversify,
                    mmr_lambda=mmr_lambda,
                    rerank_candidates=settings.max_result_window,
                )
            )
        following = offset + len(hits)
        more = len(hits) == top_k and following < settings.max_result_window
        return pb.SearchResponse(
            hits=[
                pb.SearchHit(
                    rank=offset + i + 1,
                    citation=common_pb2.Citation(
                        document_id=hit.document_id,
                        title=hit.title,
                        source_uri=hit.source_uri,
                        chunk_id=hit.chunk_id,
                        start_offset=hit.start,
                        end_offset=hit.end,
                        page=hit.page or 0,
                        section=" > ".join(hit.section),
                        score=hit.score,
                        text=hit.text,
                    ),
                )
                for i, hit in enumerate(hits)
            ],
            next_page_token=await page_tokens.encode({"o": following}, key) if more else "",
        )

    # Entities

    async def BatchUpsertEntities(
        self, request: pb.BatchUpsertEntitiesRequest, context: Context
    ) -> pb.BatchUpsertEntitiesResponse:
        v = Violations()
        limit = self._settings.max_entities_per_batch
        v.check(bool(request.entities), "entities", "is required")
        v.check(len(request.entities) <= limit, "entities", f"at most {limit} per request")
        records: list[EntityRecord] = []
        seen: set[str] = set()
        for i, entity in enumerate(request.entities):
            where = f"entities[{i}]"
            try:
                entity_id = _entity_id(entity.name, f"{where}.name")
            except InvalidArgument as error:
                v.add(error.violations[0].field, error.violations[0].description)
                continue
            if entity_id in seen:
                v.add(f"{where}.name", "appears twice in this request")
            seen.add(entity_id)
            attributes = _attributes(v, entity.attributes, f"{where}.attributes")
            try:
                records.append(
                    parse_entity(
                        {
                            "entity_id": entity_id,
                            "entity_type": entity.entity_type,
                            "title": entity.title,
                            "master": entity.master,
                            "facets": dict(entity.facets),
                            "attributes": attributes,
                        },
                        where,
                    )
                )
            except rerrors.RetrievalError as error:
                v.add(error.field.replace(".entity_id", ".name"), error.description)
        v.raise_if_any()
        store = await self._backends.store()
        with backend_errors():
            await FacetedSearch(store, self._backends.embedder).index_entities(
                current_tenant(), records
            )
        return pb.BatchUpsertEntitiesResponse(entities=[record_proto(r) for r in records])

    async def DeleteEntity(
        self, request: pb.DeleteEntityRequest, context: Context
    ) -> pb.DeleteEntityResponse:
        entity_id = _entity_id(request.name, "name")
        tenant = current_tenant()
        store = await self._backends.store()
        with backend_errors({"entity_id": "name"}):
            if not await store.entity_record_hashes(tenant, [entity_id]):
                raise NotFound(f"entity {entity_id!r} not found")
            await store.delete_entity(tenant, entity_id)
        return pb.DeleteEntityResponse()

    async def SearchEntities(
        self, request: pb.SearchEntitiesRequest, context: Context
    ) -> pb.SearchEntitiesResponse:
        v = Violations()
        query = request.query.strip()
        if not query:
            v.add("query", "is required")
        v.check(len(query) <= MAX_QUERY, "query", f"at most {MAX_QUERY} characters")
        page_size = check_page_size(v, request.page_size, default=10, maximum=100)
        conditions = filter_conditions(v, request.filters, ENTITY_FIELDS)
        v.raise_if_any()
        tenant = current_tenant()
        store = await self._backends.store()
        with backend_errors({"top_k": "page_size"}):
            hits = await FacetedSearch(store, self._backends.embedder).search(
                tenant,
                query,
                entity_types=list(request.entity_types),
                conditions=conditions,
                top_k=page_size,
            )
            rows = await store.entity_records(tenant, [h.entity_id for h in hits])
        by_entity: dict[str, list[EntityRow]] = {}
        for row in rows:
            by_entity.setdefault(row.entity_id, []).append(row)
        return pb.SearchEntitiesResponse(
            hits=[
                pb.EntityHit(
                    entity=entity_proto(by_entity[hit.entity_id]),
                    score=hit.score,
                    matches=[
                        pb.FacetMatch(facet=m.facet, text=m.text, score=m.score)
                        for m in hit.matches
                    ],
                )
                for hit in hits
                if hit.entity_id in by_entity
            ]
        )


async def _no_requests() -> AsyncIterator[pb.IngestDocumentsRequest]:
    return
    yield  # an empty async generator


# Bootstrap


async def build(runtime: Runtime[RetrievalSettings]) -> ServiceDefinition:
    backends = Backends(runtime.settings)
    backends.start()
    servicer = RetrievalServicer(backends, runtime.settings)
    return ServiceDefinition(
        service_names=[SERVICE_NAME],
        register=lambda server: pb_grpc.add_RetrievalServiceServicer_to_server(servicer, server),
        checks=[
            DependencyCheck("embedder", backends.embedder.ready, timeout=5.0),
            # The probe is a read: it runs beside writes, never queued behind them.
            DependencyCheck("milvus", backends.milvus_ready, timeout=15.0),
        ],
        on_stop=[backends.close],
    )


__all__ = ["SERVICE_NAME", "RetrievalServicer", "build"]
