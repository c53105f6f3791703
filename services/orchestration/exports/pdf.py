"""A conversation document as PDF (fpdf2): the facts, the scenario, the participants with their
prompts, every turn, the metrics table and a sentiment-per-turn chart drawn with fpdf2's own
lines and shapes.

The PDF uses the standard Helvetica font (no font file to ship), which encodes Latin-1 only:
typographic punctuation is mapped to its ASCII look-alike, accented letters outside Latin-1 lose
their accent, and any other character (CJK, emoji, right-to-left scripts) is printed as `?`,
which the document says. The Markdown and JSON downloads keep every character."""

from __future__ import annotations

import itertools
import re
import unicodedata
from datetime import UTC, datetime

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from callisto.services.orchestration.exports.document import Document, Turn
from callisto.services.orchestration.exports.figures import metric_rows, signed, turn_rows

CONTENT_TYPE = "application/pdf"
FONT = "Helvetica"
MAX_CHART_POINTS = 1000
"""Turns drawn in the sentiment chart (the first ones)."""

_PUNCTUATION = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2015": "-",
        "\u2212": "-",
        "\u2026": "...",
        "\u2022": "\u00b7",
        "\u20ac": "EUR",
        "\u2122": "(TM)",
        "\u00a0": " ",
        "\u2009": " ",
        "\u200b": "",
        "\ufeff": "",
        "\t": "    ",
    }
)
_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def latin1(text: str) -> str:
    """`text` in what the standard PDF fonts can show (see the module's notes)."""
    text = _CONTROLS.sub(" ", text.translate(_PUNCTUATION))
    if text.isascii():
        return text
    out = []
    for char in text:
        if ord(char) < 256:
            out.append(char)
            continue
        base = "".join(
            c for c in unicodedata.normalize("NFKD", char) if ord(c) < 256 and c.isprintable()
        )
        out.append(base or "?")
    return "".join(out)


class _Pdf(FPDF):
    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(FONT, size=8)
        self.set_text_color(120)
        self.cell(0, 6, f"Page {self.page_no()}/{{nb}}", align="C")
        self.set_text_color(0)


def render_pdf(document: Document) -> bytes:
    pdf = _Pdf(format="A4")
    pdf.set_title(latin1(document.title))
    pdf.set_creator("Callisto")
    # A fixed date (the conversation's): the same conversation always gives the same bytes.
    pdf.set_creation_date(document.create_time or datetime(2000, 1, 1, tzinfo=UTC))
    pdf.set_auto_page_break(True, margin=16)
    pdf.set_margins(16, 16, 16)
    pdf.add_page()
    _heading(pdf, document.title, 18)
    _facts(pdf, document)
    notes = list(document.notes)
    if any(latin1(t.text).count("?") > t.text.count("?") for t in document.turns):
        notes.append(
            "Characters the PDF font cannot show are printed as '?'; the Markdown and JSON "
            "downloads keep them."
        )
    if notes:
        pdf.set_font(FONT, style="I", size=9)
        for note in notes:
            _paragraph(pdf, note, 4.5)
        pdf.ln(2)
    if document.scenario:
        _heading(pdf, "Scenario", 14)
        pdf.set_font(FONT, size=10)
        _paragraph(pdf, document.scenario, 5)
    if document.agents or document.human:
        _heading(pdf, "Participants", 14)
        for agent in document.agents:
            _subheading(pdf, _who(agent.display_name, agent.company))
            pdf.set_font(FONT, size=10)
            for key, value in (
                ("Participant", agent.participant),
                ("Role", agent.role),
                ("Agent", agent.agent or ("inline" if agent.system_prompt else "")),
                ("Model", agent.model),
                ("Tools", ", ".join(agent.tools)),
            ):
                if value:
                    _paragraph(pdf, f"{key}: {value}", 5)
            if agent.system_prompt:
                _paragraph(pdf, "System prompt:", 5)
                pdf.set_font(FONT, style="I", size=9)
                _paragraph(pdf, agent.system_prompt, 4.5, indent=4)
        if document.human:
            human = document.human
            _subheading(pdf, _who(human.display_name, human.company) + " (human)")
            pdf.set_font(FONT, size=10)
            for key, value in (("Participant", human.participant), ("Role", human.role)):
                if value:
                    _paragraph(pdf, f"{key}: {value}", 5)
    _heading(pdf, "Turns", 14)
    if not document.turns:
        pdf.set_font(FONT, size=10)
        _paragraph(pdf, "No turns yet.", 5)
    for turn in document.turns:
        _turn(pdf, turn)
    _heading(pdf, "Metrics", 14)
    _table(pdf, [("Figure", "Value"), *metric_rows(document)], (60, 118))
    rows = turn_rows(document)
    if rows:
        _subheading(pdf, "Sentiment per turn")
        _chart(pdf, document)
        header = ("Turn", "Speaker", "Human", "Sentiment", "Tokens", "Gen. ms", "Passages")
        _table(pdf, [header, *rows], (14, 52, 16, 24, 22, 26, 24))
    return bytes(pdf.output())


def _who(name: str, company: str) -> str:
    return f"{name} ({company})" if company else name


def _heading(pdf: FPDF, text: str, size: int) -> None:
    pdf.ln(3)
    pdf.set_font(FONT, style="B", size=size)
    _paragraph(pdf, text, size * 0.5)
    pdf.ln(1)


def _subheading(pdf: FPDF, text: str) -> None:
    pdf.ln(1.5)
    pdf.set_font(FONT, style="B", size=11)
    _paragraph(pdf, text, 5.5)


