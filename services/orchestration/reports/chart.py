"""A horizontal bar chart drawn with fpdf2's own shapes and text: one bar per label, the
label on the left, the value after the bar, a zero line (bars of negative values run left
of it, in another colour)."""

from __future__ import annotations

from collections.abc import Sequence

from fpdf import FPDF

from callisto.services.orchestration.exports.pdf import FONT, latin1
from callisto.services.orchestration.reports.document import number_text

BAR_HEIGHT = 5.0
BAR_GAP = 1.6
# Title, caption and spacing above and below the bars (mm).
_HEADER_HEIGHT = 16.0
_POSITIVE = (52, 101, 164)
_NEGATIVE = (200, 60, 50)


def fit(pdf: FPDF, text: str, width: float) -> str:
    """`text` (already Latin-1) cut with '...' to fit `width` in the current font."""
    if pdf.get_string_width(text) <= width:
        return text
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits with the ellipsis
        middle = (low + high + 1) // 2
        if pdf.get_string_width(text[:middle] + "...") <= width:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "..."


def draw_bar_chart(
    pdf: FPDF, title: str, bars: Sequence[tuple[str, float]], caption: str = ""
) -> None:
    """Draws the chart at the current position, on one page: a new one when it would not fit
    on this one, its bars thinner when they would not fit on any."""
    step = min(BAR_HEIGHT + BAR_GAP, (pdf.eph - _HEADER_HEIGHT) / max(len(bars), 1))
    bar_height = step * BAR_HEIGHT / (BAR_HEIGHT + BAR_GAP)
    if pdf.will_page_break(len(bars) * step + _HEADER_HEIGHT):
        pdf.add_page()
    # Nothing below may move to another page by itself (the bars are placed, not flowed).
    auto, margin = pdf.auto_page_break, pdf.b_margin
    pdf.set_auto_page_break(False)
    try:
        _draw(pdf, title, bars, caption, step, bar_height)
    finally:
        pdf.set_auto_page_break(auto, margin)


def _draw(
    pdf: FPDF,
    title: str,
    bars: Sequence[tuple[str, float]],
    caption: str,
    step: float,
    bar_height: float,
) -> None:
    left, width = pdf.l_margin, pdf.epw
    pdf.set_font(FONT, style="B", size=11)
    pdf.cell(width, 6, fit(pdf, latin1(title), width), new_x="LMARGIN", new_y="NEXT")
    if caption:
        pdf.set_font(FONT, style="I", size=8)
        pdf.cell(width, 4.5, fit(pdf, latin1(caption), width), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, size=8 if bar_height >= BAR_HEIGHT * 0.8 else 6)
    values = [value for _, value in bars]
    shown = [number_text(value) for value in values]
    label_width = min(60.0, width * 0.32)
    value_width = min(30.0, max(pdf.get_string_width(text) for text in shown) + 3)
    low, high = min(0.0, *values), max(0.0, *values)
    # Negative bars end with their value on the left: room for it there too.
    room = value_width + 1 if low < 0 else 0.0
    plot_left = left + label_width + 2 + room
    plot_width = width - label_width - value_width - 4 - room
    span = (high - low) or 1.0

    def x_of(value: float) -> float:
        return plot_left + plot_width * (value - low) / span

    zero = x_of(0.0)
    top = pdf.get_y() + 1
    inset = bar_height * 0.12
    for index, ((label, value), text) in enumerate(zip(bars, shown, strict=True)):
        y = top + index * step
        pdf.set_xy(left, y)
        pdf.cell(label_width, bar_height, fit(pdf, latin1(label), label_width), align="R")
        end = x_of(value)
        pdf.set_fill_color(*(_POSITIVE if value >= 0 else _NEGATIVE))
        if abs(end - zero) >= 0.05:
            pdf.rect(min(zero, end), y + inset, abs(end - zero), bar_height - 2 * inset, style="F")
        # The value just past the bar's end (left of it for a negative bar).
        if value >= 0:
            pdf.set_xy(max(end, zero) + 1, y)
            pdf.cell(value_width, bar_height, text)
        else:
            pdf.set_xy(min(end, zero) - value_width - 1, y)
            pdf.cell(value_width, bar_height, text, align="R")
    bottom = top + len(bars) * step
    pdf.set_draw_color(120)
    pdf.set_line_width(0.2)
    pdf.line(zero, top - 0.5, zero, bottom)
    pdf.set_draw_color(0)
    pdf.set_fill_color(255)
    pdf.set_y(bottom + 4)
