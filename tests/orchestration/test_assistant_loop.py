"""The assistant loop against the real mesh on toy_llm (deterministic): the real generation and
retrieval services over the sample conference entities, the real tool registry and the run's
real model caller, the loop's events collected by the test's sink. Proves the normal path (plan
→ tool_call → reflection → an answer whose citations are exactly the retrieved passages it
cites), an invalid plan repaired after the model is told what was wrong, repair then fallback,
invalid markers removed from the text and the streamed tokens alike, the deterministic "found
nothing" answer, a failing source named in the answer, and max_iterations respected."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from assistant_test_support import (
    COLD_CHAIN,
    COLD_CHAIN_SESSION,
    COLD_CHAIN_SPEAKER,
    CONFERENCE_TENANT,
    RecordingCaller,
    RecordingSink,
    conference_agent,
    ingest_conference,
    model_caller,
    retrieved,
)
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from orchestration_test_support import connect_backends, service_key

from callisto.api.generation.v1 import generation_pb2
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.services.common.tenancy import bind_tenant, reset_tenant
from callisto.services.orchestration import prompts
from callisto.services.orchestration.assistant import LoopOptions, agent_tools, answer_turn
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.budget import (
    PriceTable,
    RunModelCaller,
    TokenBudget,
    estimate_prompt_tokens,
)
from callisto.services.orchestration.citations import MARKER, source_key
from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.tools.builtin import build_registry
from callisto.services.orchestration.tools.registry import (
    ToolContext,
    ToolPolicy,
    ToolRegistry,
    ToolResult,
    ToolSpec,
)
from callisto.services.orchestration.turns import BudgetExhausted, TurnAnswer, TurnInput

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Long enough that toy_llm's answer (the words of the respond prompt, in turn) covers every word
# of it: every source marker, and the question's own words.
OPTIONS = LoopOptions(default_model="models/toy_llm", answer_max_tokens=1200)
ENTITY_TOOLS = ("search_entities", "search_documents")
NOTHING_THERE = "How tall is the Eiffel Tower in meters?"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def conference(orch_retrieval: ServiceProcess, tenant_key: Callable[[str], str]) -> str:
    """The tenant holding the sample conference programme."""
    await ingest_conference(orch_retrieval.address, tenant_key(CONFERENCE_TENANT))
    return CONFERENCE_TENANT


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backends(
    redis_server: RedisServer,
    persistence: ServiceProcess,
    orch_generation: ServiceProcess,
    orch_retrieval: ServiceProcess,
) -> AsyncIterator[Backends]:
    key = await service_key(redis_server.url)
    connected = await connect_backends(
        key,
        persistence=persistence.address,
        generation=orch_generation.address,
        retrieval=orch_retrieval.address,
    )
    yield connected
    await connected.close()


def registry(*extra: ToolSpec) -> ToolRegistry:
    """The built-in tools (and the test's), retrying in milliseconds."""
    fast = OrchestrationSettings(tool_retry_base_s=0.01)
    tools = build_registry(fast)
    for spec in extra:
        tools.register(spec)
    return tools


async def ask(
    backends: Backends,
    tenant: str,
    question: str,
    *,
    tools: ToolRegistry | None = None,
    agent_tools: tuple[str, ...] = ENTITY_TOOLS,
    max_iterations: int = 2,
) -> tuple[TurnAnswer, RecordingSink, RecordingCaller]:
    agent = conference_agent(agent_tools)
    turn = TurnInput(
        tenant=tenant,
        conversation="conversations/assistant-test",
        agent=agent,
        speaker="assistant-test",
        turn=1,
        user_text=question,
        max_iterations=max_iterations,
    )
    sink = RecordingSink()
    llm = RecordingCaller(model_caller(backends, tenant, agent.name))
    token = bind_tenant(tenant)
    try:
        answer = await answer_turn(turn, sink, llm, tools or registry(), backends, options=OPTIONS)
    finally:
        reset_tenant(token)
    return answer, sink, llm


def markers_in(text: str) -> set[int]:
    return {int(n) for m in MARKER.finditer(text) for n in re.split(r"\s*,\s*", m.group(1))}


def arguments(call: Any) -> dict[str, Any]:
    return json_format.MessageToDict(call.arguments)


async def test_a_question_is_planned_searched_judged_and_answered_with_its_cited_passages(
    backends: Backends, conference: str
) -> None:
    answer, sink, llm = await ask(backends, conference, COLD_CHAIN)

    kinds = sink.kinds()
    assert kinds[:3] == ["plan", "tool_call", "reflection"], kinds
    assert set(kinds[3:]) == {"citation", "token"}, kinds
    (plan,) = sink.plans()
    assert (plan.iteration, plan.source, plan.needs_knowledge) == (1, "model", True)
    assert [(c.tool, arguments(c)) for c in plan.calls] == [
        ("search_entities", {"query": COLD_CHAIN})
    ]
    (call,) = sink.tool_calls()
    assert call.tool == "search_entities" and not call.error and call.attempts == 1
    assert call.result.startswith("5 entities for") and call.duration_ms > 0
    assert arguments(call) == {"query": COLD_CHAIN}
    (reflection,) = sink.reflections()
    assert (reflection.iteration, reflection.sufficient) == (1, True)
    # Every term of the question is in a relevant passage: judged sufficient without a model
    # call. One generation understands and plans, then the answer.
    assert [c.request.response_format.name for c in llm.calls] == ["plan", ""]

    # Code lists the entities found with their stored facts and markers (the session's speaker
    # carries the marker of the speaker's own source); the model adds one sentence about the
    # best source, read alone, in fewer tokens.
    session, speaker = answer.citations[0], answer.citations[1]
    assert (session.document_id, speaker.document_id) == (COLD_CHAIN_SESSION, COLD_CHAIN_SPEAKER)
    assert answer.text.startswith(
        "Cold-Chain Visibility: From Data Loggers to Decisions [1] (session): 2026-05-13 "
        "10:15-11:00; Room D; speakers: Wiktor Zabłocki [2].\nWiktor Zabłocki [2] (speaker): "
        "Supply Chain Data Lead; Pellucid Pharma Logistics.\n"
    )
    (respond,) = llm.answers()
    assert respond.request.messages[-1].content.startswith(
        "Source:\n[1] Cold-Chain Visibility: From Data Loggers to Decisions (session): "
    )
    assert "[2]" not in respond.request.messages[-1].content
    assert respond.request.parameters.max_tokens == OPTIONS.brief_max_tokens

    # Every marker of the answer is a citation of a retrieved passage, and every citation is cited.
    cited = {c.marker for c in answer.citations}
    assert cited and markers_in(answer.text) == cited
    assert [c.marker for c in answer.citations] == sorted(cited)
    assert {source_key(c) for c in answer.citations} <= retrieved(answer)
    assert sorted(sink.cited(), key=lambda c: c.marker) == list(answer.citations)
    # The passage most about the question is source [1]: the cold-chain session.
    assert answer.citations[0].marker == 1
    assert answer.citations[0].document_id == COLD_CHAIN_SESSION
    # Each citation event comes before the first token that shows its marker.
    shown = ""
    for event in sink.events:
        if event.WhichOneof("kind") == "citation":
            assert f"[{event.citation.marker}" not in shown
        if event.WhichOneof("kind") == "token":
            shown += event.token.text
    assert sink.streamed() == answer.text
    assert answer.unavailable == [] and len(answer.tool_calls) == 1
    assert answer.model == "models/toy_llm"
    assert answer.usage.total_tokens == sum(c.result.usage.total_tokens for c in llm.calls)
    assert answer.generation_ms > 0


async def test_evidence_that_leaves_terms_of_the_question_uncovered_is_judged_by_the_model(
    backends: Backends, conference: str
) -> None:
    question = "Which cold-chain monitoring sessions serve vegan lunch?"
    answer, sink, llm = await ask(backends, conference, question)

    (reflect,) = llm.named("reflect")
    judged = reflect.request.messages[-1].content
    assert judged.startswith(f"Question: {question}") and "[1] Cold-Chain Visibility" in judged
    # toy_llm's verdict is the schema's first enum value: sufficient, so one round.
    assert [(r.iteration, r.sufficient) for r in sink.reflections()] == [(1, True)]
    assert len(sink.plans()) == 1 and answer.citations


async def test_markers_pointing_at_no_source_are_removed_from_the_text_and_the_tokens(
    backends: Backends, conference: str
) -> None:
    question = "Which cold-chain monitoring sessions [7] are there [0]? Name them [12, 1]."
    answer, sink, llm = await ask(backends, conference, question)

    (respond,) = llm.answers()
    raw = respond.result.text
    # toy_llm repeated the question's markers; the loop let none through that names nothing.
    assert "[7]" in raw and "[0]" in raw and "[12, 1]" in raw
    sources = len(sink.cited())
    assert 0 < sources < 7
    for text in (answer.text, sink.streamed()):
        assert "[7]" not in text and "[0]" not in text and "[12" not in text
        assert markers_in(text) == {c.marker for c in answer.citations}
    # A dropped marker takes its space along; a mixed one keeps its valid part.
    assert "are there?" in answer.text and "Name them [1]." in answer.text
    assert sink.streamed() == answer.text
    assert len(sink.of("token")) > 1  # it streamed, in many pieces


async def test_an_invalid_plan_is_repaired_once_then_replaced_by_a_retrieval_with_the_users_words(
    backends: Backends, conference: str
) -> None:
    # toy_llm picks the calculator for a question that names it and fills the expression with
    # the words, which the calculator's pattern refuses: the plan and its repair are invalid.
    question = "Please use calculator for cold-chain monitoring sessions"
    answer, sink, llm = await ask(
        backends, conference, question, agent_tools=("search_entities", "calculator")
    )

    plans = llm.named("plan")
    assert len(plans) == 2
    repair = plans[1].request.messages[-1].content
    assert repair.startswith(question)
    assert "That plan is invalid: calls[0] calculator: arguments.expression must match" in repair
    # The repair saw its own invalid plan as the assistant's previous answer.
    assert plans[1].request.messages[-2].content == plans[0].result.text.strip()
    (plan,) = sink.plans()
    assert plan.source == "fallback"
    assert [(c.tool, arguments(c)) for c in plan.calls] == [
        ("search_entities", {"query": question})
    ]
    (call,) = sink.tool_calls()
    assert call.tool == "search_entities" and not call.error
    assert answer.citations and {source_key(c) for c in answer.citations} <= retrieved(answer)


ECHO_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        # The plan must carry the words of the repair request: the first plan cannot.
        "words": {"type": "string", "maxLength": 120, "pattern": "That plan is invalid"}
    },
    "required": ["words"],
    "additionalProperties": False,
}


