"""Query-time retrieval: embed the query, search Milvus, optionally rerank and/or diversify.

Two optional second stages run over the same first-stage candidate pool, in this order:

* ``rerank``: reorder by *relevance* with a :class:`~callisto.services.retrieval.rerank.Reranker`
  model (a cross-encoder). None ships with the service; asking for one that is not configured
  raises :class:`RerankerUnavailable` rather than silently returning the unreranked order.
* ``diversify``: reorder with maximal marginal relevance (MMR), trading relevance for diversity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from callisto.services.retrieval.embedder import Embedder
from callisto.services.retrieval.errors import InvalidArgument, RetrievalError
from callisto.services.retrieval.filters import Condition
from callisto.services.retrieval.milvus_store import MilvusStore
from callisto.services.retrieval.models import DEFAULT_FUSION, Fusion, SearchHit, SearchMode
from callisto.services.retrieval.rerank import DEFAULT_MMR_LAMBDA, MMRDiversifier, Reranker


class RerankerUnavailable(RetrievalError):
    """``rerank`` was asked for, but no relevance reranker model is configured."""


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """One search; ``offset``/``top_k`` page through the (reordered) result list."""

    tenant: str
    query: str
    mode: SearchMode = SearchMode.HYBRID
    top_k: int = 10
    offset: int = 0
    conditions: Sequence[Condition] = ()
    fusion: Fusion = DEFAULT_FUSION
    score_threshold: float | None = None
    # Reorder by relevance with the configured reranker model.
    rerank: bool = False
    # Reorder with MMR; ``mmr_lambda`` 1 is relevance only, 0 diversity only.
    diversify: bool = False
    mmr_lambda: float = DEFAULT_MMR_LAMBDA
    # How many first-stage candidates the second stages see (at least offset + top_k).
    rerank_candidates: int = 50


class Retriever:
    """Composes an :class:`Embedder`, a :class:`MilvusStore` and an optional relevance
    :class:`Reranker` (a cross-encoder, e.g. on a GPU Triton)."""

    def __init__(
        self, store: MilvusStore, embedder: Embedder, reranker: Reranker | None = None
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._reranker = reranker

    @property
    def can_rerank(self) -> bool:
        return self._reranker is not None

    async def embed_query(self, query: str) -> npt.NDArray[np.float32]:
        vectors = await self._embedder.embed([query])
        return np.asarray(vectors[0], dtype=np.float32)

    async def search(self, request: SearchRequest) -> list[SearchHit]:
        query = request.query.strip()
        if not query:
            raise InvalidArgument("query", "query must not be empty")
        if len(query) > 4096:
            raise InvalidArgument("query", "query is limited to 4096 characters")
        if request.rerank and self._reranker is None:
            raise RerankerUnavailable(
                "rerank", "no reranker model is configured on this service; use diversify for MMR"
            )
        diversifier = MMRDiversifier(request.mmr_lambda) if request.diversify else None
        needs_vector = request.mode is not SearchMode.BM25 or diversifier is not None
        vector = await self.embed_query(query) if needs_vector else None
        if not request.rerank and diversifier is None:
            return await self._store.search_chunks(
                request.tenant,
                mode=request.mode,
                query_text=query,
                query_vector=vector,
                top_k=request.top_k,
                offset=request.offset,
                conditions=request.conditions,
                fusion=request.fusion,
                score_threshold=request.score_threshold,
            )
        window = request.offset + request.top_k
        pool = max(request.rerank_candidates, window)
        candidates = await self._store.search_chunks(
            request.tenant,
            mode=request.mode,
            query_text=query,
            query_vector=vector,
            top_k=pool,
            conditions=request.conditions,
            fusion=request.fusion,
            score_threshold=request.score_threshold,
            with_embeddings=diversifier is not None,
        )
        if request.rerank and self._reranker is not None:
            candidates = await self._reranker.rerank(query, vector, candidates, pool)
        if diversifier is not None:
            candidates = await diversifier.diversify(query, vector, candidates, window)
        return candidates[request.offset : window]
