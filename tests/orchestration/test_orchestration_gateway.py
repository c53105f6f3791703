"""The orchestration service through the real Envoy gateway: a run over HTTP as server-sent events
and as NDJSON, re-attaching over HTTP after an event id, grpcurl listing, describing and calling
the service by reflection, Converse (bidirectional gRPC) through Envoy, and agent calls over
HTTP/JSON."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import ServiceProcess
from callisto.orchestration import assistant_start

SERVICE = "callisto.orchestration.v1.OrchestrationService"
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _agent(gateway: EnvoyGateway, key: str) -> str:
    async with await callisto.Client.connect(gateway.grpc_target, api_key=key) as client:
        agent = await client.orchestration.create_agent(
            agent_id=_id("gw-agent"), display_name="Gateway agent", system_prompt="Be brief."
        )
    return agent.name


def _run_body(agent: str, prompt: str) -> dict[str, Any]:
    return {"start": {"agents": [agent], "prompt": prompt, "mode": "CONVERSATION_MODE_ASSISTANT"}}


def _kind(event: dict[str, Any]) -> str:
    (kind,) = [k for k in event if k not in ("eventId", "conversation", "createTime", "stepId")]
    return kind


def _camel(event: dict[str, Any]) -> dict[str, Any]:
    def camel(name: str) -> str:
        head, *rest = name.split("_")
        return head + "".join(part.title() for part in rest)

    return {camel(key): value for key, value in event.items()}


def _check_run(events: list[dict[str, Any]]) -> None:
    """A whole run: turn started first, done last, ids increasing by log sequence."""
    assert events, "no events"
    assert _kind(events[0]) == "turnStarted" and _kind(events[-1]) == "done"
    assert events[-1]["done"]["reason"] == "completed"
    ids = [int(e["eventId"]) for e in events]  # int64 is a JSON string
    assert ids == sorted(set(ids))
    assert len({e["conversation"] for e in events}) == 1


async def _sse(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> list[Any]:
    """The `data:` frames of a server-sent event stream, as JSON."""
    frames = []
    headers = {**kwargs.pop("headers", {}), "accept": "text/event-stream"}
    async with client.stream(method, url, headers=headers, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                frames.append(json.loads(line.removeprefix("data:")))
    return frames


async def _ndjson(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> list[Any]:
    lines = []
    async with client.stream(method, url, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.strip():
                lines.append(json.loads(line))
    return lines


@pytest.fixture
def http(mesh_gateway: EnvoyGateway, api_key: str) -> Callable[[], httpx.AsyncClient]:
    def make() -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=mesh_gateway.http_url,
            headers={"authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(120, connect=5),
        )

    return make


async def test_a_run_streams_over_http_as_server_sent_events_and_re_attaches(
    mesh_gateway: EnvoyGateway, api_key: str, http: Callable[[], httpx.AsyncClient]
) -> None:
    agent = await _agent(mesh_gateway, api_key)
    async with http() as client:
        frames = await _sse(
            client, "POST", "/v1/conversations:run", json=_run_body(agent, "hello over SSE")
        )
        events = [frame["event"] for frame in frames]
        _check_run(events)
        conversation = events[0]["conversation"]
        middle = int(events[len(events) // 2]["eventId"])
        # Re-attach after an id, as SSE and as NDJSON: exactly the events after it.
        url = f"/v1/{conversation}:stream"
        again = await _sse(client, "GET", url, params={"afterEventId": middle})
        later = [e for e in events if int(e["eventId"]) > middle]
        assert [frame["event"] for frame in again] == later
        # From the start: the human turn that opened the run, then the run's events.
        log = [line["event"] for line in await _ndjson(client, "GET", url)]
        assert log[-len(events) :] == events
        opening = log[: -len(events)]
        assert [_kind(e) for e in opening] == ["turnEnded"]
        assert opening[0]["turnEnded"]["text"] == "hello over SSE"


async def test_a_run_streams_over_http_as_newline_delimited_json(
    mesh_gateway: EnvoyGateway, api_key: str, http: Callable[[], httpx.AsyncClient]
) -> None:
    agent = await _agent(mesh_gateway, api_key)
    async with http() as client:
        lines = await _ndjson(
            client, "POST", "/v1/conversations:run", json=_run_body(agent, "hello over NDJSON")
        )
    _check_run([line["event"] for line in lines])


async def test_agents_over_http_json_and_errors_as_status_bodies(
    mesh_gateway: EnvoyGateway, api_key: str, http: Callable[[], httpx.AsyncClient]
) -> None:
    agent_id = _id("http-agent")
    async with http() as client:
        created = await client.post(
            "/v1/agents",
            params={"agentId": agent_id},
            json={"displayName": "HTTP agent", "systemPrompt": "Be brief."},
        )
        assert created.status_code == 200, created.text
        assert created.json()["agent"]["name"] == f"agents/{agent_id}"
        got = await client.get(f"/v1/agents/{agent_id}")
        assert got.status_code == 200 and got.json()["agent"]["displayName"] == "HTTP agent"
        tools = await client.get("/v1/tools")
        assert "search_documents" in {tool["name"] for tool in tools.json()["tools"]}
        missing = await client.get(f"/v1/agents/{_id('missing')}")
        assert missing.status_code == 404 and missing.json()["code"] == 5
        invalid = await client.post("/v1/agents", json={"systemPrompt": "no name"})
        assert invalid.status_code == 400 and invalid.json()["code"] == 3


async def _grpcurl(*arguments: str) -> str:
    process = await asyncio.create_subprocess_exec(
        GRPCURL, *arguments, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    return out.decode()


def _json_objects(text: str) -> list[Any]:
    """The JSON objects grpcurl prints one after the other."""
    decoder, objects, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return objects
        value, at = decoder.raw_decode(text, at)
        objects.append(value)


@pytest.fixture(scope="module")
def reflecting_gateway(
    mesh_gateway: EnvoyGateway,
    orchestration: ServiceProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EnvoyGateway]:
    """The mesh gateway's routes, with reflection answered by orchestration (which reflects
    every service of the mesh, as persistence does in `callisto up`; the session's persistence
    process reflects only itself)."""
    gateway = EnvoyGateway.on_free_ports(
        dict(mesh_gateway.spec.upstreams),
        tmp_path_factory.mktemp("reflecting-gateway"),
        reflection_service=SERVICE,
    )
    gateway.start()
    yield gateway
    gateway.stop()


async def test_grpcurl_lists_describes_and_runs_the_service_by_reflection(
    reflecting_gateway: EnvoyGateway, mesh_gateway: EnvoyGateway, api_key: str
) -> None:
    target = reflecting_gateway.grpc_target
    assert SERVICE in (await _grpcurl("-plaintext", target, "list")).split()
    described = await _grpcurl("-plaintext", target, "describe", SERVICE)
    for rpc in ("rpc Converse", "rpc RunConversation", "rpc StreamConversation", "rpc ListTools"):
        assert rpc in described
    auth = f"authorization: Bearer {api_key}"
    tools = _json_objects(await _grpcurl("-plaintext", "-H", auth, target, f"{SERVICE}/ListTools"))
    assert "calculator" in {tool["name"] for tool in tools[0]["tools"]}
    agent = await _agent(mesh_gateway, api_key)
    body = json.dumps(_run_body(agent, "hello over grpcurl"))
    out = await _grpcurl("-plaintext", "-H", auth, "-d", body, target, f"{SERVICE}/RunConversation")
    # grpcurl prints the proto field names (event_id, turn_started).
    _check_run([_camel(message["event"]) for message in _json_objects(out)])


async def test_converse_streams_both_ways_through_envoy(
    mesh_gateway: EnvoyGateway, api_key: str
) -> None:
    agent = await _agent(mesh_gateway, api_key)
    async with await callisto.Client.connect(mesh_gateway.grpc_target, api_key=api_key) as client:
        start = assistant_start(agent, "hello over Converse")
        async with client.orchestration.converse(start=start) as session:
            events = [event async for event in session.events()]
    assert events[0].WhichOneof("kind") == "turn_started"
    assert session.done is not None and session.done.reason == "completed"
    assert isinstance(events[-1], pb.ConversationEvent) and events[-1].WhichOneof("kind") == "done"


@pytest.fixture(scope="module")
def short_timeout_gateway(
    mesh_gateway: EnvoyGateway, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnvoyGateway]:
    """The mesh gateway's routes with a one-second unary timeout."""
    gateway = EnvoyGateway.on_free_ports(
        dict(mesh_gateway.spec.upstreams),
        tmp_path_factory.mktemp("short-timeout-gateway"),
        unary_timeout_s=1.0,
    )
    gateway.start()
    yield gateway
    gateway.stop()


async def test_a_run_longer_than_the_unary_timeout_is_not_cut(
    short_timeout_gateway: EnvoyGateway, mesh_gateway: EnvoyGateway, api_key: str
) -> None:
    agent = await _agent(mesh_gateway, api_key)
    # Every toy_llm token takes 60 ms: the run lasts well past the one-second unary bound.
    slow = {"x-callisto-model-extras": json.dumps({"delay_ms": 60})}
    started = time.monotonic()
    async with httpx.AsyncClient(
        base_url=short_timeout_gateway.http_url,
        headers={"authorization": f"Bearer {api_key}", **slow},
        timeout=httpx.Timeout(120, connect=5),
    ) as client:
        frames = await _sse(
            client, "POST", "/v1/conversations:run", json=_run_body(agent, "a slow answer please")
        )
    assert time.monotonic() - started > 2.0
    _check_run([frame["event"] for frame in frames])
