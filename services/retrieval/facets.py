"""Multi-faceted entity search (conference sessions, speakers, exhibitors).

Each entity is stored as one master record (``facet == "master"``, the full description) plus
one record per facet (topic, audience, format, bio, products, ...), all in the entity collection
with the tenant as partition key. A query runs one hybrid (dense + BM25) search over masters and
facets together, groups the hits by entity and aggregates:

    score(entity) = master_weight * best_master
                  + facet_weight * sum_{i < max_facets} facet_decay**i * facet_i

where ``best_master`` is the master record's score (0 when it did not match) and ``facet_i`` are
the entity's facet scores in descending order. An entity that matches on several facets thus
beats one that matches a single facet equally well, with diminishing returns per extra facet.
Scores are the fused hybrid scores (RRF by default), so only their order within a query means
anything.

Input format (JSON lines)::

    {"entity_id": "session-001", "entity_type": "session", "title": "...",
     "master": "full description", "facets": {"topic": "...", "audience": "..."},
     "attributes": {"track": "AI", "day": "2026-05-12", "room": "A"}}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callisto.services.retrieval.embedder import Embedder
from callisto.services.retrieval.errors import InvalidArgument
from callisto.services.retrieval.filters import Condition, validate_id
from callisto.services.retrieval.milvus_store import (
    MAX_FACET,
    EntityRow,
    MilvusStore,
    attributes_json,
    entity_record_id,
)
from callisto.services.retrieval.models import (
    DEFAULT_FUSION,
    AttributeValue,
    EntityHit,
    EntityRecord,
    FacetMatch,
    Fusion,
    SearchMode,
)

MASTER = "master"
ENTITY_TYPES = frozenset({"session", "speaker", "exhibitor"})


def parse_entity(obj: Mapping[str, Any], where: str = "entity") -> EntityRecord:
    """Validate one decoded JSON object of the entity format."""

    def text(key: str) -> str:
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise InvalidArgument(f"{where}.{key}", "must be a non-empty string")
        return value.strip()

    entity_id = validate_id(text("entity_id"), f"{where}.entity_id")
    entity_type = text("entity_type")
    if entity_type not in ENTITY_TYPES:
        raise InvalidArgument(
            f"{where}.entity_type", f"must be one of {', '.join(sorted(ENTITY_TYPES))}"
        )
    facets_obj = obj.get("facets") or {}
    attributes_obj = obj.get("attributes") or {}
    if not isinstance(facets_obj, Mapping) or not isinstance(attributes_obj, Mapping):
        raise InvalidArgument(where, "facets and attributes must be objects")
    facets: dict[str, str] = {}
    for name, value in facets_obj.items():
        validate_id(str(name), f"{where}.facets")
        if len(str(name)) > MAX_FACET:
            raise InvalidArgument(f"{where}.facets", f"facet names are 1-{MAX_FACET} characters")
        if name == MASTER:
            raise InvalidArgument(f"{where}.facets", f"{MASTER!r} is reserved")
        if not isinstance(value, str):
            raise InvalidArgument(f"{where}.facets.{name}", "facet text must be a string")
        if value.strip():
            facets[str(name)] = value.strip()
    attributes: dict[str, AttributeValue] = {}
    for key, value in attributes_obj.items():
        if not isinstance(value, str | int | float | bool):
            raise InvalidArgument(f"{where}.attributes.{key}", "must be a string, number or bool")
        attributes[str(key)] = value
    return EntityRecord(
        entity_id=entity_id,
        entity_type=entity_type,
        title=text("title"),
        master=text("master"),
        facets=facets,
        attributes=attributes,
    )


def load_entities_jsonl(source: Path | str | Iterable[str]) -> list[EntityRecord]:
    """Read the JSON-lines entity format from a path or an iterable of lines."""
    lines: Iterable[str]
    if isinstance(source, Path | str):
        lines = Path(source).read_text(encoding="utf-8").splitlines()
    else:
        lines = source
    records: list[EntityRecord] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"line {number}", f"invalid JSON: {exc.msg}") from exc
        if not isinstance(obj, Mapping):
            raise InvalidArgument(f"line {number}", "each line must be a JSON object")
        records.append(parse_entity(obj, f"line {number}"))
    return records


def entity_rows(record: EntityRecord) -> list[EntityRow]:
    """The master row followed by one row per facet; each has its own content hash."""
    items = [(MASTER, record.master), *record.facets.items()]
    rows = []
    for facet, text in items:
        digest = hashlib.sha256(
            "\x1f".join(
                (record.entity_type, record.title, facet, text, attributes_json(record.attributes))
            ).encode()
        ).hexdigest()
        rows.append(
            EntityRow(
                entity_id=record.entity_id,
                entity_type=record.entity_type,
                facet=facet,
                title=record.title,
                text=text,
                attributes=record.attributes,
                content_hash=digest,
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class Aggregation:
    """Weights of the per-entity score formula in the module docstring."""

    master_weight: float = 1.0
    facet_weight: float = 1.0
    facet_decay: float = 0.5
    max_facets: int = 3


@dataclass(frozen=True, slots=True)
class IndexResult:
    records_written: int
    records_unchanged: int
    records_deleted: int


def aggregate(hits: Iterable[Any], weights: Aggregation = Aggregation()) -> list[EntityHit]:
    """Group record hits (``EntityRecordHit``) by entity and rank entities by the formula."""
    grouped: dict[str, dict[str, Any]] = {}
    for hit in hits:
        group = grouped.setdefault(hit.entity_id, {"first": hit, "best": {}})
        best: dict[str, Any] = group["best"]
        if hit.facet not in best or hit.score > best[hit.facet].score:
            best[hit.facet] = hit
    ranked: list[EntityHit] = []
    for entity_id, group in grouped.items():
        best = group["best"]
        master = best.get(MASTER)
        master_score = master.score if master is not None else 0.0
        facet_hits = sorted(
            (h for f, h in best.items() if f != MASTER), key=lambda h: h.score, reverse=True
        )
        facet_sum = sum(
            weights.facet_decay**i * h.score for i, h in enumerate(facet_hits[: weights.max_facets])
        )
        score = weights.master_weight * master_score + weights.facet_weight * facet_sum
        matches = sorted(best.values(), key=lambda h: h.score, reverse=True)
        first = group["first"]
        ranked.append(
            EntityHit(
                entity_id=entity_id,
                entity_type=first.entity_type,
                title=first.title,
                score=score,
                master_score=master_score,
                matches=tuple(FacetMatch(h.facet, h.text, h.score) for h in matches),
                attributes=dict(first.attributes),
            )
        )
    ranked.sort(key=lambda e: (-e.score, e.entity_id))
    return ranked


class FacetedSearch:
    """Indexes entities (only changed records are re-embedded) and searches them by facet."""

    def __init__(
        self, store: MilvusStore, embedder: Embedder, weights: Aggregation = Aggregation()
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._weights = weights

    async def index_entities(self, tenant: str, records: Sequence[EntityRecord]) -> IndexResult:
        validate_id(tenant, "tenant")
        existing = await self._store.entity_record_hashes(tenant, [r.entity_id for r in records])
        wanted: set[str] = set()
        changed: list[EntityRow] = []
        unchanged = 0
        for record in records:
            for row in entity_rows(record):
                rid = entity_record_id(tenant, row.entity_id, row.facet)
                wanted.add(rid)
                if existing.get(rid) == row.content_hash:
                    unchanged += 1
                else:
                    changed.append(row)
        stale = [rid for rid in existing if rid not in wanted]
        if not changed and not stale:
            return IndexResult(0, unchanged, 0)
        vectors = await self._embedder.embed([f"{r.title}\n{r.text}" for r in changed])
        written = await self._store.write_entity_records(tenant, changed, vectors, stale)
        return IndexResult(written, unchanged, len(stale))

    async def delete_entity(self, tenant: str, entity_id: str) -> int:
        return await self._store.delete_entity(tenant, entity_id)

    async def search(
        self,
        tenant: str,
        query: str,
        *,
        entity_types: Sequence[str] = (),
        conditions: Sequence[Condition] = (),
        top_k: int = 10,
        mode: SearchMode = SearchMode.HYBRID,
        fusion: Fusion = DEFAULT_FUSION,
        candidates: int = 200,
    ) -> list[EntityHit]:
        """Entities ranked by aggregated score, each with its matching facets (best first)."""
        query = query.strip()
        if not query:
            raise InvalidArgument("query", "query must not be empty")
        if not 1 <= top_k <= 1000:
            raise InvalidArgument("top_k", "must be between 1 and 1000")
        where = list(conditions)
        if entity_types:
            unknown = set(entity_types) - ENTITY_TYPES
            if unknown:
                raise InvalidArgument("entity_types", f"unknown types: {sorted(unknown)}")
            where.append(Condition("entity_type", "in", list(entity_types)))
        vector = None
        if mode is not SearchMode.BM25:
            vector = (await self._embedder.embed([query]))[0]
        hits = await self._store.search_entity_records(
            tenant,
            mode=mode,
            query_text=query,
            query_vector=vector,
            limit=max(candidates, top_k),
            conditions=where,
            fusion=fusion,
        )
        return aggregate(hits, self._weights)[:top_k]
