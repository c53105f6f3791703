"""Helpers shared by the retrieval service tests (a unique module name: tests/ has several
support modules on sys.path)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
from google.rpc import status_pb2

from callisto import errors
from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.client import auth_metadata
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
    return auth_metadata(key)


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
    """field -> description of the BadRequest detail of a failed call."""
    return errors.from_rpc_error(error).field_violations


def violations(status: status_pb2.Status) -> dict[str, str]:
    """field -> description of the BadRequest detail of a stream's terminal status."""
    return errors.from_status(status).field_violations


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """Seconds the server's RetryInfo asks the caller to wait, if it sent one."""
    return errors.from_rpc_error(error).retry_delay


_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """Bag of hashed words (plus word bigrams) in 384 dims, L2-normalised: texts sharing words
    get similar vectors, which is all the storage/search tests need."""

    dim = 384

    def __init__(self) -> None:
        self.calls = 0
        self.texts_embedded = 0

    def vector(self, text: str) -> npt.NDArray[np.float32]:
        out = np.zeros(self.dim, dtype=np.float32)
        words = _WORD.findall(text.lower())
        for token in [*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))]:
            digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
            index = int.from_bytes(digest[:4], "little") % self.dim
            out[index] += 1.0 if digest[4] & 1 else -1.0
        norm = float(np.linalg.norm(out))
        if norm == 0:
            out[0] = 1.0
            return out
        return out / norm

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        self.texts_embedded += len(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.vector(t) for t in texts])
