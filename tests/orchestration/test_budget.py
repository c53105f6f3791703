"""The run's model caller against the real generation service and toy_llm: max_tokens capped
by what the budget has left, BudgetExhausted before a call that cannot be paid for, usage and
cost accounted per model, the Prometheus counters, and a cancelled task stopping the
generation inside Triton. The price table and the budget's arithmetic are checked alone."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY
from runs_test_support import toy_event

import callisto
from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2
from callisto.mesh.processes import ServiceProcess
from callisto.services.orchestration.budget import (
    PriceTable,
    RunModelCaller,
    Spend,
    TokenBudget,
    estimate_prompt_tokens,
)
from callisto.services.orchestration.turns import BudgetExhausted

ASYNC = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def generation_client(
    orch_generation: ServiceProcess, api_key: str
) -> AsyncIterator[callisto.Client]:
    async with await callisto.Client.connect(orch_generation.address, api_key=api_key) as client:
        yield client


def _request(text: str, max_tokens: int = 0) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        model="models/toy_llm",
        messages=[generation_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=text)],
        parameters=generation_pb2.SamplingParameters(max_tokens=max_tokens),
    )


def _caller(
    client: callisto.Client, budget: TokenBudget, *, agent: str = "agents/budget", extras: str = ""
) -> RunModelCaller:
    return RunModelCaller(
        client.generation,
        PriceTable.parse(""),
        budget,
        tenant="acme",
        agent=agent,
        model_extras=extras,
    )


def _counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_price_table_defaults_and_overrides() -> None:
    usage = common_pb2.TokenUsage(prompt_tokens=1_000_000, completion_tokens=2_000_000)
    defaults = PriceTable.parse("")
    assert defaults.cost("models/toy_llm", usage) == pytest.approx(0.01 + 2 * 0.02)
    custom = PriceTable.parse(json.dumps({"toy_llm": {"prompt": 1.0, "completion": 3.0}}))
    assert custom.cost("models/toy_llm", usage) == pytest.approx(1.0 + 6.0)
    assert custom.cost("models/llm", usage) == defaults.cost("models/llm", usage)
    assert custom.cost("models/unpriced", usage) == 0.0
    with pytest.raises(ValueError):
        PriceTable.parse("[1, 2]")


def test_budget_reserves_for_calls_in_flight_and_refuses_what_it_cannot_pay() -> None:
    budget = TokenBudget(100, spent=40)
    assert budget.reserve(10, 0) == 50  # no max_tokens asked: all that is left
    with pytest.raises(BudgetExhausted):
        budget.reserve(5, 10)  # the first call holds the rest
    budget.settle(60, 30)
    assert budget.spent == 70 and budget.left() == 30
    assert budget.reserve(10, 5) == 5  # asked for less than is left
    unlimited = TokenBudget(0)
    assert unlimited.reserve(10**6, 7) == 7
    assert unlimited.reserve(10, 0) == 0  # generation's own default applies


def test_spend_round_trips_through_json() -> None:
    spend = Spend()
    spend.add("models/toy_llm", common_pb2.TokenUsage(prompt_tokens=3, completion_tokens=4), 0.5, 9)
    again = Spend.from_json(json.loads(json.dumps(spend.to_json())))
    assert again.usage() == spend.usage() and again.cost == 0.5 and again.total_tokens == 7
    again.merge(spend)
    assert again.by_model["models/toy_llm"][:2] == [6, 8]


@ASYNC
async def test_max_tokens_is_capped_by_what_the_budget_has_left(
    generation_client: callisto.Client,
) -> None:
    request = _request("alpha beta gamma delta", max_tokens=500)
    estimate = estimate_prompt_tokens(request)
    budget = TokenBudget(estimate + 6)
    caller = _caller(generation_client, budget)
    pieces: list[str] = []

    async def on_text(text: str) -> None:
        pieces.append(text)

    # Cut short by the budget, the generation ends the run's spending: BudgetExhausted, with
    # what it spent accounted and the budget not exceeded.
    with pytest.raises(BudgetExhausted):
        await caller.generate(request, on_text=on_text)
    spend = caller.take_spend()
    assert spend.completion_tokens == 6 and len("".join(pieces).split()) == 6
    assert budget.spent == spend.total_tokens <= budget.max_total_tokens
    # What is left cannot pay for the same prompt again.
    with pytest.raises(BudgetExhausted):
        await caller.generate(request)
    # Within its budget a call keeps what it asked for.
    roomy = _caller(generation_client, TokenBudget(estimate + 50))
    result = await roomy.generate(_request("alpha beta gamma delta", max_tokens=5))
    assert result.usage.completion_tokens == 5


@ASYNC
async def test_usage_and_cost_are_accounted_per_model_and_counted(
    generation_client: callisto.Client,
) -> None:
    agent = f"agents/{uuid.uuid4().hex[:8]}"
    caller = _caller(generation_client, TokenBudget(0), agent=agent)
    labels = {"tenant": "acme", "model": "models/toy_llm", "agent": agent}
    result = await caller.generate(_request("one two three", max_tokens=5))
    spend = caller.take_spend()
    assert spend.usage() == result.usage
    expected = PriceTable.parse("").cost("models/toy_llm", result.usage)
    assert spend.cost == pytest.approx(expected) and spend.cost > 0
    assert spend.by_model["models/toy_llm"][1] == 5
    assert caller.take_spend().total_tokens == 0  # taken
    completion = _counter("callisto_orchestration_model_tokens_total", **labels, kind="completion")
    assert completion == 5
    assert _counter("callisto_orchestration_model_cost_total", **labels) == pytest.approx(expected)
    assert _counter("callisto_orchestration_model_calls_total", **labels, outcome="ok") == 1
    with pytest.raises(BudgetExhausted):
        await _caller(generation_client, TokenBudget(1), agent=agent).generate(_request("x y"))
    assert _counter("callisto_orchestration_model_calls_total", **labels, outcome="budget") == 1


@ASYNC
async def test_cancelling_the_task_stops_the_generation_inside_triton(
    generation_client: callisto.Client, toy_events_path: Path
) -> None:
    tag = f"budget-cancel-{uuid.uuid4().hex[:8]}"
    extras = json.dumps({"delay_ms": 50, "tag": tag})
    caller = _caller(generation_client, TokenBudget(0), extras=extras)
    first = asyncio.Event()

    async def on_text(_text: str) -> None:
        first.set()

    task = asyncio.create_task(caller.generate(_request("slow words here", 400), on_text=on_text))
    await asyncio.wait_for(first.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    record = await toy_event(toy_events_path, tag)
    assert record["finish_reason"] == "cancelled"
    assert record["produced"] < 400
