"""ListArtifacts and DownloadArtifact of the real orchestration service over artifacts stored
through the real persistence service (one made by the `create_report` tool): newest first in
signed pages, the bytes with their content type, names and page sizes validated, another
tenant's conversation and artifact NOT_FOUND, and the download over HTTP through the real Envoy
gateway answering the stored bytes with their Content-Type."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import httpx
import pytest
import pytest_asyncio
from orchestration_test_support import connect_backends, service_key
from pypdf import PdfReader
from tools_test_support import context

import callisto
from callisto import errors
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc
from callisto.api.persistence.v1 import persistence_pb2
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.services.common.tenancy import bind_tenant, reset_tenant
from callisto.services.orchestration.tools import report

CSV = "supplier,price\r\nTessaline,1450\r\nZürich AG,990\r\n".encode()
JSON = b'{"offers": 2}'


@dataclass
class Stored:
    conversation: str
    csv: persistence_pb2.Artifact
    json: persistence_pb2.Artifact
    pdf: persistence_pb2.Artifact
    pdf_bytes: bytes


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stored(
    persistence_client: callisto.Client, redis_server: RedisServer, persistence: ServiceProcess
) -> AsyncIterator[Stored]:
    """A conversation of acme with a CSV, a JSON and a PDF report (the tool's), oldest first."""
    persistence_api = persistence_client.persistence
    conversation = (await persistence_api.create_conversation(title="artifacts api")).name
    csv = await persistence_api.create_artifact(
        conversation, display_name="offers.csv", content_type="text/csv", content=CSV
    )
    json = await persistence_api.create_artifact(
        conversation, display_name="offers.json", content_type="application/json", content=JSON
    )
    backends = await connect_backends(
        await service_key(redis_server.url),
        persistence=persistence.address,
        generation=f"127.0.0.1:{free_port()}",
        retrieval=f"127.0.0.1:{free_port()}",
    )
    token = bind_tenant("acme")
    try:
        made = await report.create_report(
            {
                "format": "pdf",
                "title": "Offers compared",
                "columns": ["Supplier", "Price"],
                "rows": [["Tessaline", 1450], ["Corvane", 1320]],
                "chart": {"type": "bar", "label_column": "Supplier", "value_column": "Price"},
            },
            context(backends, "acme", conversation=conversation),
        )
    finally:
        reset_tenant(token)
        await backends.close()
    pdf = await persistence_api.get_artifact(made.data["artifact"])
    yield Stored(conversation, csv, json, pdf, pdf.content)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rival(
    orchestration: ServiceProcess, tenant_key: Callable[[str], str]
) -> AsyncIterator[callisto.Client]:
    async with await callisto.Client.connect(
        orchestration.address, api_key=tenant_key("artifacts-rival")
    ) as client:
        yield client


async def test_list_is_newest_first_without_content_in_pages(
    orch_client: callisto.Client, stored: Stored
) -> None:
    listed = [a async for a in orch_client.orchestration.list_artifacts(stored.conversation)]
    assert [a.name for a in listed] == [stored.pdf.name, stored.json.name, stored.csv.name]
    assert all(a.content == b"" for a in listed)
    assert listed[0].display_name == "offers-compared.pdf"
    assert dict(listed[0].metadata)["tool"] == "create_report"
    assert listed[2].sha256 == hashlib.sha256(CSV).hexdigest()
    assert listed[2].size_bytes == len(CSV)
    paged = [
        a.name
        async for a in orch_client.orchestration.list_artifacts(
            stored.conversation.removeprefix("conversations/"), page_size=1
        )
    ]
    assert paged == [a.name for a in listed]


async def test_download_answers_the_bytes_with_their_content_type(
    orch_client: callisto.Client, stored: Stored
) -> None:
    for artifact, data in ((stored.csv, CSV), (stored.json, JSON), (stored.pdf, stored.pdf_bytes)):
        body = await orch_client.orchestration.download_artifact(artifact.name)
        assert (body.content_type, body.data) == (artifact.content_type, data)
    text = PdfReader(io.BytesIO(stored.pdf_bytes)).pages[0].extract_text()
    assert "Offers compared" in text and "Tessaline" in text


async def test_bad_names_page_sizes_and_tokens_are_invalid_at_their_fields(
    orch_stub: orchestration_pb2_grpc.OrchestrationServiceAsyncStub, stored: Stored
) -> None:
    page = await orch_stub.ListArtifacts(
        pb.ListArtifactsRequest(parent=stored.conversation, page_size=1)
    )
    assert page.next_page_token
    cases: list[tuple[object, str]] = [
        (orch_stub.DownloadArtifact(pb.DownloadArtifactRequest(name="")), "name"),
        (orch_stub.DownloadArtifact(pb.DownloadArtifactRequest(name=stored.conversation)), "name"),
        (
            orch_stub.DownloadArtifact(
                pb.DownloadArtifactRequest(name=f"{stored.conversation}/artifacts/A B")
            ),
            "name",
        ),
        (
            orch_stub.DownloadArtifact(pb.DownloadArtifactRequest(name="agents/x/artifacts/y")),
            "name",
        ),
        (orch_stub.ListArtifacts(pb.ListArtifactsRequest(parent="")), "parent"),
        (orch_stub.ListArtifacts(pb.ListArtifactsRequest(parent="sessions/x")), "parent"),
        (
            orch_stub.ListArtifacts(
                pb.ListArtifactsRequest(parent=stored.conversation, page_size=101)
            ),
            "page_size",
        ),
        (
            orch_stub.ListArtifacts(
                pb.ListArtifactsRequest(parent=stored.conversation, page_size=-1)
            ),
            "page_size",
        ),
        (
            orch_stub.ListArtifacts(
                pb.ListArtifactsRequest(
                    parent=stored.conversation, page_token=page.next_page_token[:-3] + "abc"
                )
            ),
            "page_token",
        ),
        (
            orch_stub.ListArtifacts(
                pb.ListArtifactsRequest(
                    parent="conversations/elsewhere", page_token=page.next_page_token
                )
            ),
            "page_token",
        ),
    ]
    for call, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call  # type: ignore[misc]
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in errors.from_rpc_error(caught.value).field_violations


async def test_another_tenants_conversation_and_artifacts_are_not_found(
    orch_client: callisto.Client, rival: callisto.Client, stored: Stored
) -> None:
    with pytest.raises(errors.NotFound):
        await rival.orchestration.download_artifact(stored.pdf.name)
    with pytest.raises(errors.NotFound):
        [a async for a in rival.orchestration.list_artifacts(stored.conversation)]
    with pytest.raises(errors.NotFound):
        await orch_client.orchestration.download_artifact(f"{stored.conversation}/artifacts/nope")
    with pytest.raises(errors.NotFound):
        [a async for a in orch_client.orchestration.list_artifacts("conversations/nope-nope")]


async def test_download_over_http_answers_the_content_type_and_the_bytes(
    mesh_gateway: EnvoyGateway,
    api_key: str,
    tenant_key: Callable[[str], str],
    stored: Stored,
) -> None:
    async with httpx.AsyncClient(
        base_url=mesh_gateway.http_url,
        headers={"authorization": f"Bearer {api_key}"},
        timeout=60,
    ) as http:
        pdf = await http.get(f"/v1/{stored.pdf.name}:download")
        assert pdf.status_code == 200, pdf.text
        assert pdf.headers["content-type"] == "application/pdf"
        assert pdf.content == stored.pdf_bytes
        csv = await http.get(f"/v1/{stored.csv.name}:download")
        assert (csv.status_code, csv.headers["content-type"]) == (200, "text/csv")
        assert csv.content == CSV
        missing = await http.get(f"/v1/{stored.conversation}/artifacts/nope:download")
        assert missing.status_code == 404
        other = await http.get(
            f"/v1/{stored.pdf.name}:download",
            headers={"authorization": f"Bearer {tenant_key('artifacts-rival')}"},
        )
        assert other.status_code == 404
        anonymous = await http.get(f"/v1/{stored.pdf.name}:download", headers={"authorization": ""})
        assert anonymous.status_code == 401


async def test_list_over_http_answers_the_newest_artifacts(
    mesh_gateway: EnvoyGateway, api_key: str, stored: Stored
) -> None:
    async with httpx.AsyncClient(
        base_url=mesh_gateway.http_url,
        headers={"authorization": f"Bearer {api_key}"},
        timeout=60,
    ) as http:
        listed = await http.get(f"/v1/{stored.conversation}/artifacts", params={"pageSize": 2})
        assert listed.status_code == 200, listed.text
        body = listed.json()
        assert [a["name"] for a in body["artifacts"]] == [stored.pdf.name, stored.json.name]
        assert body["artifacts"][0]["sizeBytes"] == str(len(stored.pdf_bytes))
        assert body["nextPageToken"]
