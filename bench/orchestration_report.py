"""Figures and the results table the orchestration and simulation benchmarks print.

Percentiles, `p50 … / p99 … ms` cells, ratios against the same run's baseline, met/missed
verdicts, and progress lines on stderr (the table goes to stdout).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def p50(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p99(values: Sequence[float]) -> float:
    return percentile(values, 99) if values else float("nan")


def ms(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {p50(values):.1f} / p99 {p99(values):.1f} ms"


Row = tuple[str, str, str, str, str, str]


def table(title: str, rows: Sequence[Row]) -> str:
    header: Row = ("what", "baseline (same run)", "measured", "ratio", "target", "met")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def ratio(value: float, base: float) -> str:
    # NaN (no samples) compares false both ways.
    return f"{value / base:.2f}x" if base > 0 and value == value else "n/a"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Results:
    """The table's rows and the notes printed under it."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, *cells: str) -> None:
        """Adds a row (what, baseline, measured, ratio, target, met) and shows it at once."""
        assert len(cells) == 6
        self.rows.append((cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]))
        say("  " + " | ".join(cells))
