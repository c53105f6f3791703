"""`create_report`: a PDF (title, summary, a table, an optional bar chart) or a CSV of a table,
stored as an artifact of the conversation through persistence and downloadable with
DownloadArtifact.

The arguments' schema bounds every part; what a schema cannot say (each row as long as the
columns, the chart's columns named and its values numeric, no control characters, finite
numbers, the table's total text) is checked here, each problem named at its argument path as a
ToolInputError. Rendering runs in a worker thread, at most MAX_CONCURRENT_RENDERS at a time per
process. The store's `request_id` comes from the call's idempotency key (from the arguments
when the call has none), so a retried or resumed call stores its report once."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from callisto import errors as sdk
from callisto.services.orchestration.reports import csv_file, pdf
from callisto.services.orchestration.reports.document import BarChart, Cell, Report, cell_text
from callisto.services.orchestration.tools.errors import ToolInputError
from callisto.services.orchestration.tools.registry import ToolContext, ToolResult, ToolSpec
from callisto.services.orchestration.tools.validation import canonical_json

NAME = "create_report"
MAX_TITLE = 200
MAX_SUMMARY = 4000
MAX_COLUMNS = 20
MAX_COLUMN_NAME = 100
MAX_ROWS = 500
MAX_CELL = 500
MAX_FILENAME = 100
MAX_TABLE_CHARS = 100_000
"""Text of all cells together: bounds the render time whatever the row and cell counts."""
MAX_CHART_BARS = 30
"""Bars drawn (the first rows'); a longer table says so under its chart."""
MAX_MAGNITUDE = 1e300
MAX_CONCURRENT_RENDERS = 2
MAX_PROBLEMS = 5
"""Problems named in one error (the first ones)."""

_RENDERS = asyncio.Semaphore(MAX_CONCURRENT_RENDERS)
# C0 and C1 controls and DEL; text fields with lines (summary, cells) may hold tab, LF, CR.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_LINE_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_NUMERAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")

_CELL_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "string", "maxLength": MAX_CELL}, {"type": "number"}],
}
_COLUMN_NAME: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_COLUMN_NAME}

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "format": {
            "type": "string",
            "enum": ["pdf", "csv"],
            "description": "pdf: a document with the table and the chart; csv: the table only.",
        },
        "title": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TITLE,
            "description": "The report's title.",
        },
        "summary": {
            "type": "string",
            "maxLength": MAX_SUMMARY,
            "description": "A few sentences shown above the table (PDF only).",
        },
        "columns": {
            "type": "array",
            "items": _COLUMN_NAME,
            "minItems": 1,
            "maxItems": MAX_COLUMNS,
            "description": "The table's column names, each once.",
        },
        "rows": {
            "type": "array",
            "items": {"type": "array", "items": _CELL_SCHEMA, "maxItems": MAX_COLUMNS},
            "maxItems": MAX_ROWS,
            "description": "The table's rows: one string or number per column, in order.",
        },
        "chart": {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["bar"]},
                "label_column": {**_COLUMN_NAME, "description": "Column naming each bar."},
                "value_column": {**_COLUMN_NAME, "description": "Numeric column of the bars."},
                "title": {"type": "string", "maxLength": MAX_TITLE},
            },
            "required": ["type", "label_column", "value_column"],
            "additionalProperties": False,
            "description": "A bar chart of one numeric column (PDF only).",
        },
        "filename": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_FILENAME,
            "description": "File name offered on download; the format's extension is added.",
        },
    },
    "required": ["format", "title", "columns"],
    "additionalProperties": False,
}

_FORMATS: dict[str, str] = {"pdf": pdf.CONTENT_TYPE, "csv": csv_file.CONTENT_TYPE}