async def echo(arguments: dict[str, Any], _context: ToolContext) -> ToolResult:
    return ToolResult(data={"echo": arguments["words"]}, summary="echoed")


async def test_a_plan_that_passes_after_its_errors_are_explained_is_used_as_repaired(
    backends: Backends, conference: str
) -> None:
    spec = ToolSpec(
        name="echo_words", description="Echoes.", parameters=ECHO_PARAMETERS, handler=echo
    )
    answer, sink, llm = await ask(
        backends,
        conference,
        "Echo this",
        tools=registry(spec),
        agent_tools=("echo_words",),
    )

    (plan,) = sink.plans()
    assert plan.source == "repaired"
    (call,) = plan.calls
    assert call.tool == "echo_words"
    assert arguments(call)["words"].startswith("Echo this\n\nThat plan is invalid")
    (outcome,) = answer.tool_calls
    assert outcome.ok and outcome.result is not None
    assert len(llm.named("plan")) == 2


async def test_a_question_no_passage_bears_on_gets_the_found_nothing_answer(
    backends: Backends, conference: str
) -> None:
    answer, sink, llm = await ask(backends, conference, NOTHING_THERE)

    expected = prompts.nothing_found(["search_entities"], [])
    assert answer.text == expected == sink.streamed()
    assert "found nothing" in answer.text
    assert answer.citations == [] and sink.cited() == []
    # Search did return entities; none of them is about the question.
    assert all(o.ok and o.result and o.result.citations for o in answer.tool_calls)
    assert [r.sufficient for r in sink.reflections()] == [False, False]
    assert sink.reflections()[0].missing == "no relevant passages"
    # The answer is the loop's own: no model was asked to write it.
    assert llm.answers() == []


