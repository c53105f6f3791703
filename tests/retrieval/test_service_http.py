"""HTTP/JSON and grpcurl through the real Envoy gateway in front of the retrieval service, and
what clients see when Triton or Milvus is down."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from retrieval_test_support import bearer, retrieval_env, retry_delay

from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import ServiceProcess, free_port

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


@pytest_asyncio.fixture(loop_scope="session")
async def http(
    retrieval_gateway: EnvoyGateway, tenant_keys: Callable[[str], str]
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=retrieval_gateway.http_url,
        headers={"authorization": f"Bearer {tenant_keys('http-tenant')}"},
        timeout=60,
    ) as client:
        yield client


def details(response: httpx.Response, kind: str) -> list[dict[str, Any]]:
    return [d for d in response.json().get("details", []) if d.get("@type") == kind]


async def test_ingest_search_and_delete_over_http(http: httpx.AsyncClient) -> None:
    text = "Buoys marking the channel are repainted red and green every spring."
    ingested = await http.post("/v1/documents:ingest", json={
        "header": {"documentId": "buoys", "title": "Buoys", "mimeType": "text/plain",
                   "tags": ["maritime"], "attributes": {"year": {"intValue": "2026"}}},
        "content": base64.b64encode(text.encode()).decode(),
    })  # fmt: skip
    assert ingested.status_code == 200, ingested.text
    result = ingested.json()["result"]
    assert result["outcome"] == "DOCUMENT_OUTCOME_CREATED"
    assert result["document"]["name"] == "documents/buoys"

    searched = await http.post("/v1/documents:search", json={
        "query": "what colour are the channel buoys", "mode": "SEARCH_MODE_HYBRID",
        "filters": [{"field": "attributes.year", "operator": "FILTER_OPERATOR_GREATER_OR_EQUAL",
                     "value": {"intValue": "2025"}}],
    })  # fmt: skip
    assert searched.status_code == 200, searched.text
    citation = searched.json()["hits"][0]["citation"]
    assert citation["documentId"] == "buoys" and citation["text"] == text
    assert citation["startOffset"] == 0 and citation["endOffset"] == len(text)

    got = await http.get("/v1/documents/buoys")
    assert got.json()["document"]["tags"] == ["maritime"]
    listed = await http.get("/v1/documents", params={"tags": "maritime"})
    assert [d["name"] for d in listed.json()["documents"]] == ["documents/buoys"]
    assert (await http.delete("/v1/documents/buoys")).status_code == 200
    assert (await http.get("/v1/documents/buoys")).status_code == 404


async def test_bad_http_requests_carry_field_violations(http: httpx.AsyncClient) -> None:
    empty = await http.post("/v1/documents:search", json={"query": ""})
    assert empty.status_code == 400
    assert details(empty, BAD_REQUEST)[0]["fieldViolations"][0]["field"] == "query"
    unknown = await http.post("/v1/documents:search", json={
        "query": "x", "filters": [{"field": "tenant", "operator": "FILTER_OPERATOR_EQUAL",
                                   "value": {"stringValue": "acme"}}]})  # fmt: skip
    assert unknown.status_code == 400
    fields = [v["field"] for v in details(unknown, BAD_REQUEST)[0]["fieldViolations"]]
    assert fields == ["filters[0].field"]
    corrupt = await http.post("/v1/documents:ingest", json={
        "header": {"documentId": "bad", "mimeType": "application/pdf"},
        "content": base64.b64encode(b"%PDF-1.4 nope").decode()})  # fmt: skip
    assert corrupt.status_code == 400
    unsupported = await http.post("/v1/documents:ingest", json={
        "header": {"documentId": "bad", "mimeType": "image/gif"},
        "content": base64.b64encode(b"GIF89a").decode()})  # fmt: skip
    fields = [v["field"] for v in details(unsupported, BAD_REQUEST)[0]["fieldViolations"]]
    assert fields == ["header.mime_type"]


async def test_entities_over_http(http: httpx.AsyncClient) -> None:
    upserted = await http.post("/v1/entities:batchUpsert", json={"entities": [
        {"name": "entities/exhibitor-1", "entityType": "exhibitor", "title": "Polar Freight",
         "master": "A cold-chain logistics provider.",
         "facets": {"products": "temperature sensors for vaccines", "booth": "Hall 2, D07"},
         "attributes": {"booth": {"stringValue": "D07"}}},
        {"name": "entities/exhibitor-2", "entityType": "exhibitor", "title": "Crane Works",
         "master": "Builds harbour cranes.", "facets": {"products": "ship-to-shore cranes"}},
    ]})  # fmt: skip
    assert upserted.status_code == 200, upserted.text
    found = await http.post("/v1/entities:search", json={"query": "vaccine temperature sensors"})
    assert found.status_code == 200, found.text
    best = found.json()["hits"][0]
    assert best["entity"]["name"] == "entities/exhibitor-1"
    assert "products" in {m["facet"] for m in best["matches"]}
    assert (await http.delete("/v1/entities/exhibitor-2")).status_code == 200


def test_grpcurl_lists_describes_and_searches_through_the_gateway(
    retrieval_gateway: EnvoyGateway, tenant_keys: Callable[[str], str]
) -> None:
    target = retrieval_gateway.grpc_target
    listed = subprocess.run([GRPCURL, "-plaintext", target, "list"], capture_output=True,
                            text=True, timeout=30, check=True).stdout.split()  # fmt: skip
    assert "callisto.retrieval.v1.RetrievalService" in listed
    key = tenant_keys("http-tenant")
    searched = subprocess.run(
        [GRPCURL, "-plaintext", "-H", f"authorization: Bearer {key}",
         "-d", '{"query": "anything at all", "mode": "SEARCH_MODE_KEYWORD"}', target,
         "callisto.retrieval.v1.RetrievalService/Search"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert isinstance(json.loads(searched), dict)
    failed = subprocess.run(
        [GRPCURL, "-plaintext", "-H", f"authorization: Bearer {key}", "-d", '{"query": ""}',
         target, "callisto.retrieval.v1.RetrievalService/Search"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert failed.returncode != 0 and "InvalidArgument" in failed.stderr


@pytest.mark.parametrize("broken", ["triton", "milvus"])
async def test_a_dead_dependency_means_not_serving_and_unavailable_with_retry_delay(
    service_env: dict[str, str],
    triton_embedder_url: str,
    tenant_keys: Callable[[str], str],
    tmp_path: Path,
    broken: str,
) -> None:
    env = retrieval_env(service_env, triton_embedder_url, tmp_path)
    nowhere = f"127.0.0.1:{free_port()}"
    if broken == "triton":
        env["CALLISTO_TRITON_URL"] = nowhere
    else:
        env["CALLISTO_MILVUS_URI"] = f"http://{nowhere}"
        env["CALLISTO_MILVUS_TIMEOUT_SECONDS"] = "1"
    service = ServiceProcess("retrieval", free_port(), env=env, log_path=tmp_path / "svc.log")
    service.start()
    try:
        async with grpc.aio.insecure_channel(service.address) as channel:
            health = await _wait_for_health(channel)
            assert health == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = pb_grpc.RetrievalServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Search(
                    pb.SearchRequest(query="anything", mode=pb.SEARCH_MODE_DENSE),
                    metadata=bearer(tenant_keys("http-tenant")),
                    timeout=30,
                )
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            delay = retry_delay(failed.value)
            assert delay is not None and delay >= 1
    finally:
        service.stop()


async def _wait_for_health(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(100):
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            return int(reply.status)
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
    raise AssertionError("the service never answered health checks")