class _Problems:
    """What is wrong with the arguments, by path; raised together as one ToolInputError."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, description: str) -> None:
        self.items.append(f"arguments.{path} {description}")

    def raise_if_any(self) -> None:
        if self.items:
            shown = self.items[:MAX_PROBLEMS]
            more = len(self.items) - len(shown)
            text = "; ".join(shown) + (f"; and {more} more" if more else "")
            raise ToolInputError(f"invalid report: {text}")


def _text(
    problems: _Problems,
    value: Any,
    path: str,
    limit: int,
    *,
    required: bool = False,
    lines: bool = False,
) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        problems.add(path, "must be a string")
        return ""
    if required and not value.strip():
        problems.add(path, "must not be empty")
    elif len(value) > limit:
        problems.add(path, f"must be at most {limit} characters (it has {len(value)})")
    control = (_LINE_CONTROLS if lines else _CONTROLS).search(value)
    if control is not None:
        problems.add(path, f"must not contain control characters (U+{ord(control[0]):04X})")
    return value


def _cell(problems: _Problems, value: Any, path: str) -> Cell:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        problems.add(path, "must be a string or a number")
        return ""
    if isinstance(value, str):
        return _text(problems, value, path, MAX_CELL, lines=True)
    if isinstance(value, float) and not math.isfinite(value):
        problems.add(path, "must be a finite number")
        return 0
    if abs(value) > MAX_MAGNITUDE:
        problems.add(path, f"must be at most {MAX_MAGNITUDE:g} in magnitude")
        return 0
    return value


def _number(value: Cell) -> float | None:
    """A chart value: a number, or a string that is a plain numeral ("1450", "-0.5")."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    if _NUMERAL.fullmatch(text):
        number = float(text)
        if math.isfinite(number) and abs(number) <= MAX_MAGNITUDE:
            return number
    return None


def _chart(
    problems: _Problems, value: Any, columns: tuple[str, ...], rows: list[tuple[Cell, ...]]
) -> BarChart | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.add("chart", "must be an object")
        return None
    if value.get("type") != "bar":
        problems.add("chart.type", 'must be "bar"')
    title = _text(problems, value.get("title"), "chart.title", MAX_TITLE)
    indexes: list[int] = []
    for key in ("label_column", "value_column"):
        name = _text(problems, value.get(key), f"chart.{key}", MAX_COLUMN_NAME, required=True)
        if name and name not in columns:
            known = ", ".join(repr(c) for c in columns)
            problems.add(f"chart.{key}", f"must name one of the columns ({known})")
        indexes.append(columns.index(name) if name in columns else -1)
    label_index, value_index = indexes
    if label_index < 0 or value_index < 0 or len(problems.items):
        return None
    if not rows:
        problems.add("chart", "needs rows to draw")
        return None
    bars: list[tuple[str, float]] = []
    for index, row in enumerate(rows):
        number = _number(row[value_index])
        if number is None:
            problems.add(
                f"rows[{index}][{value_index}]",
                f"must be a number: it is in the chart's value column {columns[value_index]!r} "
                f"(got {str(row[value_index])[:40]!r})",
            )
        elif len(bars) < MAX_CHART_BARS:
            label = row[label_index]
            bars.append((cell_text(label), number))
    return BarChart(
        title=title,
        label_column=columns[label_index],
        value_column=columns[value_index],
        bars=tuple(bars),
        total_rows=len(rows),
    )


def _display_name(problems: _Problems, value: Any, title: str, format: str) -> str:
    if value is None:
        folded = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
        stem = re.sub(r"[^A-Za-z0-9]+", "-", folded).strip("-").lower()[:80] or "report"
    else:
        stem = _text(problems, value, "filename", MAX_FILENAME, required=True)
        if "/" in stem or "\\" in stem:
            problems.add("filename", "must be a file name, without '/' or '\\'")
        elif stem and not stem.isprintable():
            problems.add("filename", "must not contain invisible characters")
        stem = stem.strip()
        if stem.lower().endswith(f".{format}"):
            stem = stem[: -len(format) - 1]
        if stem and not stem.strip(". "):
            problems.add("filename", "must name a file (not only dots and spaces)")
    return f"{stem}.{format}"


