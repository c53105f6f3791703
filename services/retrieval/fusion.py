"""Client-side score fusion for result lists Milvus cannot fuse itself.

Milvus fuses the dense and BM25 lists of one collection (``hybrid_search`` with ``RRFRanker`` or
``WeightedRanker``, see :mod:`milvus_store`). These helpers merge lists that come from different
searches (e.g. several query rewrites or collections) with the same formulas.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def reciprocal_rank_fusion(
    lists: Sequence[Sequence[T]], key: Callable[[T], K], k: int = 60
) -> list[tuple[T, float]]:
    """RRF: score(d) = sum over lists containing d of 1 / (k + rank), rank starting at 1."""
    scores: dict[K, float] = {}
    first: dict[K, T] = {}
    for items in lists:
        for rank, item in enumerate(items, start=1):
            ident = key(item)
            scores[ident] = scores.get(ident, 0.0) + 1.0 / (k + rank)
            first.setdefault(ident, item)
    return sorted(((first[i], s) for i, s in scores.items()), key=lambda p: p[1], reverse=True)


def weighted_fusion(
    lists: Sequence[Sequence[tuple[T, float]]], weights: Sequence[float], key: Callable[[T], K]
) -> list[tuple[T, float]]:
    """Min-max normalise each list's scores to [0, 1], then sum them with ``weights``."""
    if len(lists) != len(weights):
        raise ValueError("one weight per list is required")
    scores: dict[K, float] = {}
    first: dict[K, T] = {}
    for items, weight in zip(lists, weights, strict=True):
        if not items:
            continue
        values = [s for _, s in items]
        low, high = min(values), max(values)
        span = high - low
        for item, score in items:
            ident = key(item)
            normalised = (score - low) / span if span > 0 else 1.0
            scores[ident] = scores.get(ident, 0.0) + weight * normalised
            first.setdefault(ident, item)
    return sorted(((first[i], s) for i, s in scores.items()), key=lambda p: p[1], reverse=True)
