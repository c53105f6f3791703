"""Schema-constrained generation in the models themselves, over Triton's gRPC protocol:
toy_llm's deterministic schema-following mode and the real SmolLM2 under a llama.cpp grammar."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from callisto.mesh.triton import TritonServer


@dataclass
class Streamed:
    pieces: list[str] = field(default_factory=list)
    finish_reason: str = ""
    error: str = ""

    @property
    def text(self) -> str:
        return "".join(self.pieces)


async def stream(url: str, model: str, body: dict[str, Any], deadline_s: float = 60) -> Streamed:
    tensor = aioclient.InferInput("request", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([json.dumps(body).encode("utf-8")], dtype=np.object_))
    out = Streamed()

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": model, "inputs": [tensor], "enable_empty_final_response": True}

    async with aioclient.InferenceServerClient(url) as client:
        async for result, error in client.stream_infer(requests(), stream_timeout=deadline_s):
            if error is not None:
                out.error = str(error)
                break
            response = result.get_response()
            if response.outputs:
                text = result.as_numpy("text_output").reshape(-1)[0].decode("utf-8")
                reason = result.as_numpy("finish_reason").reshape(-1)[0].decode("utf-8")
                if text:
                    out.pieces.append(text)
                out.finish_reason = reason or out.finish_reason
            if response.parameters["triton_final_response"].bool_param:
                break
    return out


def chat(text: str, schema: Any, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "json_schema": schema, **extra}


ENVELOPE = {
    "oneOf": [
        {
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "tool": {"const": "lookup"},
                "arguments": {
                    "type": "object",
                    "properties": {"term": {"type": "string", "maxLength": 12}},
                    "required": ["term"],
                    "additionalProperties": False,
                },
            },
            "required": ["tool", "arguments"],
            "additionalProperties": False,
        },
    ]
}


async def test_toy_llm_streams_a_minimal_instance_of_the_schema(triton: TritonServer) -> None:
    schema = {
        "type": "object",
        "properties": {
            "kind": {"enum": ["plan", "answer"]},
            "steps": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "done": {"type": "boolean"},
            "optional": {"type": "integer"},
        },
        "required": ["kind", "steps", "done"],
    }
    out = await stream(triton.grpc_url, "toy_llm", chat("two words", schema))
    assert out.error == ""
    assert out.finish_reason == "stop"
    assert len(out.pieces) > 1
    assert json.loads(out.text) == {"kind": "plan", "steps": ["two words"], "done": False}


async def test_toy_llm_picks_the_alternative_the_prompt_names(triton: TritonServer) -> None:
    answer = await stream(triton.grpc_url, "toy_llm", chat("hello", ENVELOPE))
    assert json.loads(answer.text) == {"answer": "hello"}
    call = await stream(triton.grpc_url, "toy_llm", chat("please lookup cats", ENVELOPE))
    assert json.loads(call.text) == {"tool": "lookup", "arguments": {"term": "please looku"}}


async def test_toy_llm_rejects_a_schema_that_is_not_an_object(triton: TritonServer) -> None:
    out = await stream(triton.grpc_url, "toy_llm", chat("x", "not a schema"))
    assert "invalid_argument: json_schema must be a JSON object" in out.error


@pytest.mark.llm
async def test_llm_output_under_a_grammar_parses_and_matches_the_schema(
    triton: TritonServer,
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "certain": {"type": "boolean"},
        },
        "required": ["colour", "certain"],
        "additionalProperties": False,
    }
    body = chat("What colour is the sky? Answer in JSON.", schema, max_tokens=64, temperature=0)
    out = await stream(triton.grpc_url, "llm", body, deadline_s=180)
    assert out.error == "" and out.finish_reason == "stop", out
    value = json.loads(out.text, strict=False)
    assert list(Draft202012Validator(schema).iter_errors(value)) == []


@pytest.mark.llm
async def test_llm_makes_a_tool_call_with_its_required_argument(triton: TritonServer) -> None:
    envelope = ENVELOPE["oneOf"][1]
    body = chat(
        "Call the lookup tool to look up the word 'cat'.", envelope, max_tokens=64, temperature=0
    )
    out = await stream(triton.grpc_url, "llm", body, deadline_s=180)
    assert out.error == "" and out.finish_reason == "stop", out
    value = json.loads(out.text, strict=False)
    assert list(Draft202012Validator(envelope).iter_errors(value)) == []
    assert value["tool"] == "lookup" and 0 < len(value["arguments"]["term"]) <= 12


@pytest.mark.llm
async def test_llm_refuses_a_schema_it_cannot_turn_into_a_grammar(triton: TritonServer) -> None:
    out = await stream(triton.grpc_url, "llm", chat("x", {"type": "tuple"}, max_tokens=8))
    assert out.error.startswith("invalid_argument: json_schema cannot be turned into a grammar")