@pytest.mark.parametrize("max_iterations", [1, 3])
async def test_rounds_stop_at_max_iterations(
    backends: Backends, conference: str, max_iterations: int
) -> None:
    answer, sink, _llm = await ask(
        backends, conference, NOTHING_THERE, max_iterations=max_iterations
    )

    rounds = list(range(1, max_iterations + 1))
    assert [p.iteration for p in sink.plans()] == rounds
    assert [r.iteration for r in sink.reflections()] == rounds
    assert len(sink.tool_calls()) == max_iterations == len(answer.tool_calls)
    # Later rounds are told what the earlier ones found.
    assert "found nothing" in answer.text


async def test_an_unavailable_source_does_not_fail_the_turn_and_is_named_in_the_answer(
    redis_server: RedisServer,
    persistence: ServiceProcess,
    orch_generation: ServiceProcess,
    conference: str,
) -> None:
    # Retrieval pointed at a port where nothing listens: every search fails, retried.
    key = await service_key(redis_server.url)
    broken = await connect_backends(
        key,
        persistence=persistence.address,
        generation=orch_generation.address,
        retrieval=f"127.0.0.1:{free_port()}",
    )
    tools = ToolRegistry(ToolPolicy(retry_base_s=0.01))
    tools.register(registry().get("search_entities"))
    try:
        answer, sink, _llm = await ask(broken, conference, COLD_CHAIN, tools=tools)
    finally:
        await broken.close()

    (call,) = sink.tool_calls()
    assert call.tool == "search_entities" and call.attempts == 3
    assert call.error.startswith("search_entities unavailable after 3 attempts")
    assert answer.unavailable == ["search_entities"]
    (reflection,) = sink.reflections()  # no second round: the only source is down
    assert (reflection.sufficient, reflection.missing) == (False, "search_entities unavailable")
    assert "search_entities was unavailable" in answer.text
    assert answer.text == sink.streamed() and answer.citations == []


