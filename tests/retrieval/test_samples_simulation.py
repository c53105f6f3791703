"""The `sales-simulation` sample tenant: `ingest_samples` puts all three companies' documents in
it, each with its company as the `company` attribute and the tag `company:<folder>`, so an
agent's company filter finds only that company's documents; a second ingestion changes
nothing."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from retrieval_test_support import bearer

from callisto.api.common.v1 import common_pb2
from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from callisto.client import Client
from callisto.deploy import samples_dir
from callisto.ingest.folder import discover
from callisto.mesh.processes import ServiceProcess
from callisto.mesh.samples import COMPANY_TENANTS, SIMULATION_TENANT, ingest_samples

Stub = pb_grpc.RetrievalServiceStub
# A fresh tenant name per module run, so the test sees only what it ingested.
TENANT = f"{SIMULATION_TENANT}-test"


def _companies() -> dict[str, str]:
    """Folder -> display name of each sample company, from its tenant.json."""
    companies = {}
    for folder in COMPANY_TENANTS:
        described = json.loads(
            (samples_dir() / "tenants" / folder / "tenant.json").read_text(encoding="utf-8")
        )
        companies[folder] = described["display_name"]
    return companies


def _files(folder: str) -> set[str]:
    return {p.name for p in discover(samples_dir() / "tenants" / folder)}


@pytest.fixture(scope="module")
async def simulation_key(
    retrieval_service: ServiceProcess, tenant_keys: Callable[[str], str]
) -> str:
    key = tenant_keys(TENANT)
    report = await ingest_samples(retrieval_service.address, {SIMULATION_TENANT: key})
    assert not report.failed, report.failed
    # Only the simulation tenant had a key: nothing went anywhere else.
    assert set(report.documents) == {SIMULATION_TENANT}
    created = report.documents[SIMULATION_TENANT].created
    assert len(created) == sum(len(_files(folder)) for folder in COMPANY_TENANTS) == 19
    return key


async def test_every_company_document_is_in_the_tenant_with_its_company_and_tag(
    retrieval_service: ServiceProcess, simulation_key: str
) -> None:
    companies = _companies()
    async with await Client.connect(retrieval_service.address, api_key=simulation_key) as client:
        documents = [d async for d in client.retrieval.list_documents(page_size=100)]
        by_folder: dict[str, set[str]] = {}
        for document in documents:
            folder = document.source_uri.split("/")[2]
            by_folder.setdefault(folder, set()).add(document.source_uri.rsplit("/", 1)[1])
            assert document.attributes["company"].string_value == companies[folder]
            assert f"company:{folder}" in document.tags
            assert document.title.startswith(f"{companies[folder]}: ")
        assert by_folder == {folder: _files(folder) for folder in COMPANY_TENANTS}
        for folder in COMPANY_TENANTS:
            tagged = [d async for d in client.retrieval.list_documents(tags=[f"company:{folder}"])]
            assert {d.source_uri.split("/")[2] for d in tagged} == {folder}
            assert len(tagged) == len(_files(folder))


@pytest.mark.parametrize("folder", COMPANY_TENANTS)
async def test_a_company_filter_finds_only_that_companys_documents(
    rstub: Stub, simulation_key: str, folder: str
) -> None:
    company = _companies()[folder]
    # The question every company answers differently (the README's isolation checks).
    response = await rstub.Search(
        pb.SearchRequest(
            query="Who is the CEO?",
            page_size=20,
            filters=[
                pb.MetadataFilter(
                    field="attributes.company",
                    operator=pb.FILTER_OPERATOR_EQUAL,
                    value=common_pb2.AttributeValue(string_value=company),
                )
            ],
        ),
        metadata=bearer(simulation_key),
    )
    assert response.hits
    assert {h.citation.source_uri.split("/")[2] for h in response.hits} == {folder}


async def test_unfiltered_search_spans_the_three_companies(
    rstub: Stub, simulation_key: str
) -> None:
    response = await rstub.Search(
        pb.SearchRequest(query="Who is the CEO?", page_size=50),
        metadata=bearer(simulation_key),
    )
    assert {h.citation.source_uri.split("/")[2] for h in response.hits} == set(COMPANY_TENANTS)


async def test_second_ingestion_of_the_simulation_tenant_changes_nothing(
    retrieval_service: ServiceProcess, simulation_key: str
) -> None:
    report = await ingest_samples(retrieval_service.address, {SIMULATION_TENANT: simulation_key})
    again = report.documents[SIMULATION_TENANT]
    assert not again.changed and not again.failed
    assert len(again.unchanged) == 19
