"""Second-stage reranking of search candidates.

A :class:`Reranker` takes the query, its embedding and the first-stage candidates and returns
them reordered (and cut to ``top_k``). :class:`MMRReranker` trades relevance against diversity
with maximal marginal relevance over the candidates' dense embeddings:

    next = argmax_c  lambda * sim(query, c) - (1 - lambda) * max_{s in selected} sim(c, s)

A cross-encoder plugs into the same protocol: a Triton model (e.g. ``reranker`` taking
``query`` and ``passage`` TYPE_STRING inputs and returning a ``score`` FP32 per pair) is called
with one batch of (query, candidate.text) pairs via ``tritonclient.grpc.aio`` — exactly as
:class:`~callisto.services.retrieval.embedder.TritonEmbedder` batches texts — and the candidates
are returned sorted by that score with ``dataclasses.replace(hit, score=...)``. No such model
ships in a package on this machine, so MMR is the reranker that runs here.
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


class Reranker(Protocol):
    async def rerank(
        self,
        query: str,
        query_vector: npt.NDArray[np.float32] | None,
        candidates: Sequence[SearchHit],
        top_k: int,
    ) -> list[SearchHit]: ...


class MMRReranker:
    """Maximal marginal relevance; ``lambda_`` = 1 is pure relevance, 0 pure diversity.

    The reported score is each hit's cosine similarity to the query, so scores stay comparable
    while the order reflects diversity. Candidates must carry embeddings (search with
    ``with_embeddings=True``).
    """

    def __init__(self, lambda_: float = 0.5) -> None:
        if not 0.0 <= lambda_ <= 1.0:
            raise InvalidArgument("mmr_lambda", "must be between 0 and 1")
        self.lambda_ = lambda_

    async def rerank(
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
