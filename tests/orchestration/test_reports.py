"""The `create_report` tool against the real persistence service: a PDF whose text (read back
with pypdf) holds the title, the summary, every table cell and the chart's labels and values;
a CSV whose rows read back equal the input (formula-like cells neutralised); one stored
artifact per call whatever its retries; and hostile arguments (wrong row lengths, non-numeric
chart values, NULs, deep nesting, huge tables) answered with clear errors, nothing stored."""

from __future__ import annotations

import csv
import io
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from orchestration_test_support import connect_backends, service_key
from pypdf import PdfReader
from tools_test_support import context

import callisto
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.services.common.tenancy import bind_tenant, reset_tenant
from callisto.services.common.validation import Violations
from callisto.services.generation import structured
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.tools import report
from callisto.services.orchestration.tools.builtin import policy
from callisto.services.orchestration.tools.errors import ToolInputError
from callisto.services.orchestration.tools.registry import ToolContext, ToolOutcome, ToolRegistry

TENANT = "reports-acme"
RIVAL = "reports-rival"
OFFERS: dict[str, Any] = {
    "title": "Edge node offers, Q3",
    "summary": "Three suppliers quoted for 250 edge nodes; Corvane is the cheapest per node.",
    "columns": ["Supplier", "Nodes", "Price per node (EUR)", "Notes"],
    "rows": [
        ["Tessaline Systems", 250, 1450, "15% off above 200 nodes"],
        ["Corvane Data", 250, 1320.5, 'says "firm", valid, 30 days'],
        ["Marrowick Motor Works", 120, "990", "line one\nline two"],
    ],
}
CHART = {
    "type": "bar",
    "label_column": "Supplier",
    "value_column": "Price per node (EUR)",
    "title": "Price per node",
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backends(
    redis_server: RedisServer, persistence: ServiceProcess
) -> AsyncIterator[Backends]:
    """Orchestration's backends as its service principal; the tool uses persistence only."""
    backends = await connect_backends(
        await service_key(redis_server.url),
        persistence=persistence.address,
        generation=f"127.0.0.1:{free_port()}",
        retrieval=f"127.0.0.1:{free_port()}",
    )
    yield backends
    await backends.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tenant_client(
    persistence: ServiceProcess, tenant_key: Callable[[str], str]
) -> AsyncIterator[callisto.Client]:
    async with await callisto.Client.connect(
        persistence.address, api_key=tenant_key(TENANT)
    ) as client:
        yield client


@pytest.fixture
def registry() -> ToolRegistry:
    registry = ToolRegistry(policy(OrchestrationSettings()))
    registry.register(report.SPEC)
    return registry


async def new_conversation(client: callisto.Client) -> str:
    return (await client.persistence.create_conversation(title="reports test")).name


def call_context(backends: Backends, conversation: str, key: str = "", **kw: Any) -> ToolContext:
    tenant = kw.pop("tenant", TENANT)
    return replace(context(backends, tenant, conversation=conversation, **kw), idempotency_key=key)


async def run(registry: ToolRegistry, ctx: ToolContext, arguments: dict[str, Any]) -> ToolOutcome:
    return await registry.call(report.NAME, arguments, ctx, call_id="c1")


async def artifacts_of(client: callisto.Client, conversation: str) -> list[str]:
    return [a.name async for a in client.persistence.list_artifacts(conversation)]


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def squashed(text: str) -> str:
    """Text without whitespace: table cells wrap, and pypdf reads line breaks as spaces."""
    return "".join(text.split())


async def test_pdf_report_holds_its_title_summary_cells_and_chart(
    registry: ToolRegistry, backends: Backends, tenant_client: callisto.Client
) -> None:
    conversation = await new_conversation(tenant_client)
    key = f"run-1/step-report/call-{uuid.uuid4().hex[:6]}"
    outcome = await run(
        registry,
        call_context(backends, conversation, key),
        {**OFFERS, "format": "pdf", "chart": CHART},
    )
    assert outcome.ok, outcome.error
    assert outcome.result is not None
    data = outcome.result.data
    assert data["content_type"] == "application/pdf"
    assert data["artifact"].startswith(f"{conversation}/artifacts/")
    assert data["artifact"] in outcome.result.summary
    stored = await tenant_client.persistence.get_artifact(data["artifact"])
    assert stored.content.startswith(b"%PDF-")
    assert stored.size_bytes == data["size_bytes"] == len(stored.content)
    assert stored.display_name == "edge-node-offers-q3.pdf"
    assert dict(stored.metadata)["tool"] == "create_report"
    assert dict(stored.metadata)["idempotency_key"] == key
    text = squashed(pdf_text(stored.content))
    assert squashed(OFFERS["title"]) in text
    assert squashed(OFFERS["summary"]) in text
    for cell in [*OFFERS["columns"], *(c for row in OFFERS["rows"] for c in row)]:
        assert squashed(str(cell)) in text, cell
    # The chart: its title, each bar's label and its value as drawn.
    chart_part = text[text.index(squashed(CHART["title"])) :]
    for label, value in (
        ("Tessaline Systems", "1,450"),
        ("Corvane Data", "1,320.5"),
        ("Marrowick Motor Works", "990"),
    ):
        assert label.replace(" ", "") in chart_part
        assert value in chart_part


async def test_csv_report_rows_read_back_equal_the_input(
    registry: ToolRegistry, backends: Backends, tenant_client: callisto.Client
) -> None:
    conversation = await new_conversation(tenant_client)
    rows = [*OFFERS["rows"], ["Zürich AG 東京", 0.85, -12.5, ""]]
    outcome = await run(
        registry,
        call_context(backends, conversation, "csv-1"),
        {**OFFERS, "rows": rows, "format": "csv", "filename": "offers.csv"},
    )
    assert outcome.ok, outcome.error
    assert outcome.result is not None
    stored = await tenant_client.persistence.get_artifact(outcome.result.data["artifact"])
    assert (stored.content_type, stored.display_name) == ("text/csv", "offers.csv")
    assert b"\r\n" in stored.content and not stored.content.startswith(b"\xef\xbb\xbf")
    read = list(csv.reader(io.StringIO(stored.content.decode("utf-8"), newline="")))
    assert read[0] == OFFERS["columns"]
    assert read[1:] == [[str(cell) for cell in row] for row in rows]


async def test_csv_cells_a_spreadsheet_would_run_are_neutralised(
    registry: ToolRegistry, backends: Backends, tenant_client: callisto.Client
) -> None:
    conversation = await new_conversation(tenant_client)
    cells = ['=HYPERLINK("http://x")', "+1+2", "@SUM(A1)", "-3+cmd", "-5", "-0.5e3", "ok"]
    outcome = await run(
        registry,
        call_context(backends, conversation, "csv-2"),
        {"format": "csv", "title": "t", "columns": ["c"], "rows": [[c] for c in cells]},
    )
    assert outcome.ok, outcome.error
    assert outcome.result is not None
    stored = await tenant_client.persistence.get_artifact(outcome.result.data["artifact"])
    read = [row[0] for row in csv.reader(io.StringIO(stored.content.decode(), newline=""))]
    assert read[1:] == [
        '\'=HYPERLINK("http://x")',
        "'+1+2",
        "'@SUM(A1)",
        "'-3+cmd",
        "-5",
        "-0.5e3",
        "ok",
    ]


async def test_a_retried_or_resumed_call_stores_its_report_once(
    registry: ToolRegistry, backends: Backends, tenant_client: callisto.Client
) -> None:
    conversation = await new_conversation(tenant_client)
    arguments = {**OFFERS, "format": "pdf", "chart": CHART}
    first = await run(registry, call_context(backends, conversation, "run-7/step-2/0"), arguments)
    again = await run(registry, call_context(backends, conversation, "run-7/step-2/0"), arguments)
    assert first.result is not None and again.result is not None
    assert again.result.data["artifact"] == first.result.data["artifact"]
    assert await artifacts_of(tenant_client, conversation) == [first.result.data["artifact"]]
    other = await run(registry, call_context(backends, conversation, "run-7/step-3/0"), arguments)
    assert other.result is not None
    assert other.result.data["artifact"] != first.result.data["artifact"]
    # Without an idempotency key, the same report asked again in the conversation is one too.
    plain = [await run(registry, call_context(backends, conversation), arguments) for _ in "ab"]
    assert plain[0].result is not None and plain[1].result is not None
    assert plain[0].result.data["artifact"] == plain[1].result.data["artifact"]
    assert len(await artifacts_of(tenant_client, conversation)) == 3


def deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("short row", {"rows": [["a", 1]]}, "arguments.rows[0] has 2 cells"),
    ("long row", {"rows": [["a", 1, 2, "n", "extra"]]}, "one per column (4)"),
    (
        "text in the chart's value column",
        {"rows": [["a", 1, "lots", "n"]], "chart": CHART},
        "arguments.rows[0][2] must be a number",
    ),
    (
        "chart over an unknown column",
        {"chart": {**CHART, "value_column": "Margin"}},
        "arguments.chart.value_column must name one of the columns",
    ),
    ("NUL in the title", {"title": "Q3\x00offers"}, "arguments.title must not contain control"),
    ("NUL in a cell", {"rows": [["a\x00b", 1, 2, "n"]]}, "arguments.rows[0][0] must not contain"),
    ("escape in a column", {"columns": ["a\x1b[2J", "b"]}, "arguments.columns[0] must not contain"),
    ("repeated column", {"columns": ["a", "a"], "rows": []}, "repeats the column name 'a'"),
    ("deep nesting", {"rows": deep(12)}, "nested deeper than"),
    ("nested cell", {"rows": [[["a"], 1, 2, "n"]]}, "arguments.rows[0][0]"),
    ("huge table", {"rows": [["x" * 400, 1, 2, "n"]] * 100}, "bytes as JSON"),
    ("501 rows", {"columns": ["a"], "rows": [[1]] * 501}, "arguments.rows must have at most 500"),
    ("21 columns", {"columns": [f"c{i}" for i in range(21)], "rows": []}, "at most 20 items"),
    ("overlong cell", {"rows": [["x" * 501, 1, 2, "n"]]}, "arguments.rows[0][0] "),
    ("no columns", {"columns": []}, "arguments.columns must have at least 1"),
    ("bad format", {"format": "docx"}, "arguments.format must be one of"),
    ("boolean cell", {"rows": [[True, 1, 2, "n"]]}, "arguments.rows[0][0]"),
    ("path as filename", {"filename": "../../etc/cron.d/x"}, "arguments.filename must be a file"),
    ("dots as filename", {"filename": ".."}, "arguments.filename must name a file"),
    ("unknown argument", {"script": "rm -rf /"}, "arguments.script is not an argument"),
]


