"""Generate over HTTP/JSON through the real Envoy gateway (NDJSON and SSE); grpcurl through it."""

from __future__ import annotations

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


@pytest_asyncio.fixture(loop_scope="session")
async def http(generation_gateway: EnvoyGateway, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=generation_gateway.http_url,
        headers={"authorization": f"Bearer {api_key}"},
        timeout=30,
    ) as client:
        yield client


BODY = {
    "messages": [
        {"role": "ROLE_SYSTEM", "content": "be brief"},
        {"role": "ROLE_USER", "content": "red green blue"},
    ],
    "parameters": {"maxTokens": 6},
}


async def read_stream(http: httpx.AsyncClient, *, sse: bool) -> list[dict[str, Any]]:
    headers = {"accept": "text/event-stream"} if sse else {}
    messages: list[dict[str, Any]] = []
    async with http.stream(
        "POST", "/v1/models/toy_llm:generate", json=BODY, headers=headers
    ) as response:
        assert response.status_code == 200, await response.aread()
        if sse:
            assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            line = line.strip()
            if not line:
                continue
            if sse:
                assert line.startswith("data:"), line
                line = line[len("data:") :].strip()
            messages.append(json.loads(line))
    return messages


@pytest.mark.parametrize("sse", [False, True], ids=["ndjson", "sse"])
async def test_generate_streams_over_http(http: httpx.AsyncClient, sse: bool) -> None:
    messages = await read_stream(http, sse=sse)
    assert [int(m["sequence"]) for m in messages] == list(range(1, len(messages) + 1))
    assert "".join(m["delta"]["text"] for m in messages[:-1]) == "red green blue " * 2
    result = messages[-1]["result"]
    assert result["finishReason"] == "FINISH_REASON_LENGTH"
    assert result["usage"] == {"promptTokens": 5, "completionTokens": 6, "totalTokens": 11}


async def test_bad_parameters_over_http_are_400_with_field_violations(
    http: httpx.AsyncClient,
) -> None:
    body = {**BODY, "parameters": {"temperature": 3}}
    response = await http.post("/v1/models/toy_llm:generate", json=body)
    assert response.status_code == 400, response.text
    details = response.json()["details"]
    fields = [v["field"] for d in details for v in d.get("fieldViolations", [])]
    assert "parameters.temperature" in fields


async def test_list_models_over_http(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/models")
    assert response.status_code == 200, response.text
    names = [m["name"] for m in response.json()["models"]]
    assert "models/toy_llm" in names


def test_grpcurl_generates_through_the_gateway(
    generation_gateway: EnvoyGateway, api_key: str
) -> None:
    grpcurl = str(Path(sys.executable).parent / "grpcurl")
    request = {
        "model": "models/toy_llm",
        "messages": [{"role": "ROLE_USER", "content": "one two"}],
        "parameters": {"maxTokens": 3},
    }
    completed = subprocess.run(
        [grpcurl, "-plaintext", "-H", f"authorization: Bearer {api_key}", "-d",
         json.dumps(request), generation_gateway.grpc_target,
         "callisto.generation.v1.GenerationService/Generate"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    decoder = json.JSONDecoder()
    messages, text = [], completed.stdout.strip()
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].strip()
    assert "".join(m["delta"]["text"] for m in messages[:-1]) == "one two one "
    usage = messages[-1]["result"]["usage"]
    # grpcurl prints the proto field names.
    assert usage.get("completion_tokens", usage.get("completionTokens")) == 3
