from __future__ import annotations

import json

import pytest

from callisto.services.retrieval.embedder import Embedder
from callisto.services.retrieval.errors import InvalidArgument
from callisto.services.retrieval.facets import FacetedSearch, aggregate, load_entities_jsonl
from callisto.services.retrieval.filters import Condition
from callisto.services.retrieval.milvus_store import EntityRecordHit, MilvusStore

ENTITIES = [
    {
        "entity_id": "session-001",
        "entity_type": "session",
        "title": "Scaling vector search",
        "master": "A talk on running vector databases in production at scale.",
        "facets": {
            "topic": "vector databases, approximate nearest neighbour indexes",
            "audience": "platform engineers running retrieval systems",
            "format": "45 minute talk",
        },
        "attributes": {"track": "AI", "day": "2026-05-12", "room": "A"},
    },
    {
        "entity_id": "session-002",
        "entity_type": "session",
        "title": "Design systems for product teams",
        "master": "How product designers build shared component libraries.",
        "facets": {
            "topic": "design systems and component libraries",
            "audience": "product designers",
            "format": "workshop",
        },
        "attributes": {"track": "Design", "day": "2026-05-13", "room": "B"},
    },
    {
        "entity_id": "speaker-ada",
        "entity_type": "speaker",
        "title": "Ada Example",
        "master": "Ada builds search infrastructure.",
        "facets": {
            "bio": "Ada has led search teams for ten years.",
            "expertise": "vector databases and ranking",
        },
        "attributes": {"company": "Acme"},
    },
    {
        "entity_id": "exhibitor-acme",
        "entity_type": "exhibitor",
        "title": "Acme Robotics",
        "master": "Acme builds warehouse robots.",
        "facets": {"products": "autonomous forklifts and picking arms"},
        "attributes": {"booth": 12},
    },
]
LINES = [json.dumps(e) for e in ENTITIES]


def test_loader_validates_the_entity_format() -> None:
    records = load_entities_jsonl(LINES)
    assert [r.entity_id for r in records] == [e["entity_id"] for e in ENTITIES]
    assert records[0].facets["audience"].startswith("platform")
    assert records[3].attributes == {"booth": 12}
    with pytest.raises(InvalidArgument) as info:
        load_entities_jsonl([json.dumps({**ENTITIES[0], "entity_type": "robot"})])
    assert info.value.field == "line 1.entity_type"
    with pytest.raises(InvalidArgument):
        load_entities_jsonl([json.dumps({**ENTITIES[0], "entity_id": 'x" or 1==1'})])


def test_aggregation_formula_rewards_several_matching_facets() -> None:
    def hit(entity: str, facet: str, score: float) -> EntityRecordHit:
        return EntityRecordHit(
            f"{entity}/{facet}", entity, "session", facet, entity, "t", {}, score
        )

    ranked = aggregate(
        [
            hit("a", "master", 0.5),
            hit("a", "topic", 0.4),
            hit("a", "audience", 0.4),
            hit("b", "master", 0.6),
            hit("b", "topic", 0.3),
            hit("b", "topic", 0.1),
        ]
    )
    # a: 0.5 + 0.4 + 0.5*0.4 = 1.1 ; b: 0.6 + 0.3 = 0.9 (one best hit per facet)
    assert [e.entity_id for e in ranked] == ["a", "b"]
    assert ranked[0].score == pytest.approx(1.1)
    assert [m.facet for m in ranked[1].matches] == ["master", "topic"]


async def test_faceted_search_ranks_the_right_entity_with_matched_facets(
    store: MilvusStore, embedder: Embedder, tenant: str
) -> None:
    search = FacetedSearch(store, embedder)
    first = await search.index_entities(tenant, load_entities_jsonl(LINES))
    assert first.records_written == 4 + 4 + 3 + 2
    again = await search.index_entities(tenant, load_entities_jsonl(LINES))
    assert (again.records_written, again.records_unchanged) == (0, first.records_written)

    hits = await search.search(
        tenant, "vector databases for platform engineers", entity_types=["session"]
    )
    assert hits[0].entity_id == "session-001"
    facets = {m.facet for m in hits[0].matches}
    assert {"topic", "audience"} <= facets
    assert all(h.entity_type == "session" for h in hits)

    speakers = await search.search(tenant, "vector databases ranking", entity_types=["speaker"])
    assert speakers[0].entity_id == "speaker-ada"
    filtered = await search.search(
        tenant, "vector databases", conditions=[Condition("attributes.track", "eq", "Design")]
    )
    assert {h.entity_id for h in filtered} <= {"session-002"}
    other = await search.search(f"{tenant}-other", "vector databases")
    assert other == []


async def test_changed_entity_drops_removed_facets(
    store: MilvusStore, embedder: Embedder, tenant: str
) -> None:
    search = FacetedSearch(store, embedder)
    await search.index_entities(tenant, load_entities_jsonl(LINES[:1]))
    changed = {**ENTITIES[0], "facets": {"topic": "quantum computing"}}
    result = await search.index_entities(tenant, load_entities_jsonl([json.dumps(changed)]))
    assert (result.records_written, result.records_unchanged, result.records_deleted) == (1, 1, 2)
    hits = await search.search(tenant, "platform engineers retrieval systems")
    assert all(m.facet != "audience" for h in hits for m in h.matches)
    assert await search.delete_entity(tenant, "session-001") == 2
