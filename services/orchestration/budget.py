"""What a run spends on models: the `ModelCaller` of a run, its token budget, the price table
and the Prometheus counters of tokens and cost by tenant, model and agent."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from redis.exceptions import RedisError

from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2
from callisto.errors import CallistoError
from callisto.generation import GenerationClient
from callisto.services.orchestration.tenant_budget import TenantBudgets
from callisto.services.orchestration.turns import BudgetExhausted, OnText

_log = logging.getLogger(__name__)

# Metadata key generation reads toy-model extras from (honoured only where it enables them).
MODEL_EXTRAS_METADATA = "x-callisto-model-extras"

# USD per 1M tokens (prompt, completion) of the mesh's models when the setting names none.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "models/llm": (0.10, 0.40),
    "models/toy_llm": (0.01, 0.02),
}
# What generation gives a request that leaves max_tokens at 0 (its default setting): a budget
# caps that too.
DEFAULT_MAX_TOKENS = 256
# Tokens a chat template adds around each message, on top of its text.
_TEMPLATE_TOKENS_PER_MESSAGE = 8
# Bytes per token assumed when estimating a prompt: fewer than BPE tokenizers average, so the
# estimate stays above the count.
_BYTES_PER_TOKEN = 3

MODEL_TOKENS = Counter(
    "callisto_orchestration_model_tokens_total",
    "Tokens runs spent in generation, by tenant, model, agent and kind (prompt, completion).",
    ["tenant", "model", "agent", "kind"],
)
MODEL_COST = Counter(
    "callisto_orchestration_model_cost_total",
    "Cost of the generations of runs in the price table's currency, by tenant, model and agent.",
    ["tenant", "model", "agent"],
)
MODEL_CALLS = Counter(
    "callisto_orchestration_model_calls_total",
    "Generations runs made, by tenant, model, agent and outcome (ok, cancelled, error, budget).",
    ["tenant", "model", "agent", "outcome"],
)


class PriceTable:
    """Prices per 1M prompt and completion tokens, by `models/{model}`."""

    def __init__(self, prices: dict[str, tuple[float, float]]) -> None:
        self._prices = prices

    @classmethod
    def parse(cls, raw: str) -> PriceTable:
        """From the setting's JSON: `{"models/llm": {"prompt": 0.1, "completion": 0.4}}`;
        models it does not name keep their defaults."""
        prices = dict(DEFAULT_PRICES)
        if raw.strip():
            loaded = json.loads(raw)
            if not isinstance(loaded, dict):
                raise ValueError("the price table must be a JSON object keyed by model")
            for model, price in loaded.items():
                if not isinstance(price, dict):
                    raise ValueError(f"the price of {model} must be an object")
                prices[_model_name(model)] = (
                    float(price.get("prompt", 0.0)),
                    float(price.get("completion", 0.0)),
                )
        return cls(prices)

    def cost(self, model: str, usage: common_pb2.TokenUsage) -> float:
        prompt, completion = self._prices.get(_model_name(model), (0.0, 0.0))
        return float(usage.prompt_tokens * prompt + usage.completion_tokens * completion) / 1e6


def _model_name(model: str) -> str:
    return model if not model or "/" in model else f"models/{model}"


@dataclass
class Spend:
    """Tokens and cost, in total and per model; JSON-able for the run's checkpoint."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    generation_ms: float = 0.0
    by_model: dict[str, list[float]] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def usage(self) -> common_pb2.TokenUsage:
        return common_pb2.TokenUsage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.total_tokens,
        )

    def add(self, model: str, usage: common_pb2.TokenUsage, cost: float, ms: float) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cost += cost
        self.generation_ms += ms
        row = self.by_model.setdefault(model, [0, 0, 0.0])
        row[0] += usage.prompt_tokens
        row[1] += usage.completion_tokens
        row[2] += cost

    def merge(self, other: Spend) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost += other.cost
        self.generation_ms += other.generation_ms
        for model, (prompt, completion, cost) in other.by_model.items():
            row = self.by_model.setdefault(model, [0, 0, 0.0])
            row[0] += prompt
            row[1] += completion
            row[2] += cost

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": self.cost,
            "generation_ms": self.generation_ms,
            "by_model": self.by_model,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Spend:
        return cls(
            prompt_tokens=int(data.get("prompt_tokens", 0)),
            completion_tokens=int(data.get("completion_tokens", 0)),
            cost=float(data.get("cost", 0.0)),
            generation_ms=float(data.get("generation_ms", 0.0)),
            by_model={k: list(v) for k, v in dict(data.get("by_model", {})).items()},
        )


class TokenBudget:
    """The run's `max_total_tokens` (0: no limit) against what it spent and what calls in
    flight may still spend, so concurrent calls cannot overshoot it together."""

    def __init__(self, max_total_tokens: int, spent: int = 0) -> None:
        self.max_total_tokens = max_total_tokens
        self.spent = spent
        self._reserved = 0

    @property
    def limited(self) -> bool:
        return self.max_total_tokens > 0

    def left(self) -> int:
        return self.max_total_tokens - self.spent - self._reserved

    def reserve(self, prompt_estimate: int, max_tokens: int) -> int:
        """Reserves room for one call; returns the `max_tokens` to send (0: unlimited)."""
        if not self.limited:
            return max_tokens
        room = self.left() - prompt_estimate
        if room < 1:
            raise BudgetExhausted(
                f"the run's budget of {self.max_total_tokens} tokens has {self.left()} left, "
                f"less than a call needs"
            )
        capped = min(max_tokens, room) if max_tokens > 0 else room
        self._reserved += prompt_estimate + capped
        return capped

    def settle(self, reserved: int, spent: int) -> None:
        if self.limited:
            self._reserved -= reserved
        self.spent += spent