@pytest.mark.parametrize(
    ("arguments", "expected"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
async def test_hostile_arguments_get_clear_errors_and_store_nothing(
    registry: ToolRegistry,
    backends: Backends,
    tenant_client: callisto.Client,
    arguments: dict[str, Any],
    expected: str,
) -> None:
    conversation = await new_conversation(tenant_client)
    outcome = await run(
        registry,
        call_context(backends, conversation, "hostile"),
        {**OFFERS, "format": "pdf", **arguments},
    )
    assert outcome.result is None
    assert expected in outcome.error, outcome.error
    assert outcome.attempts <= 1  # the caller's fault: never retried
    assert await artifacts_of(tenant_client, conversation) == []


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"rows": [["a", float("nan"), 2, "n"]]}, "arguments.rows[0][1] must be a finite number"),
        ({"rows": [["a", 10**400, 2, "n"]]}, "arguments.rows[0][1] must be at most"),
        ({"columns": ["a"], "rows": deep(5000)}, "arguments.rows[0][0] must be a string or"),
        ({"rows": ["a,b,c,d"]}, "arguments.rows[0] must be a list of cells"),
        ({"columns": "abc"}, "arguments.columns must be a list"),
        ({"chart": "bar"}, "arguments.chart must be an object"),
        ({"rows": [["x" * 500, 1, 2, "y" * 500]] * 120}, "at most 100000 allowed"),
        ({"rows": [[1, 2, 3]] * 50}, "and 45 more"),
    ],
)
async def test_the_handler_refuses_what_the_schema_would_have_refused(
    backends: Backends, arguments: dict[str, Any], expected: str
) -> None:
    """Called directly (no registry, no schema), the handler still answers with a clear error."""
    ctx = call_context(backends, "conversations/never-used")
    with pytest.raises(ToolInputError) as error:
        await report.create_report({**OFFERS, "format": "pdf", **arguments}, ctx)
    assert expected in str(error.value)


