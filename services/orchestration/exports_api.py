"""The conversation RPCs that read what runs stored: GetConversationMetrics and
DownloadConversation (Markdown, PDF or JSON).

Both read the conversation and its messages through persistence as the caller's tenant (another
tenant's conversation is NOT_FOUND, as persistence answers), page by page. The metrics cover
every message (kept without their text); a download renders the first ones within the bounds of
`exports.document` and `exports.json_document`. Rendering is CPU work: it runs in a worker
thread, at most MAX_CONCURRENT_RENDERS at a time per process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.api import httpbody_pb2

from callisto import errors as sdk
from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.api.persistence.v1 import persistence_pb2
from callisto.services.common.errors import FailedPrecondition, InvalidArgument
from callisto.services.common.validation import Violations, parse_name
from callisto.services.orchestration import metrics
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.exports import json_document, markdown, pdf
from callisto.services.orchestration.exports.document import MAX_RENDERED_TURNS, build_document
from callisto.services.orchestration.relay import relayed

Context = grpc.aio.ServicerContext[Any, Any]

MAX_CONCURRENT_RENDERS = 2
"""Documents rendered at once by one process; later downloads wait their turn."""
MAX_KEPT_MESSAGES = MAX_RENDERED_TURNS * 2
"""Whole messages kept for a download (the rest are read for the metrics only)."""
_METRICS_KEYS = (
    *("mode", "turn", "speaker", "human", "generation_ms", "cost"),
    *("keyword_hits", "passages", "started"),
)
_FORMATS = {
    pb.EXPORT_FORMAT_UNSPECIFIED: markdown.CONTENT_TYPE,
    pb.EXPORT_FORMAT_MARKDOWN: markdown.CONTENT_TYPE,
    pb.EXPORT_FORMAT_PDF: pdf.CONTENT_TYPE,
    pb.EXPORT_FORMAT_JSON: json_document.CONTENT_TYPE,
}


@dataclass
class _Loaded:
    conversation: persistence_pb2.Conversation
    # Every message, without its text (what the metrics read).
    figures: list[persistence_pb2.Message]
    # The first MAX_KEPT_MESSAGES messages, whole.
    whole: list[persistence_pb2.Message]

    def metrics(self) -> pb.ConversationMetrics:
        return metrics.conversation_metrics(self.conversation, self.figures)


class ExportsRpc(pb_grpc.OrchestrationServiceServicer):
    def __init__(self, backends: Backends) -> None:
        self._exports_backends = backends
        self._renders = asyncio.Semaphore(MAX_CONCURRENT_RENDERS)

    async def GetConversationMetrics(
        self, request: pb.GetConversationMetricsRequest, context: Context
    ) -> pb.GetConversationMetricsResponse:
        parse_name(request.name, "conversations", "name")
        loaded = await self._load(request.name, keep=0)
        # Linear in the turns, but a long conversation's figures are still not loop work.
        figures = await asyncio.to_thread(loaded.metrics)
        return pb.GetConversationMetricsResponse(metrics=figures)

    async def DownloadConversation(
        self, request: pb.DownloadConversationRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        v = Violations()
        try:
            parse_name(request.name, "conversations", "name")
        except InvalidArgument as error:
            for violation in error.violations:
                v.add(violation.field, violation.description)
        v.check(
            request.format in _FORMATS,
            "format",
            "must be EXPORT_FORMAT_MARKDOWN, EXPORT_FORMAT_PDF or EXPORT_FORMAT_JSON",
        )
        v.raise_if_any()
        # The bound covers loading too: a waiting download holds no messages.
        async with self._renders:
            loaded = await self._load(request.name, keep=MAX_KEPT_MESSAGES)
            data = await asyncio.to_thread(_renderer(request.format, loaded))
        return httpbody_pb2.HttpBody(content_type=_FORMATS[request.format], data=data)

    async def _load(self, name: str, *, keep: int) -> _Loaded:
        persistence = self._exports_backends.persistence
        with _relaying():
            conversation = await persistence.get_conversation(name)
            loaded = _Loaded(conversation, [], [])
            try:
                async for message in metrics.bounded_messages(persistence, conversation):
                    if len(loaded.whole) < keep:
                        loaded.whole.append(message)
                    loaded.figures.append(_figures_only(message))
            except metrics.TooManyMessages as error:
                raise _too_long(name, error.count) from None
        return loaded


def _renderer(format: pb.ExportFormat.ValueType, loaded: _Loaded) -> Callable[[], bytes]:
    def render() -> bytes:
        figures = loaded.metrics()
        if format == pb.EXPORT_FORMAT_JSON:
            return json_document.render_json(
                loaded.conversation,
                loaded.whole,
                figures,
                total_messages=len(loaded.figures),
            )
        document = build_document(loaded.conversation, loaded.whole, figures)
        if format == pb.EXPORT_FORMAT_PDF:
            return pdf.render_pdf(document)
        return markdown.render_markdown(document).encode()

    return render


def _figures_only(message: persistence_pb2.Message) -> persistence_pb2.Message:
    """What the metrics read of `message`: no text, no passages, only the metadata they use."""
    slim = persistence_pb2.Message(
        name=message.name,
        role=message.role,
        author=message.author,
        usage=message.usage,
        create_time=message.create_time,
        citations=[common_pb2.Citation(marker=c.marker) for c in message.citations],
    )
    if message.HasField("sentiment"):
        slim.sentiment.CopyFrom(message.sentiment)
    for key in _METRICS_KEYS:
        if key in message.metadata.fields:
            slim.metadata.fields[key].CopyFrom(message.metadata.fields[key])
    return slim


def _too_long(name: str, count: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"{name} holds {count} messages; metrics and downloads cover conversations of at most "
        f"{metrics.MAX_MESSAGES} messages (list them through persistence instead)"
    )


@contextmanager
def _relaying() -> Iterator[None]:
    """Persistence's answers keep their status (another tenant's conversation is NOT_FOUND)."""
    try:
        yield
    except sdk.CallistoError as error:
        raise relayed(error) from None
