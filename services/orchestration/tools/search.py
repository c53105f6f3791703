"""The retrieval tools: `search_documents` (passages of the agent's company and knowledge
tags) and `search_entities` (sessions, speakers and exhibitors, ranked over their facets)."""

from __future__ import annotations

import functools
from typing import Any

from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2
from callisto.api.retrieval.v1 import retrieval_pb2
from callisto.attributes import from_proto
from callisto.services.orchestration.tools.registry import ToolContext, ToolResult, ToolSpec
from callisto.services.orchestration.tools.validation import canonical_json

MAX_TOP_K = 10
DEFAULT_TOP_K = 5
# The longest string the model server's grammar bounds (generation's MAX_BOUND).
MAX_QUERY = 256
# The attribute the sample ingestion (deploy/mesh/samples.py) tags every document with.
COMPANY_ATTRIBUTE = "attributes.company"
# The conference product's kinds of entity (the retrieval service accepts exactly these).
ENTITY_TYPES = ("session", "speaker", "exhibitor")
# Evidence of one entity as its citation's text: its best matching records, bounded.
MAX_CITATION_TEXT = 1500
MATCHES_SHOWN = 3


def _query_schema(description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "description": description,
        "minLength": 1,
        "maxLength": MAX_QUERY,
        # At least one non-space character.
        "pattern": r"\S",
    }


def _top_k_schema(what: str) -> dict[str, Any]:
    return {
        "type": "integer",
        "description": f"How many {what} to return ({DEFAULT_TOP_K} when omitted).",
        "minimum": 1,
        "maximum": MAX_TOP_K,
    }


DOCUMENT_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": _query_schema(
            "What to look for, in plain words: the user's question or its key terms "
            "('volume discount for 290 nodes', 'return policy for appliances')."
        ),
        "top_k": _top_k_schema("passages"),
    },
    "required": ["query"],
    "additionalProperties": False,
}

ENTITY_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": _query_schema(
            "What to look for: a topic, a name or a product ('cold-chain monitoring', "
            "'predictive maintenance speakers')."
        ),
        "entity_type": {
            "type": "string",
            "description": (
                "Only this kind: 'session' (talks, keynotes, workshops), 'speaker' (people "
                "and their bios) or 'exhibitor' (companies at the expo and their products). "
                "Omit to search every kind."
            ),
            "enum": list(ENTITY_TYPES),
        },
        "top_k": _top_k_schema("entities"),
    },
    "required": ["query"],
    "additionalProperties": False,
}


def document_filters(agent: orchestration_pb2.Agent) -> list[retrieval_pb2.MetadataFilter]:
    """The agent's scope: its company's documents, and of those only the ones carrying one of
    its knowledge tags when it has any."""
    filters: list[retrieval_pb2.MetadataFilter] = []
    if agent.company:
        filters.append(
            retrieval_pb2.MetadataFilter(
                field=COMPANY_ATTRIBUTE,
                operator=retrieval_pb2.FILTER_OPERATOR_EQUAL,
                value=common_pb2.AttributeValue(string_value=agent.company),
            )
        )
    if agent.knowledge_tags:
        filters.append(
            retrieval_pb2.MetadataFilter(
                field="tags",
                operator=retrieval_pb2.FILTER_OPERATOR_CONTAINS_ANY,
                values=[common_pb2.AttributeValue(string_value=t) for t in agent.knowledge_tags],
            )
        )
    return filters


def document_scope(context: ToolContext) -> str:
    """The part of the cache key that keeps one agent's results from another's."""
    return canonical_json(
        {"company": context.agent.company, "tags": sorted(context.agent.knowledge_tags)}
    )


