"""How `callisto simulate` and `callisto conversations replay` show a conversation's events: one
block per turn (the speaker with their company and role, the text as it streams, tool calls and
cited sources briefly, then the sentiment, coloured), the end's reason and the conversation's
metrics. Live and replayed events print the same, so a replay reads like the run did.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta

from google.protobuf import json_format
from rich.console import Console
from rich.status import Status
from rich.table import Table
from rich.text import Text

from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2

# Colours of the speakers, in their speaking order.
PALETTE = ("cyan", "magenta", "blue", "green", "yellow", "bright_red")
SENTIMENT_STYLES = {
    common_pb2.SENTIMENT_LABEL_POSITIVE: "green",
    common_pb2.SENTIMENT_LABEL_NEUTRAL: "yellow",
    common_pb2.SENTIMENT_LABEL_NEGATIVE: "red",
}
TREND_STYLES = {"rising": "green", "flat": "yellow", "falling": "red"}


def sentiment_label(sentiment: common_pb2.Sentiment) -> str:
    """`positive`, `neutral`, `negative` (or `unknown`)."""
    name = common_pb2.SentimentLabel.Name(sentiment.label)
    label = name.removeprefix("SENTIMENT_LABEL_").lower()
    return "unknown" if label == "unspecified" else label


def sentiment_text(sentiment: common_pb2.Sentiment) -> Text:
    """`+0.43 positive`, coloured by its label."""
    style = SENTIMENT_STYLES.get(sentiment.label, "dim")
    return Text(f"{sentiment.score:+.2f} {sentiment_label(sentiment)}", style=style)


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _arguments(arguments: object) -> str:
    """`query="...", top_k=3`, by name: a Struct keeps no order, and a replay must print the
    same line as the live run."""
    values = json_format.MessageToDict(arguments)  # type: ignore[arg-type]
    return ", ".join(
        f"{key}={_clip(json.dumps(value, ensure_ascii=False), 60)}"
        for key, value in sorted(values.items())
    )


def _seconds(duration: timedelta) -> str:
    return f"{duration.total_seconds():.1f} s"


class ConversationView:
    """Prints a conversation's events as they arrive (see the module docstring).

    `participants` (id -> the conversation's participant) names the speakers; without an entry
    a speaker shows as its id.
    """

    def __init__(self, console: Console, *, as_json: bool = False) -> None:
        self.console = console
        self.as_json = as_json
        self.participants: dict[str, persistence_pb2.Participant] = {}
        self._colours: dict[str, str] = {}
        self._mid_line = False
        self._streamed = False
        self._open_turn: tuple[str, int] | None = None
        self._citations: list[common_pb2.Citation] = []
        # On a terminal, a spinner while a speaker has not said anything yet.
        self._status: Status | None = None

    def know(self, participants: Mapping[str, persistence_pb2.Participant]) -> None:
        """The conversation's participants, in speaking order (their colours follow it)."""
        self.participants.update(participants)
        for participant_id in participants:
            self._colour(participant_id)

    def _colour(self, speaker: str) -> str:
        if speaker not in self._colours:
            self._colours[speaker] = PALETTE[len(self._colours) % len(PALETTE)]
        return self._colours[speaker]

    # Output

    def _quiet(self) -> None:
        """Stops the spinner (before anything is printed)."""
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _wait_for(self, speaker: str) -> None:
        """On a terminal: a spinner until the speaker's first words, tool call or turn end."""
        if not self.console.is_terminal or self.as_json:
            return
        participant = self.participants.get(speaker)
        name = participant.display_name if participant and participant.display_name else speaker
        self._status = self.console.status(Text(f"{name} is thinking…", style="dim"))
        self._status.start()

    def close(self) -> None:
        """Leaves the terminal as it was (no spinner running)."""
        self._quiet()

    def _end_line(self) -> None:
        self._quiet()
        if self._mid_line:
            self.console.print()
            self._mid_line = False

    def line(self, text: str | Text = "") -> None:
        """One line of its own (after any text streaming on the current one)."""
        self._end_line()
        if isinstance(text, Text):
            self.console.print(text, soft_wrap=True)
        else:
            self.console.print(text, markup=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.line(Text(text, style="dim"))

    def speaker(self, speaker: str, *, human: bool = False) -> Text:
        """`Tessa Lind (Tessaline Systems · sales lead)` in the speaker's colour."""
        participant = self.participants.get(speaker)
        name = participant.display_name if participant and participant.display_name else speaker
        label = Text(name or "assistant", style=f"bold {self._colour(speaker)}")
        is_human = human or (
            participant is not None and participant.kind == persistence_pb2.PARTICIPANT_KIND_HUMAN
        )
        if is_human:
            label.append(" [human]", style="bold")
        details = [d for d in (participant.company, participant.role) if d] if participant else []
        if details:
            label.append(f" ({' · '.join(details)})", style=self._colour(speaker))
        return label

    # Events

    def show(self, event: pb.ConversationEvent) -> None:
        if self.as_json:
            self.console.file.write(json_format.MessageToJson(event, indent=None) + "\n")
            self.console.file.flush()
            return
        kind = event.WhichOneof("kind")
        if kind is None:
            return
        handler = getattr(self, f"_{kind}", None)
        if handler is not None:
            handler(getattr(event, kind))

    def _header(self, speaker: str, turn: int, *, human: bool) -> None:
        header = Text(f"Turn {turn} · " if turn else "", style="bold")
        header.append_text(self.speaker(speaker, human=human))
        self.line("")
        self.line(header)
        self._open_turn = (speaker, turn)

    def _turn_started(self, started: pb.TurnStarted) -> None:
        self._streamed = False
        self._citations = []
        if started.restarted:
            self.note(f"  ↻ turn {started.turn} starts over (the run was taken over)")
        self._header(started.speaker, started.turn, human=started.human)
        if not started.human:
            self._wait_for(started.speaker)

    def _token(self, token: pb.TokenChunk) -> None:
        self._quiet()
        if not self._mid_line:
            self.console.print("  ", end="")
        self.console.print(
            token.text.replace("\n", "\n  "), end="", markup=False, highlight=False, soft_wrap=True
        )
        self._mid_line = True
        self._streamed = True

    def _tool_call(self, call: pb.ToolCall) -> None:
        if call.error:
            outcome = f"✗ {_clip(call.error, 100)}"
        else:
            outcome = f"→ {_clip(call.result, 100)}"
        cached = ", cached" if call.cached else ""
        self.note(
            f"  · {call.tool}({_arguments(call.arguments)}) {outcome} "
            f"({call.duration_ms:.0f} ms{cached})"
        )

    def _citation(self, citation: common_pb2.Citation) -> None:
        self._citations.append(citation)

    def _turn_ended(self, ended: pb.TurnEnded) -> None:
        if self._open_turn is None or self._open_turn[0] != ended.speaker:
            # A turn logged without a turn_started of its own (a human's).
            self._header(ended.speaker, ended.turn, human=ended.human)
        if not self._streamed and ended.text:
            self.line("  " + ended.text.replace("\n", "\n  "))
        citations = sorted(list(ended.citations) or self._citations, key=lambda c: c.marker)
        for citation in citations:
            title = citation.title or citation.source_uri or citation.document_id
            marker = f"[{citation.marker}] " if citation.marker else ""
            self.note(f"  {marker}{_clip(title, 90)}")
        figures = Text("  sentiment ", style="dim")
        figures.append_text(sentiment_text(ended.sentiment))
        details = []
        if ended.usage.total_tokens:
            details.append(f"{ended.usage.total_tokens} tokens")
        if ended.generation_ms:
            details.append(f"{ended.generation_ms:.0f} ms")
        if details:
            figures.append(" · " + " · ".join(details), style="dim")
        if ended.keyword_hits:
            figures.append(f" · keywords: {', '.join(ended.keyword_hits)}", style="bold yellow")
        self.line(figures)
        self._open_turn = None
        self._streamed = False
        self._citations = []

    def _awaiting_input(self, waiting: pb.AwaitingInput) -> None:
        if waiting.speaker:
            participant = self.participants.get(waiting.speaker)
            name = participant.display_name if participant else ""
            text = Text("… waiting for ", style="dim")
            text.append(name or waiting.speaker, style=f"bold {self._colour(waiting.speaker)}")
            if waiting.turn:
                text.append(f" (turn {waiting.turn})", style="dim")
            if waiting.prompt:
                text.append(f": {waiting.prompt}", style="dim")
            self.line(text)
        else:
            self.note(f"… waiting for input: {waiting.prompt}")

    def _done(self, done: pb.Done) -> None:
        self.line("")
        summary = Text("Done: ", style="bold")
        summary.append(done.reason or "completed", style="bold green")
        summary.append(f" — {done.turns} turns, {done.usage.total_tokens} tokens")
        self.line(summary)
        if done.HasField("metrics"):
            self.metrics(done.metrics)

    def _error(self, status: object) -> None:
        message = getattr(status, "message", "")
        code = getattr(status, "code", 0)
        self.line(Text(f"The run failed: {message} [code {code}]", style="bold red"))

    # Figures

    def metrics(self, metrics: pb.ConversationMetrics) -> None:
        """The conversation's figures as a table, and its turns' sentiment as another."""
        if self.as_json:
            return
        table = Table(title="Metrics", show_header=False, title_justify="left")
        table.add_column("figure", style="bold")
        table.add_column("value")
        turns = f"{metrics.turns} ({metrics.agent_turns} by agents"
        turns += f", {metrics.human_turns} by the human)" if metrics.human_turns else ")"
        table.add_row("turns", turns)
        table.add_row(
            "sentiment",
            f"mean {metrics.mean_sentiment:+.2f} · min {metrics.min_sentiment:+.2f} · "
            f"last {metrics.last_sentiment:+.2f}",
        )
        trend = metrics.sentiment_trend or "—"
        table.add_row(
            "trend",
            Text(
                f"{trend} ({metrics.sentiment_slope:+.3f} per turn)",
                style=TREND_STYLES.get(metrics.sentiment_trend, ""),
            ),
        )
        usage = metrics.usage
        table.add_row(
            "tokens",
            f"{usage.total_tokens} (prompt {usage.prompt_tokens}, "
            f"completion {usage.completion_tokens})",
        )
        table.add_row("cost", f"{metrics.cost:.4f}")
        hits = ", ".join(f"{h.keyword} (turn {h.turn}, {h.speaker})" for h in metrics.keyword_hits)
        table.add_row("keyword hits", hits or "none")
        table.add_row(
            "retrieval",
            f"{metrics.retrieval_turns} of {metrics.turns} turns, "
            f"{metrics.passages_retrieved} passages",
        )
        table.add_row("generation", f"{metrics.generation_ms / 1000:.1f} s")
        if metrics.HasField("duration"):
            table.add_row("duration", _seconds(metrics.duration.ToTimedelta()))
        table.add_row("outcome", metrics.outcome or "—")
        self._end_line()
        self.console.print(table)
        if metrics.turn_metrics:
            self.console.print(self._turn_table(metrics))

    def _turn_table(self, metrics: pb.ConversationMetrics) -> Table:
        table = Table(title="Turns", title_justify="left")
        for column in ("turn", "speaker", "sentiment", "tokens", "generation", "passages"):
            table.add_column(
                column, justify="left" if column in ("speaker", "sentiment") else "right"
            )
        for turn in metrics.turn_metrics:
            table.add_row(
                str(turn.turn),
                self.speaker(turn.speaker, human=turn.human),
                sentiment_text(turn.sentiment),
                str(turn.usage.total_tokens),
                f"{turn.generation_ms:.0f} ms",
                str(turn.passages),
            )
        return table