async def test_the_largest_table_renders_within_the_tools_timeout(
    backends: Backends, tenant_client: callisto.Client
) -> None:
    conversation = await new_conversation(tenant_client)
    arguments = {
        "format": "pdf",
        "title": "Everything",
        "columns": [f"Column {i}" for i in range(20)],
        "rows": [[f"r{r}c{c}-xx" for c in range(19)] + [r] for r in range(500)],
        "chart": {"type": "bar", "label_column": "Column 0", "value_column": "Column 19"},
    }
    token = bind_tenant(TENANT)
    try:
        started = time.perf_counter()
        result = await report.create_report(arguments, call_context(backends, conversation, "big"))
        elapsed = time.perf_counter() - started
    finally:
        reset_tenant(token)
    assert elapsed < report.SPEC.timeout_s / 2
    stored = await tenant_client.persistence.get_artifact(result.data["artifact"])
    text = squashed(pdf_text(stored.content))
    assert "r499c18-xx" in text
    assert "thefirst30of500rows" in text


async def test_a_report_needs_a_conversation_of_the_callers_tenant(
    registry: ToolRegistry, backends: Backends, tenant_client: callisto.Client
) -> None:
    conversation = await new_conversation(tenant_client)
    arguments = {**OFFERS, "format": "csv"}
    outcome = await run(registry, call_context(backends, ""), arguments)
    assert "belongs to no conversation" in outcome.error
    outcome = await run(registry, call_context(backends, conversation, tenant=RIVAL), arguments)
    assert outcome.result is None
    assert f"{conversation} does not exist" in outcome.error
    assert await artifacts_of(tenant_client, conversation) == []


def test_the_tool_is_side_effecting_uncached_and_its_model_schema_valid() -> None:
    spec = report.SPEC
    assert spec.side_effects and spec.cache_ttl_s is None
    tool = spec.proto()
    assert tool.side_effects and not tool.HasField("cache_ttl")
    Draft202012Validator.check_schema(spec.parameters)
    Draft202012Validator.check_schema(spec.model_parameters())
    # What the generation service accepts as a tool schema (the grammar's subset).
    violations = Violations()
    structured.check_schema(spec.model_parameters(), "tools[0].parameters", violations)
    violations.raise_if_any()
    assert spec.model_parameters()["required"] == ["format", "title", "columns"]
