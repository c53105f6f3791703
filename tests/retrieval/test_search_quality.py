"""Search quality and second-stage semantics through the real service (Triton's embedder).

A small generated, labelled collection (bench/quality_corpus.py) is ingested once; hybrid search
with the service's default fusion must be at least as good as the better of dense and keyword
search on it. `rerank` means relevance and fails clearly without a reranker; diversity is
`diversify` with its own `mmr_lambda`.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from retrieval_test_support import Doc, bad_request, bearer, ingest, results

from callisto import errors
from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from quality_corpus import Collection, generate, passage_key

Stub = pb_grpc.RetrievalServiceStub
COLLECTION = generate(products=12, guides=3, queries=48, seed=5)


@pytest.fixture(scope="module")
async def quality_key(rstub: Stub, tenant_keys: Callable[[str], str]) -> str:
    key = tenant_keys("quality")
    docs = [
        Doc(document_id, text.encode(), "text/markdown", title=title, piece=4096)
        for document_id, (title, text) in COLLECTION.documents.items()
    ]
    stored = results(await ingest(rstub, docs, bearer(key)))
    assert set(stored) == set(COLLECTION.documents)
    return key


async def search(stub: Stub, key: str, query: str, **fields: object) -> pb.SearchResponse:
    request = pb.SearchRequest(query=query, page_size=10, **fields)  # type: ignore[arg-type]
    return await stub.Search(request, metadata=bearer(key))


def ndcg(hits: list[pb.SearchHit], relevant: dict[str, int]) -> float:
    keys = dict.fromkeys(passage_key(h.citation.document_id, h.citation.section) for h in hits)
    dcg = sum(relevant.get(k, 0) / math.log2(i + 2) for i, k in enumerate(list(keys)[:10]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(relevant.values())[::-1]))
    return dcg / ideal


async def mean_ndcg(stub: Stub, key: str, collection: Collection, **fields: object) -> float:
    values = []
    for query in collection.queries:
        response = await search(stub, key, query.text, **fields)
        values.append(ndcg(list(response.hits), query.relevant))
    return statistics.fmean(values)


async def test_default_hybrid_is_at_least_the_better_of_dense_and_keyword(
    rstub: Stub, quality_key: str
) -> None:
    dense = await mean_ndcg(rstub, quality_key, COLLECTION, mode=pb.SEARCH_MODE_DENSE)
    keyword = await mean_ndcg(rstub, quality_key, COLLECTION, mode=pb.SEARCH_MODE_KEYWORD)
    hybrid = await mean_ndcg(rstub, quality_key, COLLECTION)  # mode and fusion left unset
    assert hybrid >= max(dense, keyword), {"dense": dense, "keyword": keyword, "hybrid": hybrid}


async def test_rerank_without_a_reranker_model_fails_with_failed_precondition(
    rstub: Stub, quality_key: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await search(rstub, quality_key, "factory reset", rerank=True)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "reranker" in (failed.value.details() or "")
    assert _reason(failed.value) == "RERANKER_NOT_CONFIGURED"


async def test_diversify_reorders_the_same_candidates_and_lambda_one_keeps_relevance_order(
    rstub: Stub, quality_key: str
) -> None:
    query = COLLECTION.queries[0].text
    plain = await search(rstub, quality_key, query, mode=pb.SEARCH_MODE_DENSE)
    relevance_only = await search(
        rstub, quality_key, query, mode=pb.SEARCH_MODE_DENSE, diversify=True, mmr_lambda=1.0
    )
    ids = [h.citation.chunk_id for h in plain.hits]
    assert [h.citation.chunk_id for h in relevance_only.hits] == ids
    diverse = await search(
        rstub, quality_key, query, mode=pb.SEARCH_MODE_DENSE, diversify=True, mmr_lambda=0.0
    )
    # Pure diversity keeps the most relevant passage first, then spreads out.
    assert diverse.hits[0].citation.chunk_id == ids[0]
    assert [h.citation.chunk_id for h in diverse.hits] != ids


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"mmr_lambda": 0.5}, "mmr_lambda"),  # without diversify
        ({"diversify": True, "mmr_lambda": 1.5}, "mmr_lambda"),
        ({"diversify": True, "mmr_lambda": -0.1}, "mmr_lambda"),
        ({"diversify": True, "mmr_lambda": math.nan}, "mmr_lambda"),
    ],
)
async def test_invalid_diversity_settings_are_rejected_per_field(
    rstub: Stub, quality_key: str, fields: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await search(rstub, quality_key, "factory reset", **fields)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in bad_request(failed.value)


def _reason(error: grpc.aio.AioRpcError) -> str:
    return errors.from_rpc_error(error).reason
