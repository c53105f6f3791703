"""A report as PDF (fpdf2): the title, the summary, the table with its header row repeated on
every page, and the bar chart when there is one.

Text goes through `exports.pdf.latin1` (the standard Helvetica font shows Latin-1 only; other
characters print as '?', which the document then says). Tables of more than six columns are
laid out on landscape pages. A cell longer than its column shows MAX_CELL_LINES lines at most,
cut with '...' (the CSV format keeps every cell whole), so no row outgrows a page."""

from __future__ import annotations

from datetime import datetime

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import FontFace

from callisto.services.orchestration.exports.pdf import FONT, latin1
from callisto.services.orchestration.reports.chart import draw_bar_chart, fit
from callisto.services.orchestration.reports.document import Report, cell_text

CONTENT_TYPE = "application/pdf"
MAX_CELL_LINES = 8
LINE_HEIGHT = 4.2
_LANDSCAPE_COLUMNS = 6
# Wrapping breaks lines at spaces, so a cut cell keeps some room for the words that moved.
_WRAP_ALLOWANCE = 0.8
_PADDING_X = 1.0


class _Pdf(FPDF):
    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(FONT, size=8)
        self.set_text_color(120)
        self.cell(0, 6, f"Page {self.page_no()}/{{nb}}", align="C")
        self.set_text_color(0)


def render_pdf(report: Report, created: datetime) -> bytes:
    wide = len(report.columns) > _LANDSCAPE_COLUMNS
    pdf = _Pdf(orientation="L" if wide else "P", format="A4")
    pdf.set_title(latin1(report.title))
    pdf.set_creator("Callisto")
    pdf.set_creation_date(created)
    pdf.set_auto_page_break(True, margin=16)
    pdf.set_margins(16, 16, 16)
    pdf.add_page()
    pdf.set_font(FONT, style="B", size=18)
    pdf.multi_cell(0, 9, latin1(report.title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    texts = [report.title, report.summary, *report.columns]
    texts += [c for row in report.rows for c in row if isinstance(c, str)]
    if any(latin1(t).count("?") > t.count("?") for t in texts):
        pdf.set_font(FONT, style="I", size=8)
        pdf.multi_cell(
            0,
            4,
            "Characters the PDF font cannot show are printed as '?'; the CSV format keeps them.",
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
        pdf.ln(1)
    if report.summary:
        pdf.set_font(FONT, size=10)
        pdf.multi_cell(0, 5, latin1(report.summary), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(3)
    _table(pdf, report)
    if report.chart is not None:
        chart = report.chart
        what = f"{chart.value_column} by {chart.label_column}"
        notes = [what] if chart.title else []
        if len(chart.bars) < chart.total_rows:
            notes.append(f"the first {len(chart.bars)} of {chart.total_rows} rows")
        pdf.ln(3)
        draw_bar_chart(pdf, chart.title or what, chart.bars, "; ".join(notes))
    return bytes(pdf.output())


def _table(pdf: FPDF, report: Report) -> None:
    size = 9 if len(report.columns) <= _LANDSCAPE_COLUMNS else 7
    pdf.set_font(FONT, size=size)
    width = pdf.epw / len(report.columns)
    # What one cell may show: MAX_CELL_LINES lines of its column, less the cell padding.
    room = (width - 2 * _PADDING_X) * MAX_CELL_LINES * _WRAP_ALLOWANCE
    with pdf.table(
        col_widths=width,
        width=pdf.epw,
        align="LEFT",
        first_row_as_headings=True,
        line_height=LINE_HEIGHT * size / 9,
        text_align="LEFT",
        padding=(0.6, _PADDING_X),
        headings_style=FontFace(emphasis="BOLD", fill_color=(225, 230, 238)),
    ) as table:
        for row in (report.columns, *report.rows):
            cells = table.row()
            for value in row:
                # One paragraph per cell: a cell of many short lines must not outgrow a page.
                text = latin1(cell_text(value)).replace("\n", " ")
                cells.cell(fit(pdf, text, room))
    pdf.ln(2)
