"""A conversation document as Markdown (CommonMark with GitHub tables and footnotes).

Everything a model, an agent's author or a caller wrote is escaped, so no turn can open a
heading, a list, a table, a code block, a link or raw HTML: every Markdown-significant character
gets a backslash, leading markers of a line are neutralised, indentation is dropped (no indented
code) and control characters are removed."""

from __future__ import annotations

import re

from callisto.services.orchestration.exports.document import Agent, Document, Human, Turn
from callisto.services.orchestration.exports.figures import metric_rows, signed, turn_rows

CONTENT_TYPE = "text/markdown; charset=utf-8"

# Characters escaped anywhere in written text (CommonMark lets any ASCII punctuation be escaped).
_SPECIAL = re.compile(r"[\\`*_\[\]<>#|~&!$]")
# What would start a block at the beginning of a line: list items, setext underlines, quotes.
_LINE_START = re.compile(r"^([-+=])")
_ORDERED = re.compile(r"^(\d{1,9})([.)])")
# C0/C1 controls other than newline and tab, and Unicode line/paragraph separators.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_MARKER = re.compile(r"\\\[(\d{1,4})\\\]")


def escape_inline(text: str) -> str:
    """`text` as literal Markdown on one line (newlines become spaces), to follow other text
    on its line (a heading's `#`, a table's `|`, a label)."""
    return _escape_special(" ".join(_CONTROLS.sub(" ", text).split()))


def escape_block(text: str) -> str:
    """`text` as literal Markdown paragraphs: blank lines separate paragraphs, other line breaks
    stay hard line breaks."""
    clean = _CONTROLS.sub("", text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " "))
    paragraphs = []
    for paragraph in re.split(r"\n[ ]*\n", clean):
        lines = [_escape_line(line.strip()) for line in paragraph.split("\n") if line.strip()]
        if lines:
            paragraphs.append("\\\n".join(lines))
    return "\n\n".join(paragraphs)


def _escape_special(text: str) -> str:
    return _SPECIAL.sub(lambda m: "\\" + m.group(0), text)


def _escape_line(line: str) -> str:
    escaped = _LINE_START.sub(r"\\\1", _escape_special(line))
    return _ORDERED.sub(r"\1\\\2", escaped)


def render_markdown(document: Document) -> str:
    out: list[str] = [f"# {escape_inline(document.title)}", ""]
    out += _facts(document)
    if document.notes:
        out += ["", *[f"> {escape_inline(note)}" for note in document.notes]]
    if document.scenario:
        out += ["", "## Scenario", "", escape_block(document.scenario)]
    if document.agents or document.human:
        out += ["", "## Participants"]
        for agent in document.agents:
            out += ["", *_agent(agent)]
        if document.human:
            out += ["", *_human(document.human)]
    out += ["", "## Turns"]
    if not document.turns:
        out += ["", "No turns yet."]
    for turn in document.turns:
        out += ["", *_turn(turn)]
    out += ["", "## Metrics", "", "| Figure | Value |", "| --- | --- |"]
    out += [f"| {escape_inline(k)} | {escape_inline(v)} |" for k, v in metric_rows(document)]
    rows = turn_rows(document)
    if rows:
        out += [
            "",
            "### Per turn",
            "",
            "| Turn | Speaker | Human | Sentiment | Tokens | Generation (ms) | Passages |",
            "| ---: | --- | --- | --- | ---: | ---: | ---: |",
        ]
        out += ["| " + " | ".join(escape_inline(cell) for cell in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def _facts(document: Document) -> list[str]:
    facts = [("Conversation", document.name)]
    facts += [("Status", document.status), ("Outcome", document.outcome)]
    facts += [("Started", document.created), ("Ended", document.ended)]
    facts.append(("Tags", ", ".join(document.tags)))
    return [f"- **{k}:** {escape_inline(v)}" for k, v in facts if v]


def _who(name: str, company: str) -> str:
    return f"{escape_inline(name)} ({escape_inline(company)})" if company else escape_inline(name)


def _agent(agent: Agent) -> list[str]:
    out = [f"### {_who(agent.display_name, agent.company)}", ""]
    facts = [("Participant", agent.participant), ("Role", agent.role)]
    facts += [("Agent", agent.agent or ("inline" if agent.system_prompt else ""))]
    facts += [("Model", agent.model), ("Tools", ", ".join(agent.tools))]
    out += [f"- **{k}:** {escape_inline(v)}" for k, v in facts if v]
    if agent.system_prompt:
        out += ["- **System prompt:**", ""]
        out += [f"  > {line}" if line else "  >" for line in _quoted(agent.system_prompt)]
    return out


def _human(human: Human) -> list[str]:
    out = [f"### {_who(human.display_name, human.company)} (human)", ""]
    facts = [("Participant", human.participant), ("Role", human.role)]
    return out + [f"- **{k}:** {escape_inline(v)}" for k, v in facts if v]


def _quoted(text: str) -> list[str]:
    return escape_block(text).split("\n")


def _turn(turn: Turn) -> list[str]:
    heading = f"### Turn {turn.number} · {_who(turn.display_name, turn.company)}"
    if turn.human:
        heading += " · human"
    facts = []
    if turn.time:
        facts.append(f"**Time:** {escape_inline(turn.time)}")
    if turn.sentiment_score is not None:
        facts.append(f"**Sentiment:** {turn.sentiment_label} ({signed(turn.sentiment_score)})")
    if turn.speaker != turn.display_name:
        facts.append(f"**Speaker:** {escape_inline(turn.speaker)}")
    out = [heading, ""]
    if facts:
        out += [" · ".join(facts), ""]
    markers = {source.marker for source in turn.sources}
    referenced: set[int] = set()

    def footnote(match: re.Match[str]) -> str:
        marker = int(match.group(1))
        if marker not in markers:
            return match.group(0)
        referenced.add(marker)
        return f"[^t{turn.number}-{marker}]"

    text = _MARKER.sub(footnote, escape_block(turn.text)) if turn.text else "*(empty turn)*"
    if turn.cut:
        text += " \\[cut\\]"
    out.append(text)
    unreferenced = [s.marker for s in turn.sources if s.marker not in referenced]
    if unreferenced:
        out += ["", "Sources: " + " ".join(f"[^t{turn.number}-{m}]" for m in unreferenced)]
    if turn.sources:
        out.append("")
    for source in turn.sources:
        parts = [source.title, source.source_uri]
        parts += [f"p. {source.page}" if source.page else "", source.section]
        described = escape_inline(", ".join(p for p in parts if p)) or "source"
        out.append(f"[^t{turn.number}-{source.marker}]: {described}")
    return out
