"""Structured output and tool calls through the real generation service and a real tritonserver:
toy_llm's deterministic schema-following mode, the real SmolLM2 under a llama.cpp grammar, and
the same fields over HTTP/JSON through Envoy."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from generation_support import chat_messages, extras, violations
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2

from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2, generation_pb2_grpc
from callisto.mesh.gateway import EnvoyGateway

Stub = generation_pb2_grpc.GenerationServiceStub

VERDICT = {
    "type": "object",
    "properties": {
        "sufficient": {"type": "boolean"},
        "confidence": {"enum": ["low", "medium", "high"]},
        "missing": {"type": "array", "items": {"type": "string"}},
        "note": {"type": "string"},
    },
    "required": ["sufficient", "confidence"],
    "additionalProperties": False,
}
CALCULATOR = {
    "name": "calculator",
    "description": "Evaluates an arithmetic expression",
    "parameters": {
        "type": "object",
        "properties": {"expression": {"type": "string", "maxLength": 40}},
        "required": ["expression"],
        "additionalProperties": False,
    },
}
CURRENT_TIME = {"name": "current_time", "description": "The current time in UTC"}


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def tool(spec: dict[str, Any]) -> generation_pb2.Tool:
    return generation_pb2.Tool(
        name=spec["name"],
        description=spec.get("description", ""),
        parameters=struct(spec["parameters"]) if "parameters" in spec else None,
    )


def structured(
    text: str,
    *,
    schema: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] = (),  # type: ignore[assignment]
    choice: generation_pb2.ToolChoice | None = None,
    model: str = "models/toy_llm",
    **parameters: Any,
) -> generation_pb2.GenerateRequest:
    request = generation_pb2.GenerateRequest(
        model=model,
        messages=chat_messages(text),
        parameters=generation_pb2.SamplingParameters(**parameters),
        tools=[tool(t) for t in tools],
    )
    if schema is not None:
        request.response_format.json_schema.CopyFrom(struct(schema))
        request.response_format.name = "answer"
    if choice is not None:
        request.tool_choice.CopyFrom(choice)
    return request


async def generate(
    stub: Stub, request: generation_pb2.GenerateRequest, api_key: str, deadline_s: float = 30
) -> list[generation_pb2.GenerateResponse]:
    return [r async for r in stub.Generate(request, timeout=deadline_s)]


def streamed_text(responses: list[generation_pb2.GenerateResponse]) -> str:
    assert [r.sequence for r in responses] == list(range(1, len(responses) + 1))
    kinds = [r.WhichOneof("event") for r in responses]
    assert kinds[:-1] == ["delta"] * (len(responses) - 1), kinds
    return "".join(r.delta.text for r in responses[:-1])


def parsed(result: generation_pb2.GenerationResult) -> Any:
    return json_format.MessageToDict(result.parsed)


async def rejected(stub: Stub, request: generation_pb2.GenerateRequest, api_key: str) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generate(stub, request, api_key)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return violations(caught.value)


def error_reason(status: Any) -> str:
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


# --- response_format ------------------------------------------------------------------------


async def test_a_json_schema_answer_streams_as_deltas_and_ends_with_the_parsed_value(
    stub: Stub, api_key: str
) -> None:
    responses = await generate(stub, structured("is it enough", schema=VERDICT), api_key)
    text = streamed_text(responses)
    result = responses[-1].result
    # The JSON streams token by token (the first alone, later ones possibly coalesced).
    assert len(responses) >= 3
    assert sum(r.delta.token_count for r in responses[:-1]) == result.usage.completion_tokens == 4
    assert result.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert result.text == text == '{"sufficient": false, "confidence": "low"}'
    assert parsed(result) == {"sufficient": False, "confidence": "low"}
    assert not result.tool_calls


async def test_properties_are_written_in_the_order_of_required_whatever_the_struct_order(
    stub: Stub, api_key: str
) -> None:
    # A Struct is a map: its key order differs between processes. The answer's order must not.
    names = ["zeta", "alpha", "mid", "beta", "omega", "gamma"]
    schema = {
        "type": "object",
        "properties": {name: {"type": "boolean"} for name in sorted(names)},
        "required": names,
    }
    for _ in range(3):
        result = (await generate(stub, structured("x", schema=schema), api_key))[-1].result
        assert result.text == "{" + ", ".join(f'"{name}": false' for name in names) + "}"


async def test_integral_schema_numbers_survive_the_struct_round_trip(
    stub: Stub, api_key: str
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "version": {"const": 3},
            "code": {"type": "string", "minLength": 5, "maxLength": 8},
            "steps": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
        },
        "required": ["version", "code", "steps"],
    }
    responses = await generate(stub, structured("hi", schema=schema), api_key)
    result = responses[-1].result
    assert json.loads(result.text) == {"version": 3, "code": "hixxx", "steps": [0, 0]}
    assert parsed(result) == {"version": 3.0, "code": "hixxx", "steps": [0.0, 0.0]}


async def test_a_non_object_schema_answer_is_parsed_as_that_value(stub: Stub, api_key: str) -> None:
    responses = await generate(stub, structured("x", schema={"enum": ["yes", "no"]}), api_key)
    result = responses[-1].result
    assert result.text == '"yes"'
    assert result.parsed.string_value == "yes"


async def test_chat_generations_carry_the_parsed_value_on_their_result(
    stub: Stub, api_key: str
) -> None:
    request = structured("enough", schema=VERDICT)
    start = generation_pb2.StartGeneration(
        generation_id="g1",
        model=request.model,
        messages=request.messages,
        response_format=request.response_format,
    )

    async def requests() -> AsyncIterator[generation_pb2.ChatRequest]:
        yield generation_pb2.ChatRequest(start=start)

    responses = [r async for r in stub.Chat(requests(), timeout=30)]
    assert responses[-1].WhichOneof("event") == "result", responses[-1]
    assert parsed(responses[-1].result) == {"sufficient": False, "confidence": "low"}
    assert "".join(r.delta.text for r in responses[:-1]) == responses[-1].result.text


async def test_a_cancelled_structured_generation_ends_cancelled_without_a_parsed_value(
    stub: Stub, api_key: str
) -> None:
    request = structured("enough", schema=VERDICT)
    start = generation_pb2.StartGeneration(
        generation_id="g1",
        model=request.model,
        messages=request.messages,
        response_format=request.response_format,
    )
    first_delta = asyncio.Event()

    async def requests() -> AsyncIterator[generation_pb2.ChatRequest]:
        yield generation_pb2.ChatRequest(start=start)
        await first_delta.wait()
        yield generation_pb2.ChatRequest(cancel=generation_pb2.CancelGeneration(generation_id="g1"))

    responses = []
    metadata = extras(delay_ms=50)
    async for response in stub.Chat(requests(), metadata=metadata, timeout=30):
        responses.append(response)
        first_delta.set()
    result = responses[-1].result
    assert result.finish_reason == generation_pb2.FINISH_REASON_CANCELLED
    assert not result.HasField("parsed") and not result.tool_calls
    assert result.text == "".join(r.delta.text for r in responses[:-1])
    assert result.text.startswith('{"sufficient": ') and not result.text.endswith("}")


async def test_an_answer_cut_by_max_tokens_ends_with_an_output_truncated_error(
    stub: Stub, api_key: str
) -> None:
    responses = await generate(stub, structured("x", schema=VERDICT, max_tokens=2), api_key)
    streamed_text(responses)
    assert responses[-1].WhichOneof("event") == "error"
    error = responses[-1].error
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "max_tokens" in error.message
    assert error_reason(error) == "OUTPUT_TRUNCATED"


async def test_output_that_is_not_json_is_an_error_not_a_silent_pass(
    stub: Stub, api_key: str
) -> None:
    # A stop sequence cuts the JSON short: the service refuses to hand back a broken value.
    request = structured("x", schema=VERDICT, stop=["}"])
    responses = await generate(stub, request, api_key)
    assert responses[-1].WhichOneof("event") == "error"
    assert responses[-1].error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "not JSON" in responses[-1].error.message
    assert error_reason(responses[-1].error) == "MODEL_OUTPUT_INVALID"


async def test_json_that_does_not_match_the_schema_is_an_error(stub: Stub, api_key: str) -> None:
    # The grammar admits 0 for both alternatives; oneOf wants exactly one to match.
    schema = {"oneOf": [{"type": "integer"}, {"type": "number"}]}
    responses = await generate(stub, structured("x", schema=schema), api_key)
    assert responses[-1].WhichOneof("event") == "error"
    assert responses[-1].error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "does not match the schema" in responses[-1].error.message


@pytest.mark.parametrize(
    ("schema", "field", "words"),
    [
        ({"type": "objekt"}, "response_format.json_schema.type", "not a valid JSON Schema"),
        (
            {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}},
            "response_format.json_schema.properties.n",
            "minimum",
        ),
        (
            {"type": "string", "pattern": "^a+$"},
            "response_format.json_schema",
            "pattern",
        ),
        (
            {"type": "object", "properties": {}, "required": ["ghost"]},
            "response_format.json_schema.required",
            "ghost",
        ),
        (
            {"type": "object", "properties": {"x": {"description": "anything"}}},
            "response_format.json_schema.properties.x",
            "must say what it admits",
        ),
        ({}, "response_format.json_schema", "must not be empty"),
        (
            {"type": "string", "maxLength": 4000},
            "response_format.json_schema.maxLength",
            "at most 256",
        ),
        (
            {"type": "array", "items": {"type": "null"}, "minItems": 3, "maxItems": 2},
            "response_format.json_schema.maxItems",
            "below minItems",
        ),
        ({"enum": []}, "response_format.json_schema.enum", "at least one"),
    ],
    ids=[
        "not-a-schema",
        "minimum",
        "pattern",
        "required-unknown",
        "untyped",
        "empty",
        "huge-bound",
        "crossed-bounds",
        "empty-enum",
    ],
)
async def test_invalid_or_unsupported_schemas_are_invalid_argument_with_field_violations(
    stub: Stub, api_key: str, schema: dict[str, Any], field: str, words: str
) -> None:
    found = await rejected(stub, structured("x", schema=schema), api_key)
    assert field in found, found
    assert words in found[field]


async def test_schemas_too_deep_or_too_large_are_rejected(stub: Stub, api_key: str) -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(10):
        deep = {"type": "array", "items": deep}
    found = await rejected(stub, structured("x", schema=deep), api_key)
    assert any("nests deeper" in d for d in found.values()), found
    large = {"enum": ["v" * 100 + str(i) for i in range(200)]}
    found = await rejected(stub, structured("x", schema=large), api_key)
    assert "bytes" in found["response_format.json_schema"]


async def test_schemas_holding_what_json_cannot_are_invalid_argument_not_internal(
    stub: Stub, api_key: str
) -> None:
    # A Struct can carry Infinity, NaN and a Value with no kind; none of them is JSON.
    request = structured("x", schema={"type": "number", "maximum": float("inf")})
    found = await rejected(stub, request, api_key)
    assert found["response_format.json_schema.maximum"] == "must be a finite number"

    request = structured("x", tools=[CALCULATOR])
    request.tools[0].parameters.fields["title"].Clear()
    request.tools[0].parameters.fields["default"].number_value = float("nan")
    found = await rejected(stub, request, api_key)
    assert any(f.startswith("tools[0].parameters.") for f in found), found


# --- tools ----------------------------------------------------------------------------------


async def test_a_required_tool_call_ends_with_tool_calls_and_valid_arguments(
    stub: Stub, api_key: str
) -> None:
    required = generation_pb2.ToolChoice(mode=generation_pb2.TOOL_CHOICE_MODE_REQUIRED)
    request = structured("2 + 2", tools=[CALCULATOR, CURRENT_TIME], choice=required)
    responses = await generate(stub, request, api_key)
    streamed_text(responses)  # the envelope streams as deltas
    result = responses[-1].result
    assert result.finish_reason == generation_pb2.FINISH_REASON_TOOL_CALLS
    assert result.text == ""
    [call] = result.tool_calls
    assert call.name == "calculator"
    assert call.id.startswith("call_") and len(call.id) > 10
    assert json_format.MessageToDict(call.arguments) == {"expression": "2 + 2"}


async def test_auto_answers_in_text_unless_the_prompt_calls_for_a_tool(
    stub: Stub, api_key: str
) -> None:
    # toy_llm picks the envelope whose tool name is a word of the prompt, else a text answer.
    answer = (await generate(stub, structured("hello there", tools=[CALCULATOR]), api_key))[-1]
    assert answer.result.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert answer.result.text == "hello there"
    assert not answer.result.tool_calls

    request = structured("what time is it current_time", tools=[CALCULATOR, CURRENT_TIME])
    call = (await generate(stub, request, api_key))[-1].result
    assert call.finish_reason == generation_pb2.FINISH_REASON_TOOL_CALLS
    assert [(c.name, json_format.MessageToDict(c.arguments)) for c in call.tool_calls] == [
        ("current_time", {})
    ]


async def test_a_named_tool_choice_forces_that_tool(stub: Stub, api_key: str) -> None:
    choice = generation_pb2.ToolChoice(tool="current_time")
    request = structured("use calculator", tools=[CALCULATOR, CURRENT_TIME], choice=choice)
    result = (await generate(stub, request, api_key))[-1].result
    assert [c.name for c in result.tool_calls] == ["current_time"]


async def test_tool_choice_none_generates_plain_text(stub: Stub, api_key: str) -> None:
    none = generation_pb2.ToolChoice(mode=generation_pb2.TOOL_CHOICE_MODE_NONE)
    request = structured("red green", tools=[CALCULATOR], choice=none, max_tokens=3)
    responses = await generate(stub, request, api_key)
    assert streamed_text(responses) == "red green red "
    assert responses[-1].result.text == "red green red "
    assert responses[-1].result.finish_reason == generation_pb2.FINISH_REASON_LENGTH


async def test_earlier_tool_calls_and_their_results_reach_the_model_in_the_prompt(
    stub: Stub, api_key: str
) -> None:
    request = structured("2 + 2", tools=[CALCULATOR])
    request.messages.extend(
        [
            generation_pb2.ChatMessage(
                role=common_pb2.ROLE_ASSISTANT,
                tool_calls=[
                    generation_pb2.ToolCall(
                        id="call_1", name="calculator", arguments=struct({"expression": "2 + 2"})
                    )
                ],
            ),
            generation_pb2.ChatMessage(
                role=common_pb2.ROLE_TOOL, tool_call_id="call_1", content="4"
            ),
        ]
    )
    result = (await generate(stub, request, api_key))[-1].result
    # toy_llm answers with the last user turn: the tool's result, written as a turn naming the
    # call (small chat templates know no tool role).
    assert result.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert result.text == "Result of tool call call_1 calculator:\n4"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"tools": [CALCULATOR, CALCULATOR]}, "tools[1].name", "already used"),
        ({"tools": [{**CALCULATOR, "name": "2calc"}]}, "tools[0].name", "letter"),
        (
            {"tools": [{**CALCULATOR, "parameters": {"type": "string"}}]},
            "tools[0].parameters.type",
            "object",
        ),
        ({"schema": VERDICT}, "tools", "response_format"),
        ({"choice": generation_pb2.ToolChoice(tool="nope")}, "tool_choice.tool", "nope"),
        ({"tools": [], "choice": generation_pb2.ToolChoice(tool="x")}, "tool_choice", "needs"),
    ],
    ids=["duplicate", "bad-name", "non-object-arguments", "with-format", "unknown", "no-tools"],
)
async def test_invalid_tools_are_invalid_argument_with_field_violations(
    stub: Stub, api_key: str, change: dict[str, Any], field: str, words: str
) -> None:
    arguments: dict[str, Any] = {"tools": [CALCULATOR], **change}
    found = await rejected(stub, structured("x", **arguments), api_key)
    assert field in found, found
    assert words in found[field]


async def test_tool_messages_need_the_id_of_the_call_they_answer(stub: Stub, api_key: str) -> None:
    request = structured("x", tools=[CALCULATOR])
    request.messages.append(generation_pb2.ChatMessage(role=common_pb2.ROLE_TOOL, content="4"))
    request.messages.append(
        generation_pb2.ChatMessage(role=common_pb2.ROLE_USER, content="q", tool_call_id="c")
    )
    found = await rejected(stub, request, api_key)
    assert "is required" in found["messages[2].tool_call_id"]
    assert "only on a ROLE_TOOL" in found["messages[3].tool_call_id"]


# --- HTTP/JSON through Envoy ----------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def http(generation_gateway: EnvoyGateway, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=generation_gateway.http_url,
        headers={"authorization": f"Bearer {api_key}"},
        timeout=30,
    ) as client:
        yield client


async def post_ndjson(http: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with http.stream("POST", "/v1/models/toy_llm:generate", json=body) as response:
        assert response.status_code == 200, await response.aread()
        return [json.loads(line) async for line in response.aiter_lines() if line.strip()]


async def test_response_format_and_tools_work_over_http_json(http: httpx.AsyncClient) -> None:
    messages = [{"role": "ROLE_USER", "content": "is it enough"}]
    body = {"messages": messages, "responseFormat": {"jsonSchema": VERDICT, "name": "verdict"}}
    lines = await post_ndjson(http, body)
    result = lines[-1]["result"]
    assert result["parsed"] == {"sufficient": False, "confidence": "low"}
    assert "".join(line["delta"]["text"] for line in lines[:-1]) == result["text"]

    body = {
        "messages": [{"role": "ROLE_USER", "content": "3 * 7"}],
        "tools": [CALCULATOR],
        "toolChoice": {"tool": "calculator"},
    }
    result = (await post_ndjson(http, body))[-1]["result"]
    assert result["finishReason"] == "FINISH_REASON_TOOL_CALLS"
    [call] = result["toolCalls"]
    assert call["name"] == "calculator" and call["arguments"] == {"expression": "3 * 7"}


async def test_an_invalid_schema_over_http_is_400_with_field_violations(
    http: httpx.AsyncClient,
) -> None:
    body = {
        "messages": [{"role": "ROLE_USER", "content": "x"}],
        "responseFormat": {"jsonSchema": {"type": "string", "format": "email"}},
    }
    response = await http.post("/v1/models/toy_llm:generate", json=body)
    assert response.status_code == 400, response.text
    fields = [v["field"] for d in response.json()["details"] for v in d.get("fieldViolations", [])]
    assert "response_format.json_schema" in fields


def test_grpcurl_gets_tool_calls_through_the_gateway(
    generation_gateway: EnvoyGateway, api_key: str
) -> None:
    grpcurl = str(Path(sys.executable).parent / "grpcurl")
    request = {
        "model": "models/toy_llm",
        "messages": [{"role": "ROLE_USER", "content": "6 * 7"}],
        "tools": [CALCULATOR],
        "toolChoice": {"mode": "TOOL_CHOICE_MODE_REQUIRED"},
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
    result = messages[-1]["result"]
    # grpcurl prints the proto field names.
    calls = result.get("tool_calls", result.get("toolCalls"))
    assert [(c["name"], c["arguments"]) for c in calls] == [("calculator", {"expression": "6 * 7"})]


# --- the real SmolLM2 under a grammar -------------------------------------------------------


@pytest.mark.llm
async def test_the_real_llm_answers_with_json_valid_against_the_schema(
    stub: Stub, api_key: str
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "sufficient": {"type": "boolean"},
            "confidence": {"enum": ["low", "medium", "high"]},
        },
        "required": ["sufficient", "confidence"],
        "additionalProperties": False,
    }
    request = structured(
        "Is the sky blue on a clear day?",
        schema=schema,
        model="models/llm",
        max_tokens=64,
        temperature=0.0,
    )
    responses = await generate(stub, request, api_key, deadline_s=180)
    result = responses[-1].result
    assert responses[-1].WhichOneof("event") == "result", responses[-1]
    value = json.loads(streamed_text(responses))
    assert set(value) == {"sufficient", "confidence"}
    assert (
        isinstance(value["sufficient"], bool)
        and value["confidence"] in schema["properties"]["confidence"]["enum"]
    )
    assert parsed(result) == value


@pytest.mark.llm
async def test_the_real_llm_calls_a_tool_with_its_required_arguments(
    stub: Stub, api_key: str
) -> None:
    weather = {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}},
            "required": ["city"],
            "additionalProperties": False,
        },
    }
    required = generation_pb2.ToolChoice(mode=generation_pb2.TOOL_CHOICE_MODE_REQUIRED)
    request = structured(
        "What is the weather in Paris?",
        tools=[weather],
        choice=required,
        model="models/llm",
        max_tokens=64,
        temperature=0.0,
    )
    responses = await generate(stub, request, api_key, deadline_s=180)
    assert responses[-1].WhichOneof("event") == "result", responses[-1]
    result = responses[-1].result
    assert result.finish_reason == generation_pb2.FINISH_REASON_TOOL_CALLS
    [call] = result.tool_calls
    assert call.name == "get_weather"
    arguments = json_format.MessageToDict(call.arguments)
    assert set(arguments) == {"city"} and 0 < len(arguments["city"]) <= 24