def _paragraph(pdf: FPDF, text: str, height: float, indent: float = 0) -> None:
    """`text` wrapped at word boundaries (character boundaries inside a word wider than the
    line), one cell per line: linear in the text, where fpdf2's own `multi_cell` measures each
    line anew for every character it adds."""
    width = pdf.epw - indent
    for line in _wrap(pdf, latin1(text), width):
        pdf.set_x(pdf.l_margin + indent)
        pdf.cell(width, height, line, new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _wrap(pdf: FPDF, text: str, width: float) -> list[str]:
    widths: dict[str, float] = {}

    def measure(char: str) -> float:
        if char not in widths:
            widths[char] = pdf.get_string_width(char)
        return widths[char]

    lines: list[str] = []
    for source in text.split("\n"):
        line, used = "", 0.0
        for word in re.split(r"(?<= )", source):
            size = sum(measure(c) for c in word)
            if used + size <= width:
                line, used = line + word, used + size
                continue
            if line.strip():
                lines.append(line.rstrip())
            line, used = "", 0.0
            if size <= width:
                line, used = word, size
                continue
            for char in word:
                step = measure(char)
                if used + step > width and line:
                    lines.append(line)
                    line, used = "", 0.0
                line, used = line + char, used + step
        lines.append(line.rstrip())
    return lines


def _facts(pdf: FPDF, document: Document) -> None:
    pdf.set_font(FONT, size=10)
    for key, value in (
        ("Conversation", document.name),
        ("Status", document.status),
        ("Outcome", document.outcome),
        ("Started", document.created),
        ("Ended", document.ended),
        ("Tags", ", ".join(document.tags)),
    ):
        if value:
            _paragraph(pdf, f"{key}: {value}", 5)
    pdf.ln(2)


def _turn(pdf: FPDF, turn: Turn) -> None:
    heading = f"Turn {turn.number} - {_who(turn.display_name, turn.company)}"
    if turn.human:
        heading += " - human"
    _subheading(pdf, heading)
    facts = []
    if turn.time:
        facts.append(turn.time)
    if turn.sentiment_score is not None:
        facts.append(f"sentiment {turn.sentiment_label} ({signed(turn.sentiment_score)})")
    if turn.speaker != turn.display_name:
        facts.append(f"speaker {turn.speaker}")
    if facts:
        pdf.set_font(FONT, style="I", size=9)
        pdf.set_text_color(90)
        _paragraph(pdf, " | ".join(facts), 4.5)
        pdf.set_text_color(0)
    pdf.set_font(FONT, size=10)
    _paragraph(pdf, (turn.text or "(empty turn)") + (" [cut]" if turn.cut else ""), 5)
    if turn.sources:
        pdf.set_font(FONT, size=8)
        for source in turn.sources:
            parts = [source.title, source.source_uri]
            parts += [f"p. {source.page}" if source.page else "", source.section]
            _paragraph(pdf, f"[{source.marker}] " + ", ".join(p for p in parts if p), 4, 4)


def _table(pdf: FPDF, rows: list[tuple[str, ...]], widths: tuple[float, ...]) -> None:
    pdf.set_font(FONT, size=9)
    with pdf.table(
        col_widths=widths,
        width=sum(widths),
        align="LEFT",
        first_row_as_headings=True,
        line_height=5,
    ) as table:
        for row in rows:
            cells = table.row()
            for value in row:
                cells.cell(latin1(value))
    pdf.ln(3)


def _chart(pdf: FPDF, document: Document) -> None:
    """Sentiment score (-1..1) per turn: a framed plot with the zero line, the scores joined
    by lines, a dot per turn (green above zero, red below)."""
    points = [
        (t.turn, t.sentiment.score)
        for t in document.metrics.turn_metrics[:MAX_CHART_POINTS]
        if t.HasField("sentiment")
    ]
    width, height = pdf.epw, 48.0
    if pdf.will_page_break(height + 10):
        pdf.add_page()
    left, top = pdf.l_margin, pdf.get_y() + 2
    pdf.set_draw_color(160)
    pdf.set_line_width(0.2)
    pdf.rect(left, top, width, height)
    middle = top + height / 2
    pdf.set_draw_color(200)
    pdf.line(left, middle, left + width, middle)
    pdf.set_font(FONT, size=7)
    for label, y in (("+1", top), ("0", middle), ("-1", top + height)):
        pdf.text(left + 1, y + (2.5 if y == top else -0.5), label)
    if points:
        first, last = points[0][0], points[-1][0]
        span = max(last - first, 1)

        def place(turn: int, score: float) -> tuple[float, float]:
            x = left + 8 + (width - 12) * ((turn - first) / span if last > first else 0.5)
            y = middle - max(-1.0, min(1.0, score)) * (height / 2 - 2)
            return x, y

        placed = [place(turn, score) for turn, score in points]
        pdf.set_draw_color(40, 90, 160)
        pdf.set_line_width(0.4)
        for (x1, y1), (x2, y2) in itertools.pairwise(placed):
            pdf.line(x1, y1, x2, y2)
        for (x, y), (_, score) in zip(placed, points, strict=True):
            if score >= 0:
                pdf.set_fill_color(40, 150, 70)
            else:
                pdf.set_fill_color(200, 50, 50)
            pdf.ellipse(x - 0.9, y - 0.9, 1.8, 1.8, style="F")
        pdf.text(left + 8, top + height + 4, f"turn {first}")
        pdf.text(left + width - 16, top + height + 4, f"turn {last}")
    pdf.set_draw_color(0)
    pdf.set_y(top + height + 7)
