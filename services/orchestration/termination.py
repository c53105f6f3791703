"""When a simulation stops by itself: small termination rules, each tested alone, combined per
run (`MaxTurns(10) | StopKeywords(["deal"]) | ...`, as AutoGen composes its terminations).

Each rule looks at what the conversation has done after a completed turn and names the done
reason when it must end. The combined rule asks its parts in order, so the first listed wins
when several hold at once: keyword, sentiment, max_turns, timeout, budget.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

MAX_TURNS, KEYWORD, SENTIMENT, TIMEOUT = "max_turns", "keyword", "sentiment", "timeout"
HUMAN_ENDED, HUMAN_TIMEOUT = "human_ended", "human_timeout"
# Shared with the assistant's runs (run_state).
BUDGET = "budget"


@dataclass(frozen=True)
class Progress:
    """The conversation after a completed turn."""

    # Stop keywords the last turn contains.
    keyword_hits: Sequence[str] = ()
    # Sentiment score of the last turn (None when it has none).
    sentiment: float | None = None
    # Agent turns taken so far.
    agent_turns: int = 0
    # Wall time since the run began, seconds.
    elapsed_s: float = 0.0
    # Tokens the run spent so far.
    tokens: int = 0


class Termination(Protocol):
    def check(self, progress: Progress) -> str | None:
        """The done reason when the conversation must end now; None to go on."""
        ...


class AnyOf:
    """The first of its rules that says stop."""

    def __init__(self, *rules: Termination) -> None:
        self.rules: tuple[Termination, ...] = rules

    def check(self, progress: Progress) -> str | None:
        for rule in self.rules:
            reason = rule.check(progress)
            if reason is not None:
                return reason
        return None

    def __or__(self, other: Termination) -> AnyOf:
        return AnyOf(*self.rules, other)


class _Rule:
    def __or__(self, other: Termination) -> AnyOf:
        return AnyOf(self, other)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StopKeywords(_Rule):
    """Stops when a turn contains any of the keywords (whole words or phrases, any case)."""

    keywords: tuple[str, ...]

    def check(self, progress: Progress) -> str | None:
        return KEYWORD if self.keywords and progress.keyword_hits else None


@dataclass(frozen=True)
class SentimentBounds(_Rule):
    """Stops when a turn's sentiment falls below `minimum` or reaches `maximum`."""

    minimum: float | None = None
    maximum: float | None = None

    def check(self, progress: Progress) -> str | None:
        score = progress.sentiment
        if score is None:
            return None
        if self.minimum is not None and score < self.minimum:
            return SENTIMENT
        if self.maximum is not None and score >= self.maximum:
            return SENTIMENT
        return None


@dataclass(frozen=True)
class MaxTurns(_Rule):
    """Stops after `turns` agent turns."""

    turns: int

    def check(self, progress: Progress) -> str | None:
        return MAX_TURNS if progress.agent_turns >= self.turns else None


@dataclass(frozen=True)
class WallTimeout(_Rule):
    """Stops once `seconds` of wall time have passed (None: no limit)."""

    seconds: float | None

    def check(self, progress: Progress) -> str | None:
        if self.seconds is None:
            return None
        return TIMEOUT if progress.elapsed_s >= self.seconds else None


@dataclass(frozen=True)
class TokenLimit(_Rule):
    """Stops once the run spent `tokens` (0: no limit)."""

    tokens: int

    def check(self, progress: Progress) -> str | None:
        return BUDGET if self.tokens > 0 and progress.tokens >= self.tokens else None


def policy(
    *,
    max_turns: int,
    stop_keywords: Sequence[str],
    min_sentiment: float | None,
    max_sentiment: float | None,
    timeout_s: float | None,
    max_total_tokens: int,
) -> AnyOf:
    """A simulation's termination, in the order its reasons are checked."""
    return (
        StopKeywords(tuple(stop_keywords))
        | SentimentBounds(min_sentiment, max_sentiment)
        | MaxTurns(max_turns)
        | WallTimeout(timeout_s)
        | TokenLimit(max_total_tokens)
    )


@lru_cache(maxsize=1024)
def _keyword_pattern(keyword: str) -> re.Pattern[str]:
    words = [re.escape(word) for word in keyword.split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", re.IGNORECASE)


def keyword_hits(text: str, keywords: Sequence[str]) -> list[str]:
    """The keywords (as configured, in their order) that `text` contains as whole words or
    phrases, whatever the case; a phrase matches across any whitespace."""
    return [k for k in keywords if k.split() and _keyword_pattern(k).search(text)]
