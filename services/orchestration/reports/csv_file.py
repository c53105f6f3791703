"""A report as CSV (RFC 4180: comma-separated, CRLF line ends, fields quoted when they hold a
comma, quote or line break), UTF-8 without a byte-order mark: the header row, then the rows.

Text cells that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab
or a carriage return, and not a plain number such as `-12.5`) get a leading apostrophe, the
OWASP advice against CSV injection: report cells often come from retrieved documents or a
model, and a cell like `=HYPERLINK(...)` must not act when a person opens the file."""

from __future__ import annotations

import csv
import io
import re

from callisto.services.orchestration.reports.document import Cell, Report, cell_text

CONTENT_TYPE = "text/csv"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def safe_text(value: Cell) -> str:
    text = cell_text(value)
    if isinstance(value, str) and text.startswith(_FORMULA_START):
        if not _PLAIN_NUMBER.fullmatch(text):
            return "'" + text
    return text


def render_csv(report: Report) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow([safe_text(c) for c in report.columns])
    for row in report.rows:
        writer.writerow([safe_text(c) for c in row])
    return out.getvalue().encode("utf-8")