async def test_an_exhausted_budget_ends_the_turn_rather_than_being_answered_around(
    backends: Backends, conference: str
) -> None:
    agent = conference_agent(ENTITY_TOOLS)
    turn = TurnInput(
        tenant=conference,
        conversation="conversations/assistant-test",
        agent=agent,
        speaker="assistant-test",
        turn=1,
        user_text=COLD_CHAIN,
    )
    sink = RecordingSink()
    # Room for the first structured call (understand and plan), with a few tokens to answer in,
    # not for another: the turn stops at its repair.
    specs = agent_tools(agent, registry())
    first = generation_pb2.GenerateRequest(
        messages=prompts.route_messages(specs=specs, question=COLD_CHAIN, history=[]),
        response_format=generation_pb2.ResponseFormat(
            json_schema=json_format.ParseDict(
                prompts.route_schema(specs, max_calls=OPTIONS.max_calls), Struct()
            ),
            name="plan",
        ),
    )
    room = estimate_prompt_tokens(first) + 8
    budget = TokenBudget(room)
    llm = RunModelCaller(
        backends.generation, PriceTable.parse(""), budget, tenant=conference, agent=agent.name
    )
    token = bind_tenant(conference)
    try:
        with pytest.raises(BudgetExhausted):
            await answer_turn(turn, sink, llm, registry(), backends, options=OPTIONS)
    finally:
        reset_tenant(token)
    assert 0 < budget.spent <= room
    assert "token" not in sink.kinds()


async def test_a_tool_that_returns_data_feeds_the_answer_without_sources(
    backends: Backends, conference: str
) -> None:
    # toy_llm plans the tool the question names: current_time, whose arguments are optional.
    answer, sink, llm = await ask(
        backends,
        conference,
        "What is the current_time now?",
        agent_tools=("search_entities", "current_time"),
    )

    (plan,) = sink.plans()
    assert [(c.tool, arguments(c)) for c in plan.calls] == [("current_time", {})]
    (outcome,) = answer.tool_calls
    assert outcome.ok and outcome.result is not None
    (respond,) = llm.answers()
    assert "Tool results:\n- current_time {}:" in respond.request.messages[-1].content
    # toy_llm's answer repeats the prompt's words, the tool's result among them.
    assert outcome.result.data["iso"] in answer.text
    assert answer.citations == [] and "Sources:" not in answer.text


async def test_an_agent_without_tools_answers_at_once(backends: Backends, conference: str) -> None:
    answer, sink, llm = await ask(backends, conference, "Hello there", agent_tools=())

    assert set(sink.kinds()) == {"token"}
    assert [c.request.response_format.name for c in llm.calls] == [""]
    # toy_llm repeats the answering prompt's last message: the question alone, no sources.
    assert answer.text == sink.streamed() and "Question: Hello there" in answer.text
    assert answer.tool_calls == [] and answer.citations == []
