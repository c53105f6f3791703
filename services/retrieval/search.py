"""Query-time retrieval: embed the query, search Milvus, optionally rerank, return citations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from callisto.services.retrieval.embedder import Embedder
from callisto.services.retrieval.errors import InvalidArgument
from callisto.services.retrieval.filters import Condition
from callisto.services.retrieval.milvus_store import MilvusStore
from callisto.services.retrieval.models import DEFAULT_FUSION, Fusion, SearchHit, SearchMode
from callisto.services.retrieval.rerank import Reranker


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """One search; ``offset``/``top_k`` page through the (reranked) result list."""

    tenant: str
    query: str
    mode: SearchMode = SearchMode.HYBRID
    top_k: int = 10
    offset: int = 0
    conditions: Sequence[Condition] = ()
    fusion: Fusion = DEFAULT_FUSION
    score_threshold: float | None = None
    rerank: bool = False
    # How many first-stage candidates the reranker sees (at least offset + top_k).
    rerank_candidates: int = 50


class Retriever:
    """Composes an :class:`Embedder`, a :class:`MilvusStore` and an optional :class:`Reranker`."""

    def __init__(
        self, store: MilvusStore, embedder: Embedder, reranker: Reranker | None = None
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._reranker = reranker

    async def embed_query(self, query: str) -> npt.NDArray[np.float32]:
        vectors = await self._embedder.embed([query])
        return np.asarray(vectors[0], dtype=np.float32)

    async def search(self, request: SearchRequest) -> list[SearchHit]:
        query = request.query.strip()
        if not query:
            raise InvalidArgument("query", "query must not be empty")
        if len(query) > 4096:
            raise InvalidArgument("query", "query is limited to 4096 characters")
        needs_vector = request.mode is not SearchMode.BM25 or request.rerank
        vector = await self.embed_query(query) if needs_vector else None
        if not request.rerank or self._reranker is None:
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
        candidates = await self._store.search_chunks(
            request.tenant,
            mode=request.mode,
            query_text=query,
            query_vector=vector,
            top_k=max(request.rerank_candidates, window),
            conditions=request.conditions,
            fusion=request.fusion,
            score_threshold=request.score_threshold,
            with_embeddings=True,
        )
        reranked = await self._reranker.rerank(query, vector, candidates, window)
        return reranked[request.offset : window]
