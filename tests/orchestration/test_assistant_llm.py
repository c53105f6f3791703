"""The assistant loop with the real SmolLM2 (llama.cpp under a JSON-Schema grammar) on the
conference question, over the sample programme, with the conference assistant of the samples:
the answer cites the cold-chain session and its speaker, and only passages it retrieved."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from assistant_test_support import (
    COLD_CHAIN,
    COLD_CHAIN_SESSION,
    COLD_CHAIN_SPEAKER,
    CONFERENCE_TENANT,
    RecordingCaller,
    RecordingSink,
    ingest_conference,
    model_caller,
    retrieved,
)
from orchestration_test_support import connect_backends, service_key

from callisto.mesh.processes import RedisServer, ServiceProcess
from callisto.mesh.samples import conference_agent
from callisto.services.common.tenancy import bind_tenant, reset_tenant
from callisto.services.orchestration.assistant import LoopOptions, answer_turn
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.citations import source_key
from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.tools.builtin import build_registry
from callisto.services.orchestration.turns import TurnInput

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.llm]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backends(
    redis_server: RedisServer,
    persistence: ServiceProcess,
    orch_generation: ServiceProcess,
    orch_retrieval: ServiceProcess,
    tenant_key: Callable[[str], str],
) -> AsyncIterator[Backends]:
    await ingest_conference(orch_retrieval.address, tenant_key(CONFERENCE_TENANT))
    key = await service_key(redis_server.url)
    connected = await connect_backends(
        key,
        persistence=persistence.address,
        generation=orch_generation.address,
        retrieval=orch_retrieval.address,
    )
    yield connected
    await connected.close()


async def test_the_real_model_answers_the_cold_chain_question_citing_its_session_and_speaker(
    backends: Backends,
) -> None:
    agent = conference_agent()
    agent.name = "agents/conference-assistant@r1"
    agent.model = "models/llm"
    turn = TurnInput(
        tenant=CONFERENCE_TENANT,
        conversation="conversations/assistant-llm-test",
        agent=agent,
        speaker="conference-assistant",
        turn=1,
        user_text=COLD_CHAIN,
    )
    sink = RecordingSink()
    llm = RecordingCaller(model_caller(backends, CONFERENCE_TENANT, agent.name))
    options = LoopOptions.from_settings(OrchestrationSettings())
    token = bind_tenant(CONFERENCE_TENANT)
    started = time.perf_counter()
    try:
        answer = await answer_turn(
            turn, sink, llm, build_registry(OrchestrationSettings()), backends, options=options
        )
    finally:
        reset_tenant(token)
    wall_s = time.perf_counter() - started
    print(f"\nreal-model turn: {wall_s:.1f} s, {len(llm.calls)} model calls")
    for call in llm.calls:
        name = call.request.response_format.name or "answer"
        usage = call.result.usage
        print(
            f"  {name}: {call.result.duration_ms:.0f} ms, {usage.prompt_tokens} + "
            f"{usage.completion_tokens} tokens, ttft {call.result.ttft_ms:.0f} ms: "
            f"{call.result.text[:300]!r}"
        )
    print(f"answer prompt: {llm.answers()[-1].request.messages[-1].content!r}")
    print(f"answer: {answer.text!r}")

    assert {c.result.model for c in llm.calls} == {"models/llm"}
    assert sink.plans() and sink.plans()[0].calls, sink.plans()
    assert any(o.ok and o.result and o.result.citations for o in answer.tool_calls)
    cited = {c.document_id for c in answer.citations}
    assert COLD_CHAIN_SESSION in cited and COLD_CHAIN_SPEAKER in cited, answer.citations
    # The session and its speaker are named as retrieved (the loop lists the entities found;
    # the model adds a sentence), not as the model would rename them.
    assert "Cold-Chain Visibility: From Data Loggers to Decisions [1]" in answer.text
    assert "speakers: Wiktor Zabłocki [" in answer.text
    assert {source_key(c) for c in answer.citations} <= retrieved(answer)
    assert sink.streamed() == answer.text
    assert answer.unavailable == []