def estimate_prompt_tokens(request: generation_pb2.GenerateRequest) -> int:
    """An upper estimate of the prompt's tokens: messages, plus the schema or tools generation
    explains in the system message."""

    def tokens(text: str) -> int:
        return max(len(text.split()), math.ceil(len(text.encode()) / _BYTES_PER_TOKEN))

    total = sum(tokens(m.content) + _TEMPLATE_TOKENS_PER_MESSAGE for m in request.messages)
    if request.HasField("response_format") or len(request.tools):
        # The instruction generation adds holds the schema (or the tool envelope) and prose.
        extra = request.response_format.SerializeToString() + b"".join(
            t.SerializeToString() for t in request.tools
        )
        total += 2 * math.ceil(len(extra) / _BYTES_PER_TOKEN) + 64
        total += _TEMPLATE_TOKENS_PER_MESSAGE
    return total


class RunModelCaller:
    """The `ModelCaller` of one run: every generation of its turns goes through it."""

    def __init__(
        self,
        generation: GenerationClient,
        prices: PriceTable,
        budget: TokenBudget,
        *,
        tenant: str,
        agent: str,
        model_extras: str = "",
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        daily: TenantBudgets | None = None,
    ) -> None:
        self._generation = generation
        self._daily = daily
        self._prices = prices
        self.budget = budget
        self._tenant = tenant
        self._agent = agent
        self._metadata = ((MODEL_EXTRAS_METADATA, model_extras),) if model_extras else None
        self._default_max_tokens = default_max_tokens
        # What this caller spent since it was made (or since `take_spend`).
        self.spend = Spend()

    def take_spend(self) -> Spend:
        """What was spent since the last call (a turn's spend), starting afresh."""
        spend, self.spend = self.spend, Spend()
        return spend

    async def generate(
        self,
        request: generation_pb2.GenerateRequest,
        *,
        on_text: OnText | None = None,
    ) -> generation_pb2.GenerationResult:
        model = _model_name(request.model)
        labels = (self._tenant, model or "default", self._agent)
        estimate = estimate_prompt_tokens(request)
        wanted = request.parameters.max_tokens
        if self.budget.limited and wanted <= 0:
            wanted = self._default_max_tokens
        try:
            max_tokens = self.budget.reserve(estimate, wanted)
        except BudgetExhausted:
            MODEL_CALLS.labels(*labels, "budget").inc()
            raise
        reserved = estimate + max_tokens if self.budget.limited else 0
        # The budget cut this call short of what it asked: running out of tokens is the
        # budget's end, not the turn's failure.
        constrained = self.budget.limited and max_tokens < wanted
        sent = generation_pb2.GenerateRequest()
        sent.CopyFrom(request)
        sent.parameters.max_tokens = max_tokens
        stream = self._generation.generate(
            list(sent.messages), model=model, parameters=sent.parameters, metadata=self._metadata
        )
        # The SDK builds its request from the common fields; send ours whole (schema, tools).
        sent.model = stream.request.model
        stream.request = sent
        spent = 0
        try:
            async for item in stream:
                if isinstance(item, generation_pb2.TokenDelta):
                    if on_text is not None and item.text:
                        await on_text(item.text)
            result = stream.result
            if result is None:
                raise CallistoError("the generation ended without a result")
        except asyncio.CancelledError:
            # Cancelling the call makes generation stop the request inside Triton.
            stream.cancel()
            MODEL_CALLS.labels(*labels, "cancelled").inc()
            raise
        except CallistoError as error:
            MODEL_CALLS.labels(*labels, "error").inc()
            if constrained:
                # What it spent is unknown: count all it may have, so the budget holds.
                spent = reserved
                raise BudgetExhausted(
                    f"the run's budget ran out during a generation: {error.message}"
                ) from error
            raise
        except BaseException:
            MODEL_CALLS.labels(*labels, "error").inc()
            raise
        finally:
            if stream.result is not None:
                spent = stream.result.usage.total_tokens
            self.budget.settle(reserved, spent)
        used = result.model or model
        cost = self._prices.cost(used, result.usage)
        self.spend.add(used, result.usage, cost, result.duration_ms)
        used_labels = (self._tenant, used, self._agent)
        MODEL_TOKENS.labels(*used_labels, "prompt").inc(result.usage.prompt_tokens)
        MODEL_TOKENS.labels(*used_labels, "completion").inc(result.usage.completion_tokens)
        MODEL_COST.labels(*used_labels).inc(cost)
        MODEL_CALLS.labels(*used_labels, "ok").inc()
        await self._charge(result.usage.total_tokens)
        if constrained and result.finish_reason == generation_pb2.FINISH_REASON_LENGTH:
            raise BudgetExhausted(
                f"the run's budget of {self.budget.max_total_tokens} tokens ran out mid-answer"
            )
        return result

    async def _charge(self, tokens: int) -> None:
        """The tenant's daily count; a Redis hiccup costs the count, never the answer."""
        if self._daily is None:
            return
        try:
            await self._daily.charge(self._tenant, tokens)
        except (OSError, ConnectionError, RedisError) as error:
            _log.warning("could not charge the tenant's daily budget: %s", error)
