from __future__ import annotations

import math
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from retrieval_test_support import HashingEmbedder

from callisto.services.retrieval.fusion import reciprocal_rank_fusion, weighted_fusion
from callisto.services.retrieval.ingest_pipeline import IngestDocument, IngestPipeline
from callisto.services.retrieval.milvus_store import MilvusStore
from callisto.services.retrieval.models import (
    DEFAULT_FUSION,
    DocumentMeta,
    Fusion,
    FusionKind,
    SearchMode,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from quality_corpus import Collection, generate, passage_key


def test_rrf_rewards_items_found_by_both_lists() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d", "a"]], key=str, k=60)
    assert [item for item, _ in fused] == ["b", "a", "d", "c"]


def test_weighted_fusion_normalises_each_list() -> None:
    fused = weighted_fusion(
        [[("a", 10.0), ("b", 0.0)], [("b", 0.9), ("a", 0.1)]], [0.3, 0.7], key=str
    )
    assert fused[0][0] == "b"


def test_weighted_fusion_scores_a_passage_missing_from_one_list_as_zero_there() -> None:
    fused = dict(
        weighted_fusion([[("a", 0.9), ("b", 0.5)], [("c", 7.0), ("a", 1.0)]], [0.5, 0.5], str)
    )
    assert fused["a"] > fused["c"] == 0.5  # a: top of one list, last of the other
    assert 0.0 < fused["b"] < 0.01  # last of its only list: found, so above zero


def test_weighted_fusion_scores_every_found_item_above_zero() -> None:
    fused = weighted_fusion([[("x", 1.0), ("y", 0.2)], [("z", 3.0), ("w", 1.0)]], [0.5, 0.5], str)
    assert all(score > 0 for _, score in fused)


# A small labelled collection (the generated product manuals of bench/quality_corpus.py) searched
# through the real store: hybrid fusion must never rank a query's judged passage below where both
# dense and keyword search put it (the average against the real embedder is checked through the
# service in test_search_quality.py).


def _labelled() -> Collection:
    return generate(products=12, guides=3, queries=36, seed=11)


async def _rankings(
    store: MilvusStore, embedder: HashingEmbedder, tenant: str, collection: Collection,
    mode: SearchMode, fusion: Fusion = DEFAULT_FUSION,
) -> list[list[str]]:  # fmt: skip
    out = []
    for query in collection.queries:
        vector = embedder.vector(query.text)
        hits = await store.search_chunks(
            tenant, mode=mode, query_text=query.text, query_vector=vector, top_k=10, fusion=fusion
        )
        out.append([passage_key(h.document_id, " > ".join(h.section)) for h in hits])
    return out


def _ndcg(ranking: list[str], relevant: dict[str, int]) -> float:
    gains = [relevant.get(k, 0) for k in dict.fromkeys(ranking)][:10]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(relevant.values())[::-1][:10]))
    return dcg / ideal


@pytest.fixture
async def labelled(store: MilvusStore, embedder: HashingEmbedder, tenant: str) -> Collection:
    collection = _labelled()

    async def source() -> AsyncIterator[IngestDocument]:
        for document_id, (title, text) in collection.documents.items():

            async def content(data: bytes = text.encode()) -> AsyncIterator[bytes]:
                yield data

            meta = DocumentMeta(tenant, document_id, title=title, mime_type="text/markdown")
            yield IngestDocument(meta=meta, content=content())

    events = [e async for e in IngestPipeline(store, embedder).run(source())]
    assert not any(e.error for e in events)
    return collection


@pytest.mark.parametrize(
    "fusion",
    [
        DEFAULT_FUSION,
        Fusion(FusionKind.RRF),
        Fusion(FusionKind.WEIGHTED, dense_weight=0.3, sparse_weight=0.7),
    ],
    ids=["default", "rrf", "weighted-0.3"],
)
async def test_hybrid_never_ranks_below_both_inputs_on_a_labelled_set(
    store: MilvusStore, embedder: HashingEmbedder, tenant: str, labelled: Collection, fusion: Fusion
) -> None:
    dense = await _rankings(store, embedder, tenant, labelled, SearchMode.DENSE)
    keyword = await _rankings(store, embedder, tenant, labelled, SearchMode.BM25)
    hybrid = await _rankings(store, embedder, tenant, labelled, SearchMode.HYBRID, fusion)
    for query, d, k, h in zip(labelled.queries, dense, keyword, hybrid, strict=True):
        worst = min(_ndcg(d, query.relevant), _ndcg(k, query.relevant))
        assert _ndcg(h, query.relevant) >= worst, (query.text, d[:3], k[:3], h[:3])
