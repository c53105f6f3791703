"""SuggestAgents against the real orchestration, generation and Triton processes.

On toy_llm (the mesh's default model) every answer is the schema's minimal instance, each
string the last user message (the request, or the retry message) cut to its bound, every side
"seller"; so:
- a scenario naming no companies gives an answer complete as it came: source "model";
- a sale ("X sells … to Y") gives agents of a company the scenario does not name, all sellers:
  the code repairs them to the scenario's parties, both sides: source "repaired";
- `{"fail_after": 0}` model extras make every generation fail: source "fallback";
- on a process whose answers may hold few tokens, a dense scenario's answer is cut off and the
  retry (its last message is the short retry message) fits: source "retried"; with five agents
  even the retry's answer is cut, and the template answers.
One `llm` test asks the real SmolLM2 for three agents.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import grpc
import httpx
import pytest
import pytest_asyncio

import callisto
from callisto import errors
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import ServiceProcess, free_port
from callisto.services.orchestration import suggest_prompts as prompts

if TYPE_CHECKING:
    from callisto.api.orchestration.v1.orchestration_pb2_grpc import (
        OrchestrationServiceAsyncStub as Stub,
    )

pytestmark = pytest.mark.asyncio(loop_scope="session")

SALE = "Tessaline Systems sells edge servers to Marrowick Motors"
PARTIES = {"Tessaline Systems", "Marrowick Motors"}
NO_COMPANIES = "a job interview for a data engineer"
EXTRAS = "x-callisto-model-extras"
FAIL = ((EXTRAS, json.dumps({"fail_after": 0})),)
# Tokens one answer may hold on the `short_answers` process: enough for two agents whose
# strings are the retry message, too few for two whose strings are a dense scenario.
SHORT_MAX_TOKENS = 200
DENSE = "a " * 400
TEMPLATE_ROLES = [
    "Account executive",
    "Procurement lead",
    "Engineering manager",
    "Solutions engineer",
    "Finance director",
]


async def failure(call: Awaitable[object]) -> errors.CallistoError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return errors.from_rpc_error(raised.value)


async def suggest(
    stub: Stub,
    scenario: str,
    count: int = 0,
    participate: bool = False,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> pb.SuggestAgentsResponse:
    request = pb.SuggestAgentsRequest(scenario=scenario, agent_count=count, participate=participate)
    reply: pb.SuggestAgentsResponse = await stub.SuggestAgents(request, metadata=metadata)
    return reply


def assert_usable(reply: pb.SuggestAgentsResponse, scenario: str, count: int) -> None:
    """What every answer holds, whatever the path: agents CreateAgent would take, unnamed,
    unique display names, prompts naming agent, role, company and scenario."""
    assert len(reply.agents) == count
    names = [a.display_name.casefold() for a in reply.agents]
    if reply.HasField("human"):
        names.append(reply.human.display_name.casefold())
    assert len(set(names)) == len(names)
    for agent in reply.agents:
        assert agent.name == ""
        assert agent.model == "models/toy_llm"
        assert agent.display_name and agent.role and agent.company
        for part in (agent.display_name, agent.role, agent.company, scenario):
            assert part in agent.system_prompt
        assert "search_documents" in agent.tools


def toy_text(scenario: str, count: int, limit: int, human: str = "") -> str:
    """What toy_llm answers in a string of `limit` characters for this request."""
    return prompts.request_text(scenario, count, human).strip()[:limit].strip()


async def test_an_answer_complete_as_it_came_is_the_models(orch_stub: Stub) -> None:
    reply = await suggest(orch_stub, NO_COMPANIES, 2)
    assert (reply.source, reply.attempts) == ("model", 1)
    assert_usable(reply, NO_COMPANIES, 2)
    company = " ".join(toy_text(NO_COMPANIES, 2, prompts.MAX_COMPANY).split())
    assert [a.company for a in reply.agents] == [company, company]
    # Same name twice from the model: the second gets its seat's template name.
    name = " ".join(toy_text(NO_COMPANIES, 2, prompts.MAX_NAME).split())
    assert [a.display_name for a in reply.agents] == [name, "Priya Shah"]
    assert not reply.HasField("human")


async def test_a_sale_is_repaired_to_the_scenarios_companies_on_both_sides(
    orch_stub: Stub,
) -> None:
    reply = await suggest(orch_stub, SALE, 3)
    assert (reply.source, reply.attempts) == ("repaired", 1)
    assert_usable(reply, SALE, 3)
    assert {a.company for a in reply.agents} == PARTIES
    # The buyer's seat is filled from the template; the model's sellers stay.
    assert [a.company for a in reply.agents] == [
        "Tessaline Systems",
        "Marrowick Motors",
        "Tessaline Systems",
    ]
    assert reply.agents[1].role == "Procurement lead"
    assert list(reply.agents[1].tools) == ["search_documents", "calculator"]


@pytest.mark.parametrize(("count", "expected"), [(0, 3), (2, 2), (3, 3), (4, 4), (5, 5)])
async def test_the_agent_count_is_honoured(orch_stub: Stub, count: int, expected: int) -> None:
    reply = await suggest(orch_stub, SALE, count)
    assert reply.source == "repaired"
    assert_usable(reply, SALE, expected)
    assert {a.company for a in reply.agents} == PARTIES


async def test_taking_part_adds_the_human_for_the_buying_company(orch_stub: Stub) -> None:
    reply = await suggest(orch_stub, SALE, 3, participate=True)
    assert_usable(reply, SALE, 3)
    human = reply.human
    assert (human.id, human.display_name, human.role, human.company) == (
        "user",
        "You (Marrowick Motors)",
        "Procurement lead",
        "Marrowick Motors",
    )
    assert "Tessaline Systems" in {a.company for a in reply.agents}
    assert all(a.display_name != human.display_name for a in reply.agents)


@pytest.mark.parametrize("metadata", [None, FAIL], ids=["repaired", "fallback"])
async def test_suggested_agents_run_a_simulation_as_inline_agents(
    orch_stub: Stub, metadata: tuple[tuple[str, str], ...] | None
) -> None:
    reply = await suggest(orch_stub, SALE, 2, metadata=metadata)
    start = pb.StartConversation(
        mode=pb.CONVERSATION_MODE_SIMULATION,
        prompt=SALE,
        inline_agents=reply.agents,
        termination=pb.TerminationPolicy(max_turns=2),
        simulation=pb.SimulationOptions(max_turn_tokens=16),
    )
    call = orch_stub.RunConversation(pb.RunConversationRequest(start=start))
    events = [response.event async for response in call]
    ended = [e.turn_ended for e in events if e.WhichOneof("kind") == "turn_ended"]
    assert events[-1].WhichOneof("kind") == "done", events[-1]
    assert events[-1].done.reason == "max_turns"
    assert len(ended) == 2


async def test_every_generation_failing_falls_back_to_the_role_template(
    orch_stub: Stub,
) -> None:
    reply = await suggest(orch_stub, SALE, 4, metadata=FAIL)
    assert (reply.source, reply.attempts) == ("fallback", 3)
    assert_usable(reply, SALE, 4)
    assert [a.role for a in reply.agents] == TEMPLATE_ROLES[:4]
    assert [a.company for a in reply.agents] == [
        "Tessaline Systems",
        "Marrowick Motors",
        "Marrowick Motors",
        "Tessaline Systems",
    ]


async def test_a_model_too_slow_for_the_callers_deadline_gives_the_template_in_time(
    orch_stub: Stub,
) -> None:
    # Every token 200 ms late: no answer of the model can finish inside the 6 s deadline.
    slow = ((EXTRAS, json.dumps({"delay_ms": 200})),)
    request = pb.SuggestAgentsRequest(scenario=SALE, agent_count=3)
    reply = await orch_stub.SuggestAgents(request, metadata=slow, timeout=6)
    assert (reply.source, reply.attempts) == ("fallback", 1)
    assert_usable(reply, SALE, 3)
    assert {a.company for a in reply.agents} == PARTIES


async def test_a_deadline_within_the_templates_margin_skips_the_model(orch_stub: Stub) -> None:
    request = pb.SuggestAgentsRequest(scenario=SALE, agent_count=2)
    reply = await orch_stub.SuggestAgents(request, timeout=1.5)
    assert (reply.source, reply.attempts) == ("fallback", 0)
    assert_usable(reply, SALE, 2)


async def test_the_fallback_without_named_companies_uses_placeholders(orch_stub: Stub) -> None:
    reply = await suggest(orch_stub, NO_COMPANIES, 2, participate=True, metadata=FAIL)
    assert reply.source == "fallback"
    assert_usable(reply, NO_COMPANIES, 2)
    assert [a.company for a in reply.agents] == ["Seller company", "Buyer company"]
    assert [a.role for a in reply.agents] == ["Account executive", "Engineering manager"]
    assert (reply.human.company, reply.human.display_name) == (
        "Buyer company",
        "You (Buyer company)",
    )


@pytest.mark.parametrize(
    ("request_fields", "field", "description"),
    [
        ({}, "scenario", "is required"),
        ({"scenario": " \n\t "}, "scenario", "is required"),
        ({"scenario": "x" * 2001}, "scenario", "at most 2000"),
        ({"scenario": "a\x00b"}, "scenario", "control characters"),
        ({"scenario": SALE, "agent_count": 1}, "agent_count", "2-5"),
        ({"scenario": SALE, "agent_count": 6}, "agent_count", "2-5"),
        ({"scenario": SALE, "agent_count": -1}, "agent_count", "2-5"),
    ],
)
async def test_bad_requests_are_invalid_argument_with_the_field(
    orch_stub: Stub, request_fields: dict[str, object], field: str, description: str
) -> None:
    error = await failure(orch_stub.SuggestAgents(pb.SuggestAgentsRequest(**request_fields)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert description in error.field_violations[field]


async def test_every_bad_field_is_reported_at_once(orch_stub: Stub) -> None:
    error = await failure(
        orch_stub.SuggestAgents(pb.SuggestAgentsRequest(scenario="", agent_count=9))
    )
    assert set(error.field_violations) == {"scenario", "agent_count"}


async def test_malformed_model_extras_are_the_callers_error(orch_stub: Stub) -> None:
    error = await failure(
        orch_stub.SuggestAgents(
            pb.SuggestAgentsRequest(scenario=SALE), metadata=((EXTRAS, "[1, 2"),)
        )
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert EXTRAS in error.field_violations


async def test_suggesting_stores_nothing(
    orchestration: ServiceProcess, tenant_key: Callable[[str], str]
) -> None:
    async with await callisto.Client.connect(
        orchestration.address, api_key=tenant_key("suggest-empty")
    ) as client:
        reply = await client.orchestration.suggest_agents(SALE, agent_count=3)
        assert len(reply.agents) == 3
        assert [a async for a in client.orchestration.list_agents()] == []


async def test_suggestion_over_http_through_the_gateway(
    mesh_gateway: EnvoyGateway, api_key: str
) -> None:
    async with httpx.AsyncClient(
        base_url=mesh_gateway.http_url,
        headers={"authorization": f"Bearer {api_key}"},
        timeout=httpx.Timeout(120, connect=5),
    ) as http:
        answer = await http.post(
            "/v1/agents:suggest", json={"scenario": SALE, "agentCount": 2, "participate": True}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        # toy_llm's companies hold "Tessaline Systems": normalised to it, both sellers, and
        # the human buys.
        assert (body["source"], body["attempts"]) == ("model", 1)
        assert [a["company"] for a in body["agents"]] == ["Tessaline Systems"] * 2
        assert body["human"]["company"] == "Marrowick Motors"
        bad = await http.post("/v1/agents:suggest", json={"scenario": SALE, "agentCount": 7})
        assert bad.status_code == 400


# --- retries, on a process whose answers hold few tokens (and that ignores model extras) --


@pytest.fixture(scope="module")
def short_answers(
    orchestration_service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    logs = tmp_path_factory.mktemp("orch-suggest-short")
    env = {
        **orchestration_service_env,
        "CALLISTO_SUGGEST_MAX_TOKENS": str(SHORT_MAX_TOKENS),
        # And model extras are not passed on here.
        "CALLISTO_ORCHESTRATION_FORWARD_MODEL_EXTRAS": "false",
    }
    service = ServiceProcess(
        "orchestration", free_port(), env=env, log_path=logs / "orchestration.log"
    )
    with service.serving(60):
        yield service


@pytest_asyncio.fixture(loop_scope="session")
async def short_stub(short_answers: ServiceProcess, api_key: str) -> AsyncIterator[Stub]:
    async with await callisto.Client.connect(short_answers.address, api_key=api_key) as client:
        yield client.stub(pb_grpc.OrchestrationServiceStub)


async def test_an_answer_cut_off_is_retried_with_what_was_wrong(short_stub: Stub) -> None:
    reply = await suggest(short_stub, DENSE, 2)
    assert (reply.source, reply.attempts) == ("retried", 2)
    assert_usable(reply, DENSE.strip(), 2)
    retry = prompts.retry_text("Your answer was cut off before it ended.", 2)
    # The second answer's strings are the retry message: the model was told what went wrong.
    assert reply.agents[0].display_name == retry[: prompts.MAX_NAME].strip()


async def test_answers_cut_off_on_every_attempt_end_in_the_template(short_stub: Stub) -> None:
    reply = await suggest(short_stub, DENSE, 5)
    assert (reply.source, reply.attempts) == ("fallback", 3)
    assert [a.role for a in reply.agents] == TEMPLATE_ROLES
    assert {a.company for a in reply.agents} == {"Seller company", "Buyer company"}


async def test_model_extras_reach_generation_only_where_the_setting_allows(
    short_stub: Stub,
) -> None:
    reply = await suggest(short_stub, NO_COMPANIES, 2, metadata=FAIL)
    assert (reply.source, reply.attempts) == ("model", 1)
    # Not even checked: a process that ignores extras does not refuse malformed ones.
    reply = await suggest(short_stub, NO_COMPANIES, 2, metadata=((EXTRAS, "[1, 2"),))
    assert reply.source == "model"


# --- the real model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_model(
    orchestration_service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    logs = tmp_path_factory.mktemp("orch-suggest-llm")
    env = {**orchestration_service_env, "CALLISTO_ORCHESTRATION_DEFAULT_MODEL": "models/llm"}
    service = ServiceProcess(
        "orchestration", free_port(), env=env, log_path=logs / "orchestration.log"
    )
    with service.serving(60):
        yield service


@pytest.mark.llm
async def test_the_real_model_suggests_three_agents_of_the_scenarios_companies(
    real_model: ServiceProcess, api_key: str
) -> None:
    async with await callisto.Client.connect(real_model.address, api_key=api_key) as client:
        reply = await client.orchestration.suggest_agents(SALE, agent_count=3, timeout=600)
    print(f"\nsource {reply.source}, {reply.attempts} attempt(s)")
    for agent in reply.agents:
        print(f"  {agent.display_name} | {agent.role} | {agent.company} | {list(agent.tools)}")
        print(f"    {agent.system_prompt!r}")
    assert reply.source in ("model", "repaired")
    assert reply.attempts == 1
    assert len(reply.agents) == 3
    assert {a.company for a in reply.agents} == PARTIES
    assert all(a.model == "models/llm" for a in reply.agents)
    assert len({a.display_name for a in reply.agents}) == 3
