"""What a report holds, already validated: a title, a summary, a table and an optional bar
chart over two of its columns."""

from __future__ import annotations

import math
from dataclasses import dataclass

Cell = str | int | float


@dataclass(frozen=True)
class BarChart:
    """Bars of one numeric column, labelled by another, in row order."""

    title: str
    label_column: str
    value_column: str
    bars: tuple[tuple[str, float], ...]
    # Rows of the table, of which `bars` are the first ones.
    total_rows: int


@dataclass(frozen=True)
class Report:
    title: str
    summary: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    chart: BarChart | None = None


def cell_text(value: Cell) -> str:
    """A cell as written in the CSV and shown in the PDF: numbers in their shortest exact
    form (`1450`, `0.85`), text as given."""
    if isinstance(value, bool):  # never valid, but never shown as 'True' either
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value)
    return value


def number_text(value: float) -> str:
    """A chart value, readable: thousands separated, at most four decimals."""
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e15 or abs(value) < 1e-4):
        return f"{value:.4g}"
    text = f"{value:,.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
