"""Score fusion of ranked lists, used by hybrid search (:mod:`milvus_store`).

Milvus runs the dense and the BM25 search of a hybrid query separately (each side's candidates,
ids and scores only) and these functions merge them. Fusing here rather than with Milvus's
``hybrid_search`` rankers keeps one implementation for Milvus Lite and a server, and lets the
normalisation be the one measured best (bench/retrieval_quality.py): min-max per list.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
# Normalised score of the last item of a list (weighted fusion); a missing item gets 0.
PRESENCE = 1e-3
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
    """Min-max normalise each list's scores to [0, 1], then sum them with ``weights``.

    An item missing from a list gets 0 from it; a list whose scores are all equal gives 1. An
    item a list did find, even its last, gets a token ``PRESENCE`` more than a missing one, so a
    found passage never reports score 0 and beats an unfound one it would otherwise tie.
    """
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
            normalised = PRESENCE + (1.0 - PRESENCE) * normalised
            scores[ident] = scores.get(ident, 0.0) + weight * normalised
            first.setdefault(ident, item)
    return sorted(((first[i], s) for i, s in scores.items()), key=lambda p: p[1], reverse=True)
