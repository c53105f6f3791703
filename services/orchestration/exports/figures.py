"""The metrics of a document as rows of text, the same in every format."""

from __future__ import annotations

from callisto.services.orchestration.exports.document import Document


def signed(score: float) -> str:
    return f"{score:+.3f}"


def metric_rows(document: Document) -> list[tuple[str, str]]:
    m = document.metrics
    hits = ", ".join(f"{hit.keyword} (turn {hit.turn}, {hit.speaker})" for hit in m.keyword_hits)
    scored = m.turns > 0 and any(t.HasField("sentiment") for t in m.turn_metrics)
    rows = [
        ("Turns", str(m.turns)),
        ("Agent turns", str(m.agent_turns)),
        ("Human turns", str(m.human_turns)),
        ("Mean sentiment", signed(m.mean_sentiment) if scored else "n/a"),
        ("Lowest sentiment", signed(m.min_sentiment) if scored else "n/a"),
        ("Last sentiment", signed(m.last_sentiment) if scored else "n/a"),
        ("Sentiment slope per turn", signed(m.sentiment_slope) if m.sentiment_trend else "n/a"),
        ("Sentiment trend", m.sentiment_trend or "n/a"),
        ("Prompt tokens", str(m.usage.prompt_tokens)),
        ("Completion tokens", str(m.usage.completion_tokens)),
        ("Total tokens", str(m.usage.total_tokens)),
        ("Cost", f"{m.cost:.6f}"),
        ("Keyword hits", hits or "none"),
        ("Retrieval turns", str(m.retrieval_turns)),
        ("Passages retrieved", str(m.passages_retrieved)),
        ("Outcome", m.outcome or "n/a"),
        ("Generation time (ms)", f"{m.generation_ms:.1f}"),
        ("Duration (s)", f"{m.duration.ToNanoseconds() / 1e9:.3f}"),
    ]
    return rows


def turn_rows(document: Document) -> list[tuple[str, ...]]:
    """One row per rendered turn: number, speaker, human, sentiment, tokens, generation ms,
    passages."""
    shown = {turn.number for turn in document.turns}
    rows: list[tuple[str, ...]] = []
    for t in document.metrics.turn_metrics:
        if t.turn not in shown:
            continue
        sentiment = signed(t.sentiment.score) if t.HasField("sentiment") else "n/a"
        rows.append(
            (
                str(t.turn),
                t.speaker,
                "yes" if t.human else "no",
                sentiment,
                str(t.usage.total_tokens),
                f"{t.generation_ms:.1f}",
                str(t.passages),
            )
        )
    return rows
