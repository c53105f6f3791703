"""Every persistence RPC over HTTP/JSON through the real Envoy gateway, plus the error mapping a
plain HTTP client relies on (400 with field details, 401, 404, 409)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from callisto.mesh.gateway import EnvoyGateway

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


@pytest_asyncio.fixture(loop_scope="session")
async def http(persistence_gateway: EnvoyGateway, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=persistence_gateway.http_url,
        headers={"authorization": f"Bearer {api_key}"},
        timeout=15,
    ) as client:
        yield client


async def _create_conversation(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await http.post("/v1/conversations", json={"title": "over http", **fields})
    assert response.status_code == 200, response.text
    return dict(response.json()["conversation"])


def _violations(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    found = {}
    for detail in body.get("details", []):
        if detail.get("@type") == BAD_REQUEST:
            for violation in detail["fieldViolations"]:
                found[violation["field"]] = violation["description"]
    return found


async def test_conversation_crud_round_trips_over_http(http: httpx.AsyncClient) -> None:
    created = await _create_conversation(
        http,
        participants=[{"id": "buyer", "displayName": "Buyer", "kind": "PARTICIPANT_KIND_HUMAN"}],
        tags=["http", "demo"],
        metadata={"scenario": "pricing"},
    )
    name = created["name"]
    assert name.startswith("conversations/")
    assert created["status"] == "CONVERSATION_STATUS_ACTIVE"
    assert created["etag"]

    got = (await http.get(f"/v1/{name}")).json()["conversation"]
    assert got["title"] == "over http" and got["metadata"] == {"scenario": "pricing"}

    patched = await http.patch(
        f"/v1/{name}",
        params={"updateMask": "title,status"},
        json={"title": "renamed", "status": "CONVERSATION_STATUS_COMPLETED", "etag": got["etag"]},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["conversation"]["title"] == "renamed"

    listed = (await http.get("/v1/conversations", params={"tags": "http", "pageSize": 100})).json()
    assert name in [c["name"] for c in listed["conversations"]]

    deleted = await http.delete(f"/v1/{name}")
    assert deleted.status_code == 200, deleted.text
    assert (await http.get(f"/v1/{name}")).status_code == 404


async def test_messages_events_and_export_round_trip_over_http(http: httpx.AsyncClient) -> None:
    name = (await _create_conversation(http))["name"]
    posted = await http.post(
        f"/v1/{name}/messages",
        json={
            "role": "ROLE_USER",
            "author": "buyer",
            "text": "What does the E410 cost?",
            "usage": {"promptTokens": 7, "completionTokens": 0, "totalTokens": 7},
            "sentiment": {"label": "SENTIMENT_LABEL_NEUTRAL", "score": 0.1},
            "citations": [{"documentId": "price-list", "startOffset": 3, "endOffset": 9}],
        },
    )
    assert posted.status_code == 200, posted.text
    message = posted.json()["message"]
    assert message["name"] == f"{name}/messages/1"

    assert (await http.get(f"/v1/{message['name']}")).json()["message"]["text"].startswith("What")
    messages = (await http.get(f"/v1/{name}/messages")).json()["messages"]
    assert [m["author"] for m in messages] == ["buyer"]

    event = await http.post(
        f"/v1/{name}/events", json={"type": "agent.turn_started", "data": {"speaker": "seller"}}
    )
    assert event.status_code == 200, event.text
    events = (await http.get(f"/v1/{name}/events")).json()["events"]
    assert [e["type"] for e in events] == ["message.created", "agent.turn_started"]
    assert [int(e["sequence"]) for e in events] == [1, 2]

    export = (await http.get(f"/v1/{name}:export", params={"includeEvents": "true"})).json()
    assert export["conversation"]["name"] == name
    assert len(export["messages"]) == 1 and len(export["events"]) == 2


async def test_sessions_and_retention_round_trip_over_http(http: httpx.AsyncClient) -> None:
    created = await http.post(
        "/v1/sessions", json={"kind": "workflow", "state": {"step": 1}}, params={"sessionId": ""}
    )
    assert created.status_code == 200, created.text
    session = created.json()["session"]
    name, etag = session["name"], session["etag"]

    updated = await http.patch(f"/v1/{name}", json={"state": {"step": 2}, "etag": etag})
    assert updated.status_code == 200, updated.text
    assert updated.json()["session"]["state"] == {"step": 2}

    stale = await http.patch(f"/v1/{name}", json={"state": {"step": 3}, "etag": etag})
    assert stale.status_code == 409, stale.text

    assert (await http.get(f"/v1/{name}")).json()["session"]["state"] == {"step": 2}
    kinds = (await http.get("/v1/sessions", params={"kind": "workflow"})).json()["sessions"]
    assert name in [s["name"] for s in kinds]
    assert (await http.delete(f"/v1/{name}")).status_code == 200

    policy = await http.patch(
        "/v1/retentionPolicy", json={"conversationTtl": "86400s", "sessionTtl": "3600s"}
    )
    assert policy.status_code == 200, policy.text
    got = (await http.get("/v1/retentionPolicy")).json()["retentionPolicy"]
    assert got["conversationTtl"] == "86400s" and got["sessionTtl"] == "3600s"
    await http.patch("/v1/retentionPolicy", json={"conversationTtl": "0s", "sessionTtl": "0s"})


async def test_invalid_input_is_400_with_field_violations(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/conversations",
        params={"conversationId": "Not Valid!"},
        json={"title": "x" * 300, "tags": [""]},
    )
    assert response.status_code == 400, response.text
    violations = _violations(response)
    assert {"conversation_id", "conversation.title"} <= set(violations)


async def test_missing_key_is_401(persistence_gateway: EnvoyGateway) -> None:
    async with httpx.AsyncClient(base_url=persistence_gateway.http_url) as anonymous:
        response = await anonymous.get("/v1/conversations")
    assert response.status_code == 401


async def test_another_tenants_conversation_is_404(
    http: httpx.AsyncClient, persistence_gateway: EnvoyGateway, other_api_key: str
) -> None:
    name = (await _create_conversation(http))["name"]
    async with httpx.AsyncClient(
        base_url=persistence_gateway.http_url,
        headers={"authorization": f"Bearer {other_api_key}"},
    ) as other:
        assert (await other.get(f"/v1/{name}")).status_code == 404
        assert (
            await other.post(f"/v1/{name}/messages", json={"role": "ROLE_USER"})
        ).status_code == 404
        listed = (await other.get("/v1/conversations")).json()["conversations"]
        assert name not in [c["name"] for c in listed]


async def _read_stream(
    http: httpx.AsyncClient, path: str, *, sse: bool, count: int, after: int = 0
) -> list[dict[str, Any]]:
    """Reads `count` messages of a server stream, then drops the connection."""
    headers = {"accept": "text/event-stream"} if sse else {}
    received: list[dict[str, Any]] = []
    async with http.stream(
        "GET", path, params={"afterSequence": after}, headers=headers
    ) as response:
        assert response.status_code == 200
        if sse:
            assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            line = line.strip()
            if not line:
                continue
            if sse:
                assert line.startswith("data:"), line
                line = line[len("data:") :].strip()
            message = json.loads(line)
            if "event" in message:
                received.append(message)
            if len(received) == count:
                break
    return received


@pytest.mark.parametrize("sse", [False, True], ids=["ndjson", "sse"])
async def test_subscribe_over_http_resumes_without_gap_or_duplicate(
    http: httpx.AsyncClient, sse: bool
) -> None:
    name = (await _create_conversation(http))["name"]

    async def append(total: int) -> None:
        for index in range(total):
            await http.post(f"/v1/{name}/events", json={"type": "test.tick", "data": {"i": index}})
            await asyncio.sleep(0.005)

    writer = asyncio.create_task(append(40))
    path = f"/v1/{name}/events:subscribe"
    first = await _read_stream(http, path, sse=sse, count=15)
    last_seen = int(first[-1]["sequence"])
    rest = await _read_stream(http, path, sse=sse, count=40 - last_seen, after=last_seen)
    await writer
    sequences = [int(m["sequence"]) for m in first + rest]
    assert sequences == list(range(1, 41))
    assert [m["event"]["data"]["i"] for m in first + rest] == list(range(40))


async def test_subscribe_over_http_ends_with_a_terminal_message(http: httpx.AsyncClient) -> None:
    created = await _create_conversation(http)
    name = created["name"]
    await http.post(f"/v1/{name}/events", json={"type": "test.tick", "data": {}})
    await http.patch(
        f"/v1/{name}",
        params={"updateMask": "status"},
        json={"status": "CONVERSATION_STATUS_COMPLETED"},
    )
    lines = []
    async with http.stream("GET", f"/v1/{name}/events:subscribe") as response:
        async for line in response.aiter_lines():
            if line.strip():
                lines.append(json.loads(line))
    assert "end" in lines[-1], lines[-1]
    assert lines[-1]["end"]["status"] == "CONVERSATION_STATUS_COMPLETED"


def test_grpcurl_lists_and_describes_services_through_the_gateway(
    persistence_gateway: EnvoyGateway,
) -> None:
    grpcurl = str(Path(sys.executable).parent / "grpcurl")
    listed = subprocess.run(
        [grpcurl, "-plaintext", persistence_gateway.grpc_target, "list"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()  # fmt: skip
    assert "callisto.persistence.v1.PersistenceService" in listed
    described = subprocess.run(
        [grpcurl, "-plaintext", persistence_gateway.grpc_target, "describe",
         "callisto.persistence.v1.PersistenceService"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "rpc SubscribeEvents" in described


def test_grpcurl_calls_an_rpc_through_the_gateway(
    persistence_gateway: EnvoyGateway, api_key: str
) -> None:
    grpcurl = str(Path(sys.executable).parent / "grpcurl")
    created = subprocess.run(
        [grpcurl, "-plaintext", "-H", f"authorization: Bearer {api_key}",
         "-d", '{"conversation": {"title": "via grpcurl"}}', persistence_gateway.grpc_target,
         "callisto.persistence.v1.PersistenceService/CreateConversation"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert json.loads(created)["conversation"]["title"] == "via grpcurl"
