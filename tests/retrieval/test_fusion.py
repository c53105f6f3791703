from __future__ import annotations

from callisto.services.retrieval.fusion import reciprocal_rank_fusion, weighted_fusion


def test_rrf_rewards_items_found_by_both_lists() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d", "a"]], key=str, k=60)
    assert [item for item, _ in fused] == ["b", "a", "d", "c"]


def test_weighted_fusion_normalises_each_list() -> None:
    fused = weighted_fusion(
        [[("a", 10.0), ("b", 0.0)], [("b", 0.9), ("a", 0.1)]], [0.3, 0.7], key=str
    )
    assert fused[0][0] == "b"
