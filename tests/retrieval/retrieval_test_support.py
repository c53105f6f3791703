"""Helpers shared by the retrieval service tests (a unique module name: tests/ has several
support modules on sys.path)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.rpc import error_details_pb2, status_pb2

from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.services.common.auth import create_api_key

RETRIEVAL_SERVICE = "callisto.retrieval.v1.RetrievalService"
MAX_DOCUMENT_BYTES = 256 * 1024
Metadata = tuple[tuple[str, str], ...]


def retrieval_env(service_env: dict[str, str], triton_url: str, data_dir: Path) -> dict[str, str]:
    return {
        **service_env,
        "CALLISTO_TRITON_URL": triton_url,
        "CALLISTO_RETRIEVAL_DATA_DIR": str(data_dir),
        "CALLISTO_RETRIEVAL_MAX_DOCUMENT_BYTES": str(MAX_DOCUMENT_BYTES),
        "CALLISTO_REFLECT_MESH": "true",
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "1",
    }


def bearer(key: str) -> Metadata:
    return (("authorization", f"Bearer {key}"),)


def create_key(redis_url: str, tenant: str) -> str:
    async def create() -> str:
        return await create_api_key(redis_url, tenant, label="retrieval tests")

    # A worker thread has no running event loop, so this works from async tests too.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, create()).result()


@dataclass(frozen=True)
class Doc:
    """A document to send over IngestDocuments."""

    document_id: str
    content: bytes
    mime_type: str
    title: str = ""
    source_uri: str = ""
    tags: Sequence[str] = ()
    piece: int = 1000


async def requests(docs: Sequence[Doc]) -> AsyncIterator[pb.IngestDocumentsRequest]:
    for doc in docs:
        yield pb.IngestDocumentsRequest(
            header=pb.DocumentHeader(
                document_id=doc.document_id,
                title=doc.title or doc.document_id,
                source_uri=doc.source_uri or f"test://{doc.document_id}",
                mime_type=doc.mime_type,
                tags=list(doc.tags),
            )
        )
        for start in range(0, len(doc.content), doc.piece):
            yield pb.IngestDocumentsRequest(data=doc.content[start : start + doc.piece])
        yield pb.IngestDocumentsRequest(end=pb.DocumentEnd())


async def ingest(
    stub: object, docs: Sequence[Doc], metadata: Metadata
) -> list[pb.IngestDocumentsResponse]:
    call = stub.IngestDocuments(requests(docs), metadata=metadata)  # type: ignore[attr-defined]
    return [response async for response in call]


def results(responses: Sequence[pb.IngestDocumentsResponse]) -> dict[str, pb.DocumentResult]:
    return {
        r.document.document_id: r.document for r in responses if r.WhichOneof("event") == "document"
    }


def bad_request(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """field -> description of the BadRequest detail in a failed call's trailers."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            return violations(status_pb2.Status.FromString(value))
    return {}


def violations(status: status_pb2.Status) -> dict[str, str]:
    found: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.update({v.field: v.description for v in bad.field_violations})
    return found


def retry_info(error: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return info
    return None
