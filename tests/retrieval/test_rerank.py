from __future__ import annotations

import numpy as np

from callisto.services.retrieval.models import SearchHit
from callisto.services.retrieval.rerank import MMRDiversifier


def hit(name: str, vector: list[float]) -> SearchHit:
    return SearchHit(
        chunk_id=name,
        document_id=name,
        title=name,
        source_uri="",
        mime_type="text/plain",
        chunk_index=0,
        start=0,
        end=1,
        page=None,
        section=(),
        text=name,
        score=0.0,
        embedding=tuple(vector),
    )


async def test_mmr_prefers_a_diverse_second_result() -> None:
    query = np.array([1.0, 1.0, 0.0], dtype=np.float32)
    candidates = [
        hit("a", [1.0, 0.9, 0.0]),
        hit("a-copy", [1.0, 0.88, 0.0]),
        hit("b", [0.2, 1.0, 0.3]),
    ]
    relevance_only = await MMRDiversifier(lambda_=1.0).diversify("q", query, candidates, 2)
    assert [h.chunk_id for h in relevance_only] == ["a", "a-copy"]
    diverse = await MMRDiversifier(lambda_=0.5).diversify("q", query, candidates, 2)
    assert [h.chunk_id for h in diverse] == ["a", "b"]
    assert diverse[0].score > 0.9
