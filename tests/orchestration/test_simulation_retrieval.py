"""Company-scoped retrieval in a simulation: two agents of two companies in one tenant that
holds both companies' documents each look up only their own company's passages (the tool call
runs for the speaking agent), and each turn cites only its own company's documents."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from runs_test_support import kind
from simulation_test_support import create_agents, ended, metadata_of, run, simulation, stored

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.ingest.folder import BytesDocument
from callisto.mesh.processes import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")

TENANT = "sim-retrieval"
TESSALINE, CORVANE = "Tessaline Systems", "Corvane Data"
DOCUMENTS = {
    "tessa-discount": (
        TESSALINE,
        "Tessaline Edge Node volume discount: orders above 200 edge nodes get 15 percent off.",
    ),
    "tessa-support": (
        TESSALINE,
        "Tessaline support: edge node replacement within one business day, volume discount.",
    ),
    "corvane-discount": (
        CORVANE,
        "Corvane Strata volume discount: above 200 edge nodes subscriptions get 20 percent off.",
    ),
    "corvane-terms": (
        CORVANE,
        "Corvane payment terms: edge node subscriptions are billed monthly, volume discount.",
    ),
}


async def test_each_agent_retrieves_and_cites_only_its_own_companys_documents(
    orchestration: ServiceProcess,
    orch_retrieval: ServiceProcess,
    persistence: ServiceProcess,
    tenant_key: Callable[[str], str],
) -> None:
    key = tenant_key(TENANT)
    async with await callisto.Client.connect(orch_retrieval.address, api_key=key) as client:
        report = await client.retrieval.ingest(
            [
                BytesDocument(
                    data=text.encode(),
                    document_id=document_id,
                    mime_type="text/plain",
                    title=document_id,
                    attributes={"company": company},
                )
                for document_id, (company, text) in DOCUMENTS.items()
            ]
        )
        assert not report.failed and report.error is None, report
    own = {
        company: {d for d, (c, _) in DOCUMENTS.items() if c == company}
        for company in (TESSALINE, CORVANE)
    }
    async with await callisto.Client.connect(orchestration.address, api_key=key) as client:
        agents = await create_agents(
            client,
            ["Tessa", "Cora"],
            companies=[TESSALINE, CORVANE],
            tools=["search_documents"],
            prefix="sim-rag",
        )
        stub = client.stub(pb_grpc.OrchestrationServiceStub)
        # toy_llm echoes the scenario's words, "[1]" among them: every turn cites source 1.
        events = await run(stub, simulation(agents, "edge node volume discount [1]", max_turns=4))
    assert events[-1].done.reason == "max_turns", events[-1]
    companies = {a.removeprefix("agents/"): c for a, c in zip(agents, own, strict=True)}
    current = ""
    calls = 0
    for event in events:
        if kind(event) == "turn_started":
            current = event.turn_started.speaker
        elif kind(event) == "tool_call":
            calls += 1
            assert event.tool_call.tool == "search_documents" and not event.tool_call.error
        elif kind(event) == "citation":
            assert event.citation.document_id in own[companies[current]], event
    assert calls == 4
    turns = ended(events)
    assert all(t.citations for t in turns)
    for turn in turns:
        assert {c.document_id for c in turn.citations} <= own[companies[turn.speaker]]
    _, messages = await stored(persistence.address, key, events[0].conversation)
    for message in messages:
        assert {c.document_id for c in message.citations} <= own[companies[message.author]]
        assert metadata_of(message)["passages"] > 0
        assert metadata_of(message)["tool_calls"][0]["tool"] == "search_documents"
