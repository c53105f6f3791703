"""The bundled samples, ingested with the client's `ingest_samples`, answer the README's example
questions for the right tenant; a second ingestion changes nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from retrieval_test_support import bearer

from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from callisto.mesh.processes import ServiceProcess
from callisto.mesh.samples import COMPANY_TENANTS, CONFERENCE_TENANT, ingest_samples

Stub = pb_grpc.RetrievalServiceStub

QUESTIONS = [
    ("tessaline-systems", "What is the list price of the Tessa Edge E410 with 64 GB of memory?",
     "price-list-2026.csv"),
    ("tessaline-systems", "How long do customers have to return non-faulty hardware, and what is "
     "the restocking fee for opened products?", "warranty-and-returns.md"),
    ("tessaline-systems", "What is the initial response target for a P1 incident under TessaCare "
     "Platinum?", "support-sla.html"),
    ("tessaline-systems", "Who must approve a total discount of 25% on an order?",
     "discount-policy.txt"),
    ("corvane-data", "What does a 60-month Strata S5 subscription cost per node per month?",
     "strata-subscription-pricing.csv"),
    ("corvane-data", "How quickly does Corvane notify customers of a security incident involving "
     "their personal data?", "security-and-privacy.md"),
    ("marrowick-motors", "What is the proposal deadline for RFP MMW-RFP-2026-014?",
     "rfp-edge-compute-2026.md"),
    ("marrowick-motors", "How many edge nodes are planned for production line GYR-L05?",
     "plant-line-inventory.csv"),
]  # fmt: skip


@pytest.fixture(scope="module")
async def sample_keys(
    retrieval_service: ServiceProcess, tenant_keys: Callable[[str], str]
) -> dict[str, str]:
    keys = {t: tenant_keys(t) for t in (*COMPANY_TENANTS, CONFERENCE_TENANT)}
    report = await ingest_samples(retrieval_service.address, keys)
    assert not report.failed, report.failed
    assert sum(len(r.created) for r in report.documents.values()) == 19
    assert report.entities == 65
    return keys


async def test_second_ingestion_changes_nothing(
    retrieval_service: ServiceProcess, sample_keys: dict[str, str], rstub: Stub
) -> None:
    before = await rstub.SearchEntities(
        pb.SearchEntitiesRequest(query="vaccine temperature sensors"),
        metadata=bearer(sample_keys[CONFERENCE_TENANT]),
    )
    report = await ingest_samples(retrieval_service.address, sample_keys)
    assert not any(r.changed or r.failed for r in report.documents.values())
    assert sum(len(r.unchanged) for r in report.documents.values()) == 19
    after = await rstub.SearchEntities(
        pb.SearchEntitiesRequest(query="vaccine temperature sensors"),
        metadata=bearer(sample_keys[CONFERENCE_TENANT]),
    )
    # The same hits in the same order; scores equal up to float noise of batched embedding.
    assert [h.score for h in after.hits] == pytest.approx([h.score for h in before.hits], abs=1e-5)
    for hits in (before.hits, after.hits):
        for hit in hits:
            hit.ClearField("score")
            for facet in hit.matches:
                facet.ClearField("score")
    assert after == before


@pytest.mark.parametrize(("tenant", "question", "source"), QUESTIONS)
async def test_example_questions_find_their_source_in_the_top_three(
    rstub: Stub, sample_keys: dict[str, str], tenant: str, question: str, source: str
) -> None:
    response = await rstub.Search(
        pb.SearchRequest(query=question, page_size=3), metadata=bearer(sample_keys[tenant])
    )
    top = [h.citation.source_uri.rsplit("/", 1)[-1] for h in response.hits]
    assert source in top, top
    assert all(h.citation.source_uri.startswith(f"samples/tenants/{tenant}/") for h in
               response.hits)  # fmt: skip


@pytest.mark.parametrize(
    ("question", "entity", "facet"),
    [
        ("Which exhibitor offers temperature sensors for vaccines, and where is its booth?",
         "entities/exhibitor-003", "products"),
        ("When and where is the talk on prompt injection through retrieved documents, and who "
         "gives it?", "entities/session-008", None),
    ],
)  # fmt: skip
async def test_faceted_search_ranks_the_right_entity_first(
    rstub: Stub, sample_keys: dict[str, str], question: str, entity: str, facet: str | None
) -> None:
    response = await rstub.SearchEntities(
        pb.SearchEntitiesRequest(query=question, page_size=5),
        metadata=bearer(sample_keys[CONFERENCE_TENANT]),
    )
    best = response.hits[0]
    assert best.entity.name == entity, [h.entity.name for h in response.hits]
    assert best.entity.master and best.entity.facets and best.matches
    if facet is not None:
        assert facet in {m.facet for m in best.matches}
    if entity.endswith("exhibitor-003"):
        assert best.entity.attributes["booth"].string_value == "D07"


async def test_entity_type_and_attribute_filters(rstub: Stub, sample_keys: dict[str, str]) -> None:
    from callisto.api.common.v1 import common_pb2

    response = await rstub.SearchEntities(
        pb.SearchEntitiesRequest(
            query="retrieval security", entity_types=["session"], page_size=20,
            filters=[pb.MetadataFilter(
                field="attributes.day", operator=pb.FILTER_OPERATOR_EQUAL,
                value=common_pb2.AttributeValue(string_value="2026-05-12"))],
        ),
        metadata=bearer(sample_keys[CONFERENCE_TENANT]),
    )  # fmt: skip
    assert response.hits
    for hit in response.hits:
        assert hit.entity.entity_type == "session"
        assert hit.entity.attributes["day"].string_value == "2026-05-12"


async def test_company_tenants_see_only_their_own_answers(
    rstub: Stub, sample_keys: dict[str, str]
) -> None:
    for tenant in COMPANY_TENANTS:
        response = await rstub.Search(
            pb.SearchRequest(query="Who is the CEO?", page_size=20),
            metadata=bearer(sample_keys[tenant]),
        )
        assert response.hits
        assert {h.citation.source_uri.split("/")[2] for h in response.hits} == {tenant}
