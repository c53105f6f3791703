"""Text embeddings from the Triton ``embedder`` model over gRPC.

The model takes ``text`` (TYPE_STRING, dims [1], batched along the first dimension, at most 64 per
request) and returns ``embedding`` (TYPE_FP32 [384], L2-normalised). :class:`TritonEmbedder`
splits a call into batches of at most ``max_batch_size`` and bounds each batch's request with the
timeout (a long document is many requests; a bound on the whole would fail it on every retry).
Queries and ingestion have separate capacity: :meth:`TritonEmbedder.embed` (queries) and
:attr:`TritonEmbedder.ingestion` each have their own limit of requests in flight, so a query
never waits for a slot behind bulk batches. Anything that embeds text can stand in through the
:class:`Embedder` protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from callisto.services.retrieval.errors import BackendUnavailable, InvalidArgument

EMBEDDING_DIM = 384


@runtime_checkable
class Embedder(Protocol):
    """Embeds texts into unit vectors of ``dim`` floats (one row per text, same order)."""

    @property
    def dim(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


# Triton priority levels of the embedder's dynamic batcher (1 is served first; 0 asks for the
# model's default, level 2): queries ahead of bulk ingestion.
QUERY_PRIORITY = 1
BULK_PRIORITY = 0


class TritonEmbedder:
    """Async client for the Triton ``embedder`` model (``tritonclient.grpc.aio``)."""

    def __init__(
        self,
        url: str,
        *,
        model_name: str = "embedder",
        model_version: str = "",
        max_batch_size: int = 64,
        max_concurrency: int = 4,
        timeout_s: float = 30.0,
        dim: int = EMBEDDING_DIM,
        query_concurrency: int = 4,
        ingest_batch_size: int = 16,
    ) -> None:
        from tritonclient.grpc import aio as grpcclient

        if not 1 <= max_batch_size <= 64 or not 1 <= ingest_batch_size <= 64:
            raise InvalidArgument("max_batch_size", "must be between 1 and 64")
        self._client = grpcclient.InferenceServerClient(url=url)
        self._model = model_name
        self._version = model_version
        self._max_batch = max_batch_size
        self._queries = asyncio.Semaphore(query_concurrency)
        self._timeout = timeout_s
        self._dim = dim
        # Ingestion's own capacity: ``max_concurrency`` requests of ``ingest_batch_size`` texts
        # in flight. Triton runs requests in turn, so a query waits for at most that much bulk
        # work: small requests keep searches fast during an ingest at little cost to throughput.
        self.ingestion: Embedder = _Lane(
            self, asyncio.Semaphore(max_concurrency), min(ingest_batch_size, max_batch_size)
        )

    @property
    def dim(self) -> int:
        return self._dim

    async def ready(self) -> bool:
        """Whether Triton reports the model ready (for health checks)."""
        try:
            return bool(await self._client.is_model_ready(self._model, self._version))
        except Exception:  # any transport failure means "not ready" to a health probe
            return False

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed query texts (the query lane, ahead of ingestion in Triton's queue)."""
        return await self.embed_with(texts, self._queries, priority=QUERY_PRIORITY)

    async def embed_with(
        self,
        texts: Sequence[str],
        slots: asyncio.Semaphore,
        batch_size: int | None = None,
        *,
        priority: int = BULK_PRIORITY,
    ) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        size = batch_size or self._max_batch
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        results = await asyncio.gather(*(self._embed_batch(b, slots, priority) for b in batches))
        return np.concatenate(results, axis=0)

    async def _embed_batch(
        self, texts: Sequence[str], slots: asyncio.Semaphore, priority: int
    ) -> npt.NDArray[np.float32]:
        from tritonclient.grpc import aio as grpcclient
        from tritonclient.utils import InferenceServerException

        data = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
        inputs = [grpcclient.InferInput("text", list(data.shape), "BYTES")]
        inputs[0].set_data_from_numpy(data)
        outputs = [grpcclient.InferRequestedOutput("embedding")]
        async with slots:
            # The bound starts once the request is sent: waiting for a slot is not Triton's time.
            try:
                async with asyncio.timeout(self._timeout):
                    result = await self._client.infer(
                        self._model,
                        inputs,
                        model_version=self._version,
                        outputs=outputs,
                        priority=priority,
                        client_timeout=self._timeout,
                    )
            except TimeoutError as exc:
                raise BackendUnavailable(
                    "embedder", f"Triton embedder did not answer within {self._timeout:.1f} s"
                ) from exc
            except InferenceServerException as exc:
                raise BackendUnavailable("embedder", "Triton embedder failed") from exc
        array = result.as_numpy("embedding")
        if array is None or array.shape != (len(texts), self._dim):
            shape = None if array is None else array.shape
            raise BackendUnavailable(
                "embedder", f"embedder returned shape {shape}, expected ({len(texts)}, {self._dim})"
            )
        return np.asarray(array, dtype=np.float32)

    async def close(self) -> None:
        await self._client.close()


class _Lane:
    """The same Triton client with its own limit of requests in flight (bulk ingestion)."""

    def __init__(self, embedder: TritonEmbedder, slots: asyncio.Semaphore, batch_size: int) -> None:
        self._embedder = embedder
        self._slots = slots
        self._batch_size = batch_size

    @property
    def dim(self) -> int:
        return self._embedder.dim

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return await self._embedder.embed_with(texts, self._slots, self._batch_size)
