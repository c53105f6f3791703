"""Second stages over search candidates: relevance reranking and MMR diversification.

A :class:`Reranker` reorders candidates by *relevance*: it takes the query, its embedding and the
first-stage candidates and returns them best first (cut to ``top_k``), each with its new score.
The intended implementation is a cross-encoder served by Triton (e.g. a ``reranker`` model taking
``query`` and ``passage`` TYPE_STRING inputs and returning one FP32 ``score`` per pair), called
with one batch of (query, candidate.text) pairs via ``tritonclient.grpc.aio`` exactly as
:class:`~callisto.services.retrieval.embedder.TritonEmbedder` batches texts; it belongs on a GPU.
No cross-encoder ships in any package this project can install, so the service has no reranker
configured and ``rerank`` requests fail with FAILED_PRECONDITION (see
:class:`~callisto.services.retrieval.search.RerankerUnavailable`).

:class:`MMRDiversifier` is not a relevance reranker: maximal marginal relevance over the
candidates' dense embeddings trades relevance for diversity,

    next = argmax_c  lambda * sim(query, c) - (1 - lambda) * max_{s in selected} sim(c, s)

and is what ``diversify`` runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from callisto.services.retrieval.errors import InvalidArgument
from callisto.services.retrieval.models import SearchHit

DEFAULT_MMR_LAMBDA = 0.7


class Reranker(Protocol):
    """Reorders candidates by relevance to the query, best first, at most ``top_k``."""

    async def rerank(
        self,
        query: str,
        query_vector: npt.NDArray[np.float32] | None,
        candidates: Sequence[SearchHit],
        top_k: int,
    ) -> list[SearchHit]: ...


class MMRDiversifier:
    """Maximal marginal relevance; ``lambda_`` = 1 is pure relevance, 0 pure diversity.

    The reported score is each hit's cosine similarity to the query, so scores stay comparable
    while the order reflects diversity. Candidates must carry embeddings (search with
    ``with_embeddings=True``).
    """

    def __init__(self, lambda_: float = DEFAULT_MMR_LAMBDA) -> None:
        if not 0.0 <= lambda_ <= 1.0:
            raise InvalidArgument("mmr_lambda", "must be between 0 and 1")
        self.lambda_ = lambda_

    async def diversify(
        self,
        query: str,
        query_vector: npt.NDArray[np.float32] | None,
        candidates: Sequence[SearchHit],
        top_k: int,
    ) -> list[SearchHit]:
        if query_vector is None:
            raise InvalidArgument("query", "MMR needs the query embedding")
        if any(c.embedding is None for c in candidates):
            raise InvalidArgument("candidates", "MMR needs candidate embeddings")
        if len(candidates) > 64:
            return await asyncio.to_thread(self._select, query_vector, candidates, top_k)
        return self._select(query_vector, candidates, top_k)

    def _select(
        self, query_vector: npt.NDArray[np.float32], candidates: Sequence[SearchHit], top_k: int
    ) -> list[SearchHit]:
        if not candidates:
            return []
        matrix = _unit(np.array([c.embedding for c in candidates], dtype=np.float32))
        relevance = matrix @ _unit(query_vector.reshape(1, -1))[0]
        pairwise = matrix @ matrix.T
        selected: list[int] = []
        remaining = list(range(len(candidates)))
        # Redundancy of each remaining candidate against everything selected so far.
        redundancy = np.full(len(candidates), -np.inf, dtype=np.float32)
        while remaining and len(selected) < top_k:
            penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
            gains = self.lambda_ * relevance - (1.0 - self.lambda_) * penalty
            best = max(remaining, key=lambda i: float(gains[i]))
            selected.append(best)
            remaining.remove(best)
            redundancy = np.maximum(redundancy, pairwise[best])
        return [dataclasses.replace(candidates[i], score=float(relevance[i])) for i in selected]


def _unit(matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)
