"""`client.retrieval`: search, entity search, ingestion and documents.

Methods return the `callisto.api.retrieval.v1.retrieval_pb2` messages.

- `search(query, mode=..., page_size=..., filters=..., **options)` → `list[SearchHit]` (each hit's
  `citation` names document, chunk, offsets and score); `options` are further `SearchRequest`
  fields (`fusion`, `dense_weight`, `keyword_weight`, `rerank`, `min_score`, `page_token`).
  `search_entities(query, entity_types=..., page_size=...)` → `list[EntityHit]`. Both retried.
- `ingest(documents, on_result=..., on_progress=...)` streams `FileSpec`s (files read piece by
  piece) and `BytesDocument`s (bytes in memory) over one `IngestDocuments` call and returns an
  `IngestReport` (created / updated / unchanged / failed ids, chunks stored, and `error` when
  the stream itself ended in a terminal status). `on_result(DocumentResult)` hears of each
  document as the service finishes it, `on_progress(IngestProgress)` of the running counters.
  `ingest_folder(folder, recursive=, tags=, attributes=)` does the same for a folder's supported
  files. Ingestion is not retried (a client stream cannot be replayed from the middle); re-running
  it is cheap, since unchanged documents are skipped.
- `ingest_document(header, content)` is the unary form for one small document.
- `upsert_entities(entities)` (batched by 100, retried: an upsert is idempotent),
  `delete_entity`, `get_document`, `list_documents` (async iterator), `delete_document`.
"""

# `timeout` is a gRPC deadline sent to the server (and spent across retries), not a local
# cancel scope, so these functions take it the way grpc stubs do.
# ruff: noqa: ASYNC109
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from callisto._facade import Facade, Metadata
from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from callisto.attributes import Scalar
from callisto.errors import from_rpc_error
from callisto.ingest.folder import (
    CHUNK_BYTES,
    DocumentSpec,
    IngestReport,
    collect_results,
    folder_specs,
    request_stream,
)
from callisto.streams import paged

ENTITY_BATCH = 100


def _document_name(document: str) -> str:
    return document if "/" in document else f"documents/{document}"


def _entity_name(entity: str) -> str:
    return entity if "/" in entity else f"entities/{entity}"


class RetrievalClient(Facade):
    """The retrieval service (`callisto.retrieval.v1.RetrievalService`)."""

    @property
    def stub(self) -> pb_grpc.RetrievalServiceAsyncStub:
        return pb_grpc.RetrievalServiceStub(self._client.channel)

    async def search(
        self,
        query: str,
        *,
        mode: pb.SearchMode.ValueType = pb.SEARCH_MODE_UNSPECIFIED,
        page_size: int = 0,
        filters: Sequence[pb.MetadataFilter] = (),
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **options: Any,
    ) -> list[pb.SearchHit]:
        """The best hits for `query` in the caller's tenant, best first."""
        response = await self.search_page(
            pb.SearchRequest(
                query=query, mode=mode, page_size=page_size, filters=list(filters), **options
            ),
            timeout=timeout,
            metadata=metadata,
        )
        return list(response.hits)

    async def search_page(
        self,
        request: pb.SearchRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.SearchResponse:
        """One `SearchResponse` (hits and `next_page_token`) for a full request."""
        return await self._unary(
            self.stub.Search,
            request,
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.SearchResponse,
        )

    async def search_entities(
        self,
        query: str,
        *,
        entity_types: Sequence[str] = (),
        page_size: int = 0,
        filters: Sequence[pb.MetadataFilter] = (),
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> list[pb.EntityHit]:
        """Entities whose master or facet records match `query`, scores summed per entity."""
        response = await self._unary(
            self.stub.SearchEntities,
            pb.SearchEntitiesRequest(
                query=query,
                entity_types=list(entity_types),
                page_size=page_size,
                filters=list(filters),
            ),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.SearchEntitiesResponse,
        )
        return list(response.hits)

    async def upsert_entities(
        self,
        entities: Sequence[pb.Entity],
        *,
        batch_size: int = ENTITY_BATCH,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> list[pb.Entity]:
        """Creates or replaces entities, `batch_size` per call; returns them as stored."""
        stored: list[pb.Entity] = []
        for start in range(0, len(entities), batch_size):
            response = await self._unary(
                self.stub.BatchUpsertEntities,
                pb.BatchUpsertEntitiesRequest(entities=entities[start : start + batch_size]),
                idempotent=True,
                timeout=timeout,
                metadata=metadata,
                response_type=pb.BatchUpsertEntitiesResponse,
            )
            stored.extend(response.entities)
        return stored

    async def delete_entity(
        self, entity: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> None:
        await self._unary(
            self.stub.DeleteEntity,
            pb.DeleteEntityRequest(name=_entity_name(entity)),
            idempotent=False,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.DeleteEntityResponse,
        )

    async def ingest(
        self,
        documents: Sequence[DocumentSpec],
        *,
        on_result: Callable[[pb.DocumentResult], None] | None = None,
        on_progress: Callable[[pb.IngestProgress], None] | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> IngestReport:
        """Streams `documents` over one IngestDocuments call; `timeout` bounds the whole stream
        (none by default: a large folder takes as long as it takes)."""
        if not documents:
            return IngestReport()
        call = self.stub.IngestDocuments(
            request_stream(documents, chunk_bytes), metadata=metadata, timeout=timeout
        )
        try:
            return await collect_results(call, on_result=on_result, on_progress=on_progress)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            call.cancel()

    async def ingest_folder(
        self,
        folder: Path,
        *,
        recursive: bool = False,
        tags: Sequence[str] = (),
        attributes: Mapping[str, Scalar] | None = None,
        on_result: Callable[[pb.DocumentResult], None] | None = None,
        on_progress: Callable[[pb.IngestProgress], None] | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> IngestReport:
        """Ingests the folder's supported files (ids from their paths relative to it)."""
        specs = await asyncio.to_thread(folder_specs, folder, recursive, tags, attributes)
        return await self.ingest(
            specs, on_result=on_result, on_progress=on_progress, timeout=timeout, metadata=metadata
        )

    async def ingest_document(
        self,
        header: pb.DocumentHeader,
        content: bytes,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.DocumentResult:
        """Ingests one document in a single unary call (small documents, HTTP-like use)."""
        response = await self._unary(
            self.stub.IngestDocument,
            pb.IngestDocumentRequest(header=header, content=content),
            idempotent=False,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.IngestDocumentResponse,
        )
        return response.result

    async def get_document(
        self, document: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> pb.Document:
        response = await self._unary(
            self.stub.GetDocument,
            pb.GetDocumentRequest(name=_document_name(document)),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.GetDocumentResponse,
        )
        return response.document

    def list_documents(
        self,
        *,
        tags: Sequence[str] = (),
        page_size: int = 0,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[pb.Document]:
        async def fetch(token: str) -> pb.ListDocumentsResponse:
            return await self._unary(
                self.stub.ListDocuments,
                pb.ListDocumentsRequest(tags=list(tags), page_size=page_size, page_token=token),
                idempotent=True,
                timeout=timeout,
                metadata=metadata,
                response_type=pb.ListDocumentsResponse,
            )

        return paged(fetch, lambda r: r.documents, lambda r: r.next_page_token)

    async def delete_document(
        self, document: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> None:
        await self._unary(
            self.stub.DeleteDocument,
            pb.DeleteDocumentRequest(name=_document_name(document)),
            idempotent=False,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.DeleteDocumentResponse,
        )