def parse_report(arguments: dict[str, Any]) -> tuple[str, Report, str]:
    """(format, report, file name) of a call's arguments; ToolInputError naming every problem
    (the first MAX_PROBLEMS of them)."""
    problems = _Problems()
    format = arguments.get("format")
    if format not in _FORMATS:
        problems.add("format", 'must be "pdf" or "csv"')
        format = "pdf"
    title = _text(problems, arguments.get("title"), "title", MAX_TITLE, required=True)
    summary = _text(problems, arguments.get("summary"), "summary", MAX_SUMMARY, lines=True)
    raw_columns = arguments.get("columns")
    columns: list[str] = []
    if not isinstance(raw_columns, list) or not 1 <= len(raw_columns) <= MAX_COLUMNS:
        problems.add("columns", f"must be a list of 1-{MAX_COLUMNS} column names")
    else:
        for index, name in enumerate(raw_columns):
            column = _text(problems, name, f"columns[{index}]", MAX_COLUMN_NAME, required=True)
            if column in columns:
                problems.add(f"columns[{index}]", f"repeats the column name {column!r}")
            columns.append(column)
    raw_rows = arguments.get("rows", [])
    rows: list[tuple[Cell, ...]] = []
    total = 0
    if not isinstance(raw_rows, list) or len(raw_rows) > MAX_ROWS:
        problems.add("rows", f"must be a list of at most {MAX_ROWS} rows")
        raw_rows = []
    for index, row in enumerate(raw_rows):
        if not isinstance(row, list):
            problems.add(f"rows[{index}]", "must be a list of cells")
            continue
        if columns and len(row) != len(columns):
            problems.add(
                f"rows[{index}]",
                f"has {len(row)} cells; it must have one per column ({len(columns)})",
            )
            continue
        cells = tuple(_cell(problems, c, f"rows[{index}][{i}]") for i, c in enumerate(row))
        total += sum(len(c) for c in cells if isinstance(c, str))
        rows.append(cells)
        if len(problems.items) > MAX_PROBLEMS:
            break  # enough to say what is wrong; a hostile table is not read to its end
    if total > MAX_TABLE_CHARS:
        problems.add("rows", f"hold {total} characters of text; at most {MAX_TABLE_CHARS} allowed")
    chart = (
        None if problems.items else _chart(problems, arguments.get("chart"), tuple(columns), rows)
    )
    display_name = _display_name(problems, arguments.get("filename"), title, format)
    problems.raise_if_any()
    report = Report(
        title=title.strip(), summary=summary, columns=tuple(columns), rows=tuple(rows), chart=chart
    )
    return format, report, display_name


def _renderer(format: str, report: Report) -> Callable[[], bytes]:
    if format == "csv":
        return partial(csv_file.render_csv, report)
    return partial(pdf.render_pdf, report, datetime.now(UTC))


def request_id(context: ToolContext, arguments: dict[str, Any]) -> str:
    """The store's request id: the same for every attempt of one call (its idempotency key),
    or, for a call without one, for the same report asked again in the conversation."""
    basis = context.idempotency_key or "arguments:" + canonical_json(arguments)
    return f"{NAME}-{hashlib.sha256(basis.encode()).hexdigest()[:48]}"


async def create_report(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
    if not context.conversation:
        raise ToolInputError("this call belongs to no conversation: a report is stored with one")
    format, report, display_name = parse_report(arguments)
    async with _RENDERS:
        content = await asyncio.to_thread(_renderer(format, report))
    content_type = _FORMATS[format]
    try:
        artifact = await context.backends.persistence.create_artifact(
            context.conversation,
            display_name=display_name,
            content_type=content_type,
            content=content,
            data={
                "tool": NAME,
                "idempotency_key": context.idempotency_key,
                "format": format,
                "rows": len(report.rows),
            },
            request_id=request_id(context, arguments),
        )
    except sdk.InvalidArgument as error:
        too_big = error.field_violations.get("artifact.content")
        if too_big:
            raise ToolInputError(
                f"the {format.upper()} report came to {len(content)} bytes, more than an "
                f"artifact may hold ({too_big}); use fewer rows or shorter cells"
            ) from None
        raise ToolInputError(f"the report could not be stored: {error.message}") from None
    except sdk.NotFound:
        raise ToolInputError(f"{context.conversation} does not exist") from None
    except sdk.ResourceExhausted as error:
        if error.reason != "ARTIFACT_LIMIT":
            raise
        raise ToolInputError(f"the report could not be stored: {error.message}") from None
    kind = "PDF" if format == "pdf" else "CSV"
    rows = len(report.rows)
    return ToolResult(
        data={
            "artifact": artifact.name,
            "content_type": content_type,
            "size_bytes": artifact.size_bytes,
        },
        summary=(
            f"{kind} report {report.title!r} ({rows} row{'s' if rows != 1 else ''}, "
            f"{artifact.size_bytes} bytes) stored as {artifact.name}"
        ),
    )


SPEC = ToolSpec(
    name=NAME,
    description=(
        "Makes a report from a table and stores it with this conversation for download: a PDF "
        "(title, summary, the table, optionally a bar chart of one numeric column) or a CSV of "
        "the table. Returns the artifact's name."
    ),
    parameters=PARAMETERS,
    handler=create_report,
    timeout_s=30.0,
    side_effects=True,
)