async def search_documents(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
    query = str(arguments["query"]).strip()
    top_k = int(arguments.get("top_k", DEFAULT_TOP_K))
    hits = await context.backends.retrieval.search(
        query, page_size=top_k, filters=document_filters(context.agent)
    )
    citations = [hit.citation for hit in hits]
    passages = [
        {
            "document_id": c.document_id,
            "title": c.title,
            "section": c.section,
            "page": c.page,
            "score": round(c.score, 4),
            "text": c.text,
        }
        for c in citations
    ]
    titles = ", ".join(dict.fromkeys(c.title or c.document_id for c in citations))
    summary = f"{_count(len(passages), 'passage')} for {query!r}" + (
        f": {titles}" if titles else ""
    )
    return ToolResult(
        data={"query": query, "passages": passages}, summary=summary, citations=citations
    )


def _count(n: int, noun: str) -> str:
    plural = "entities" if noun == "entity" else f"{noun}s"
    return f"{n} {noun if n == 1 else plural}"


def _entity_id(entity: retrieval_pb2.Entity) -> str:
    return entity.name.removeprefix("entities/")


def _attribute(entity: retrieval_pb2.Entity, key: str) -> str:
    value = entity.attributes.get(key)
    shown = from_proto(value) if value is not None else None
    return "" if shown is None else str(shown)


def facts(entity: retrieval_pb2.Entity) -> str:
    """The when, where and who of an entity in one line, from its attributes (the names the
    conference samples use), so an answer citing it can say them: '2026-05-12 09:00-09:45,
    Maas Auditorium (Room A); speakers: Dr. Elsbeth Marnix.'"""
    get = functools.partial(_attribute, entity)
    parts: list[str] = []
    if entity.entity_type == "session":
        hours = "-".join(t for t in (get("start_time"), get("end_time")) if t)
        when = " ".join(t for t in (get("day"), hours) if t)
        parts = [when, get("room_name") or (get("room") and f"room {get('room')}")]
        if get("speakers"):
            parts.append(f"speakers: {get('speakers')}")
    elif entity.entity_type == "speaker":
        parts = [get("job_title"), get("organisation")]
    elif entity.entity_type == "exhibitor":
        parts = [get("booth") and f"booth {get('booth')}", get("hall")]
    shown = [p for p in parts if p]
    return "; ".join(shown) + "." if shown else ""


def _evidence(hit: retrieval_pb2.EntityHit) -> tuple[str, str]:
    """(best matching facet, the entity's facts then the text of its best matches)."""
    matches = list(hit.matches[:MATCHES_SHOWN])
    section = matches[0].facet if matches else "master"
    texts = [m.text for m in matches] or [hit.entity.master]
    text = "\n".join(t for t in dict.fromkeys([facts(hit.entity), *texts]) if t)
    return section, text[:MAX_CITATION_TEXT]


def _entity_data(hit: retrieval_pb2.EntityHit) -> dict[str, Any]:
    entity = hit.entity
    return {
        "id": _entity_id(entity),
        "type": entity.entity_type,
        "title": entity.title,
        "description": entity.master,
        "facets": dict(entity.facets),
        "attributes": {key: from_proto(value) for key, value in entity.attributes.items()},
        "matched": [m.facet for m in hit.matches[:MATCHES_SHOWN]],
        "score": round(hit.score, 4),
    }


def _entity_citation(hit: retrieval_pb2.EntityHit) -> common_pb2.Citation:
    facet, text = _evidence(hit)
    return common_pb2.Citation(
        document_id=_entity_id(hit.entity),
        title=hit.entity.title,
        section=facet,
        score=hit.score,
        text=text,
    )


async def search_entities(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
    query = str(arguments["query"]).strip()
    top_k = int(arguments.get("top_k", DEFAULT_TOP_K))
    entity_type = arguments.get("entity_type")
    hits = await context.backends.retrieval.search_entities(
        query, entity_types=[str(entity_type)] if entity_type else (), page_size=top_k
    )
    entities = [_entity_data(hit) for hit in hits]
    titles = ", ".join(f"{e['type']} {e['title']}" for e in entities)
    summary = f"{_count(len(entities), 'entity')} for {query!r}" + (f": {titles}" if titles else "")
    return ToolResult(
        data={"query": query, "entities": entities},
        summary=summary,
        citations=[_entity_citation(hit) for hit in hits],
    )


SEARCH_DOCUMENTS = ToolSpec(
    name="search_documents",
    description=(
        "Searches the documents of the company you represent (product guides, price lists, "
        "policies, contracts) and returns the most relevant passages with their sources. Use "
        "it for any question about products, prices, terms or facts you must not guess."
    ),
    parameters=DOCUMENT_PARAMETERS,
    handler=search_documents,
    # Embedding the query shares a CPU with generation: allow for a queue.
    timeout_s=10.0,
    cache_ttl_s=60.0,
    cache_scope=document_scope,
)

SEARCH_ENTITIES = ToolSpec(
    name="search_entities",
    description=(
        "Searches the conference programme: sessions (title, topic, abstract, time, room, "
        "speakers), speakers (bio, organisation, talks) and exhibitors (products, stand). Use "
        "it to find which sessions cover a topic, who speaks, or which exhibitors offer "
        "something; set entity_type to narrow the search to one kind."
    ),
    parameters=ENTITY_PARAMETERS,
    handler=search_entities,
    timeout_s=10.0,
    cache_ttl_s=60.0,
)
