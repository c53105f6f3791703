"""The retrieval tools against the real retrieval service: `search_documents` keeps to the
agent's company, its knowledge tags and its tenant; `search_entities` finds sessions, speakers
and exhibitors with a citation each; an unreachable retrieval service is a clear outcome after
three attempts, never an exception; and what the model is shown of every built-in is accepted by
the real generation service, whose tool calls then pass validation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from google.protobuf import json_format, struct_pb2
from orchestration_test_support import connect_backends, service_key
from tools_test_support import (
    CORVANE,
    DOCUMENTS,
    RIVAL,
    SESSION_ATTRIBUTES,
    TENANT,
    TESSALINE,
    bytes_documents,
    conference_entities,
    context,
)

import callisto
from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2, generation_pb2_grpc
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.tools.builtin import build_registry
from callisto.services.orchestration.tools.registry import ToolContext, ToolOutcome, ToolRegistry

# Retries of the unreachable-service test take milliseconds, not seconds.
SETTINGS = OrchestrationSettings(tool_retry_base_s=0.01)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backends(
    redis_server: RedisServer,
    persistence: ServiceProcess,
    orch_generation: ServiceProcess,
    orch_retrieval: ServiceProcess,
    tenant_key: Callable[[str], str],
) -> AsyncIterator[Backends]:
    """Orchestration's backends, as its service principal, over a tenant's ingested data."""
    for tenant in (TENANT, RIVAL):
        async with await callisto.Client.connect(
            orch_retrieval.address, api_key=tenant_key(tenant)
        ) as client:
            report = await client.retrieval.ingest(bytes_documents(tenant))
            assert not report.failed and report.error is None, report
            if tenant == TENANT:
                await client.retrieval.upsert_entities(conference_entities())
    backends = await connect_backends(
        await service_key(redis_server.url),
        persistence=persistence.address,
        generation=orch_generation.address,
        retrieval=orch_retrieval.address,
    )
    yield backends
    await backends.close()


@pytest.fixture
def registry() -> ToolRegistry:
    return build_registry(SETTINGS)


def document_ids(outcome: ToolOutcome) -> set[str]:
    assert outcome.ok, outcome.error
    assert outcome.result is not None
    return {citation.document_id for citation in outcome.result.citations}


def ids_of(tenant: str, company: str, tags: tuple[str, ...] = ()) -> set[str]:
    return {
        doc.document_id
        for doc in DOCUMENTS[tenant]
        if doc.company == company and (not tags or set(tags) & set(doc.tags))
    }


async def test_search_documents_returns_passages_with_their_citations(
    registry: ToolRegistry, backends: Backends
) -> None:
    ctx = context(backends, TENANT, company=TESSALINE)
    outcome = await registry.call(
        "search_documents", {"query": "volume discount for edge nodes"}, ctx, call_id="s1"
    )
    assert outcome.ok, outcome.error
    assert outcome.result is not None
    citations = outcome.result.citations
    assert citations and citations[0].document_id == "tessa-pricing"
    assert "15 percent" in citations[0].text
    passages = outcome.result.data["passages"]
    assert [p["document_id"] for p in passages] == [c.document_id for c in citations]
    assert [p["text"] for p in passages] == [c.text for c in citations]
    count, _noun, rest = outcome.result.summary.split(" ", 2)
    assert count == str(len(citations))
    assert rest.startswith("for 'volume discount for edge nodes': Tessaline Systems: tessa-")
    assert outcome.attempts == 1


async def test_search_documents_never_returns_another_companys_passages(
    registry: ToolRegistry, backends: Backends
) -> None:
    for company in (TESSALINE, CORVANE):
        ctx = context(backends, TENANT, company=company)
        for query in ("Corvane Strata subscription discount", "Tessaline return policy"):
            outcome = await registry.call(
                "search_documents", {"query": query, "top_k": 10}, ctx, call_id="s"
            )
            found = document_ids(outcome)
            assert found, (company, query)
            assert found <= ids_of(TENANT, company), (company, query, found)


async def test_one_agents_cached_result_never_answers_another_agents_call(
    registry: ToolRegistry, backends: Backends
) -> None:
    query = {"query": "volume discount above 200 edge nodes", "top_k": 10}
    for company in (TESSALINE, CORVANE, TESSALINE):
        ctx = context(backends, TENANT, company=company)
        outcome = await registry.call("search_documents", query, ctx, call_id=company)
        assert document_ids(outcome) <= ids_of(TENANT, company)
    tagged = context(backends, TENANT, company=TESSALINE, knowledge_tags=("returns",))
    narrowed = await registry.call("search_documents", query, tagged, call_id="tagged")
    assert not narrowed.cached and document_ids(narrowed) == {"tessa-returns"}


async def test_search_documents_keeps_to_the_agents_knowledge_tags(
    registry: ToolRegistry, backends: Backends
) -> None:
    ctx = context(backends, TENANT, company=TESSALINE, knowledge_tags=("policy",))
    outcome = await registry.call(
        "search_documents", {"query": "edge node price discount", "top_k": 10}, ctx, call_id="s"
    )
    assert document_ids(outcome) == ids_of(TENANT, TESSALINE, ("policy",)) == {"tessa-returns"}


async def test_search_documents_never_returns_another_tenants_passages(
    registry: ToolRegistry, backends: Backends
) -> None:
    # Same company name, same words, both tenants: each sees only its own documents, also
    # when the first tenant's result is already in the cache.
    query = {"query": "edge node volume discount above 200 nodes", "top_k": 10}
    ours = await registry.call(
        "search_documents", query, context(backends, TENANT, company=TESSALINE), call_id="a"
    )
    theirs = await registry.call(
        "search_documents", query, context(backends, RIVAL, company=TESSALINE), call_id="b"
    )
    assert not theirs.cached
    assert document_ids(ours) <= ids_of(TENANT, TESSALINE)
    assert document_ids(theirs) == {"rival-pricing"}
    # An agent of no company sees its whole tenant, still nothing of the rival's.
    anyone = await registry.call("search_documents", query, context(backends, TENANT), call_id="c")
    assert document_ids(anyone) <= {doc.document_id for doc in DOCUMENTS[TENANT]}
    assert "corvane-pricing" in document_ids(anyone)


async def test_search_documents_answers_repeats_from_the_cache(
    registry: ToolRegistry, backends: Backends
) -> None:
    ctx = context(backends, TENANT, company=TESSALINE)
    first = await registry.call(
        "search_documents", {"query": "return policy", "top_k": 3}, ctx, call_id="1"
    )
    again = await registry.call(
        "search_documents", {"top_k": 3.0, "query": "return policy"}, ctx, call_id="2"
    )
    assert first.ok and not first.cached
    assert again.cached and again.attempts == 0
    assert first.result is not None and again.result is not None
    assert [c.chunk_id for c in again.result.citations] == [
        c.chunk_id for c in first.result.citations
    ]


async def test_search_entities_finds_sessions_speakers_and_exhibitors_with_citations(
    registry: ToolRegistry, backends: Backends
) -> None:
    ctx = context(backends, TENANT)
    outcome = await registry.call(
        "search_entities", {"query": "cold-chain monitoring"}, ctx, call_id="e1"
    )
    assert outcome.ok, outcome.error
    assert outcome.result is not None
    entities = outcome.result.data["entities"]
    by_id = {e["id"]: e for e in entities}
    assert {"tools-session-coldchain", "tools-speaker-ada", "tools-exhibitor-frostline"} <= set(
        by_id
    )
    session = by_id["tools-session-coldchain"]
    assert session["type"] == "session"
    assert session["attributes"] == SESSION_ATTRIBUTES
    assert session["facets"]["topic"].startswith("cold-chain monitoring")
    citations = {c.document_id: c for c in outcome.result.citations}
    assert set(citations) == set(by_id)
    cited = citations["tools-speaker-ada"]
    assert cited.title == "Ada Lindqvist"
    assert cited.text and "cold-chain" in cited.text
    # A session's citation says when, where and who before the matched text, so an answer
    # citing it can name them.
    first_line, matched = citations["tools-session-coldchain"].text.split("\n", 1)
    assert first_line == ("2026-05-13 14:00-14:40; Rhine Hall (Room B); speakers: Ada Lindqvist.")
    assert "cold-chain monitoring" in matched


async def test_search_entities_keeps_to_the_requested_entity_type(
    registry: ToolRegistry, backends: Backends
) -> None:
    ctx = context(backends, TENANT)
    outcome = await registry.call(
        "search_entities",
        {"query": "cold-chain monitoring", "entity_type": "speaker", "top_k": 10},
        ctx,
        call_id="e2",
    )
    assert outcome.ok, outcome.error
    assert outcome.result is not None
    assert [e["type"] for e in outcome.result.data["entities"]] == ["speaker"]
    assert [c.document_id for c in outcome.result.citations] == ["tools-speaker-ada"]


async def test_search_entities_sees_only_the_callers_tenant(
    registry: ToolRegistry, backends: Backends
) -> None:
    outcome = await registry.call(
        "search_entities", {"query": "cold-chain monitoring"}, context(backends, RIVAL), call_id="e"
    )
    assert outcome.ok, outcome.error
    assert outcome.result is not None and outcome.result.citations == []


@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [
        ("search_documents", {}, "arguments.query"),
        ("search_documents", {"query": "   "}, "arguments.query"),
        ("search_documents", {"query": "x" * 257}, "arguments.query"),
        ("search_documents", {"query": "price", "top_k": 11}, "arguments.top_k"),
        ("search_documents", {"query": "price", "top_k": 2.5}, "arguments.top_k"),
        ("search_documents", {"query": "price", "company": "Corvane Data"}, "arguments.company"),
        (
            "search_entities",
            {"query": "cold chain", "entity_type": "booth"},
            "arguments.entity_type",
        ),
        ("search_entities", {"query": "cold chain", "top_k": 0}, "arguments.top_k"),
        ("search_entities", {"query": 42}, "arguments.query"),
    ],
)
async def test_bad_search_arguments_are_field_violations(
    registry: ToolRegistry, backends: Backends, tool: str, arguments: dict[str, object], field: str
) -> None:
    assert field in [v.field for v in registry.validate(tool, arguments)]
    outcome = await registry.call(tool, arguments, context(backends, TENANT), call_id="bad")
    assert outcome.error.startswith("invalid arguments: ") and field in outcome.error
    assert outcome.attempts == 0 and outcome.result is None


async def test_an_unreachable_retrieval_service_fails_the_call_after_three_attempts(
    registry: ToolRegistry, persistence: ServiceProcess
) -> None:
    dead = await connect_backends(
        "no-key-needed",
        persistence=persistence.address,
        generation=f"127.0.0.1:{free_port()}",
        retrieval=f"127.0.0.1:{free_port()}",
    )
    try:
        ctx: ToolContext = context(dead, TENANT, company=TESSALINE)
        outcome = await registry.call(
            "search_documents", {"query": "volume discount"}, ctx, call_id="down"
        )
    finally:
        await dead.close()
    assert not outcome.ok and outcome.result is None
    assert outcome.attempts == 3
    assert outcome.error.startswith("search_documents unavailable after 3 attempts: unavailable")


async def test_every_builtin_offered_to_the_model_yields_calls_that_validate(
    registry: ToolRegistry, orch_generation: ServiceProcess, tenant_key: Callable[[str], str]
) -> None:
    """The real generation service accepts each tool's model schema (its grammar subset), and
    the call toy_llm makes from it passes the registry's full validation."""
    offered = [
        generation_pb2.Tool(
            name=spec.name,
            description=spec.description,
            parameters=json_format.ParseDict(spec.model_parameters(), struct_pb2.Struct()),
        )
        for spec in registry.specs()
    ]
    async with await callisto.Client.connect(
        orch_generation.address, api_key=tenant_key(TENANT)
    ) as client:
        stub = client.stub(generation_pb2_grpc.GenerationServiceStub)
        for spec in registry.specs():
            request = generation_pb2.GenerateRequest(
                model="models/toy_llm",
                messages=[
                    generation_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="290 * 1450")
                ],
                tools=offered,
                tool_choice=generation_pb2.ToolChoice(tool=spec.name),
            )
            responses = [response async for response in stub.Generate(request)]
            terminal = responses[-1]
            assert terminal.WhichOneof("event") == "result", (spec.name, terminal)
            (tool_call,) = terminal.result.tool_calls
            assert tool_call.name == spec.name
            arguments = json_format.MessageToDict(tool_call.arguments)
            assert registry.validate(spec.name, arguments) == [], (spec.name, arguments)
