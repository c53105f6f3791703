"""What `client.retrieval.ingest` streams over the bidirectional `IngestDocuments` RPC.

Files are read in pieces while they are sent (a header, `data` messages of at most
`chunk_bytes`, an end marker per file), so memory stays flat whatever the folder's size; gRPC
flow control paces the reads. Results arrive per document while later files are still being
sent; `ProgressBar` shows them. `FolderIngester` is the folder-to-index path of `callisto
ingest`; `ingest_specs` over a raw stub is kept for callers not yet on the SDK.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from google.rpc import status_pb2
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from callisto.attributes import Scalar as AttributeValue
from callisto.attributes import to_proto as attribute_to_proto
from callisto.documents import MIME_TYPES, SUPPORTED_SUFFIXES, document_id_from

CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class FileSpec:
    """One file to ingest and the metadata its document gets."""

    path: Path
    document_id: str
    mime_type: str
    title: str = ""
    source_uri: str = ""
    tags: tuple[str, ...] = ()
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)


@dataclass
class IngestReport:
    """What one ingestion did, per outcome."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, status_pb2.Status] = field(default_factory=dict)
    chunks_stored: int = 0
    duration_ms: float = 0.0
    # Set when the stream itself failed (the documents before it may still be indexed).
    error: status_pb2.Status | None = None

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)


@dataclass(frozen=True)
class BytesDocument:
    """One document held in memory (no file behind it) and its metadata."""

    data: bytes
    document_id: str
    mime_type: str
    title: str = ""
    source_uri: str = ""
    tags: tuple[str, ...] = ()
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)


# What `client.retrieval.ingest` streams: files read piece by piece, or bytes in memory.
DocumentSpec = FileSpec | BytesDocument


def document_id_for(root: Path, path: Path) -> str:
    """A stable document id from the path relative to the ingested folder."""
    relative = path.relative_to(root).as_posix() if path != root else path.name
    return document_id_from(relative) or "document"


def discover(folder: Path, recursive: bool = False) -> list[Path]:
    """Supported files of `folder` (or `folder` itself when it is a file), sorted."""
    if folder.is_file():
        return [folder]
    candidates = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(
        p
        for p in candidates
        if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".")
    )


def file_spec(
    root: Path,
    path: Path,
    *,
    tags: Sequence[str] = (),
    attributes: Mapping[str, AttributeValue] | None = None,
    title: str = "",
    source_uri: str = "",
) -> FileSpec:
    return FileSpec(
        path=path,
        document_id=document_id_for(root, path),
        mime_type=MIME_TYPES.get(path.suffix.lower(), ""),
        title=title or path.stem.replace("-", " ").replace("_", " ").strip().capitalize(),
        source_uri=source_uri or path.resolve().as_uri(),
        tags=tuple(tags),
        attributes=dict(attributes or {}),
    )


def header_for(spec: DocumentSpec) -> pb.DocumentHeader:
    return pb.DocumentHeader(
        document_id=spec.document_id,
        title=spec.title,
        source_uri=spec.source_uri,
        mime_type=spec.mime_type,
        tags=list(spec.tags),
        attributes={k: attribute_to_proto(v) for k, v in spec.attributes.items()},
    )


async def request_stream(
    specs: Sequence[DocumentSpec], chunk_bytes: int = CHUNK_BYTES
) -> AsyncIterator[pb.IngestDocumentsRequest]:
    """header, data..., end for each document, reading each file piece by piece."""
    for spec in specs:
        yield pb.IngestDocumentsRequest(header=header_for(spec))
        if isinstance(spec, BytesDocument):
            for start in range(0, len(spec.data), chunk_bytes):
                yield pb.IngestDocumentsRequest(data=spec.data[start : start + chunk_bytes])
        else:
            handle: BinaryIO = await asyncio.to_thread(spec.path.open, "rb")
            try:
                while piece := await asyncio.to_thread(handle.read, chunk_bytes):
                    yield pb.IngestDocumentsRequest(data=piece)
            finally:
                handle.close()
        yield pb.IngestDocumentsRequest(end=pb.DocumentEnd())


async def collect_results(
    responses: AsyncIterable[pb.IngestDocumentsResponse],
    *,
    on_result: Callable[[pb.DocumentResult], None] | None = None,
    on_progress: Callable[[pb.IngestProgress], None] | None = None,
) -> IngestReport:
    """The report of one `IngestDocuments` response stream, telling the callbacks as it goes."""
    report = IngestReport()
    async for response in responses:
        kind = response.WhichOneof("event")
        if kind == "progress":
            if on_progress is not None:
                on_progress(response.progress)
        elif kind == "document":
            result = response.document
            _record(report, result)
            if on_result is not None:
                on_result(result)
        elif kind == "summary":
            report.chunks_stored = response.summary.progress.chunks_stored
            report.duration_ms = response.summary.duration_ms
        elif kind == "error":
            report.error = response.error
    return report


async def ingest_specs(
    stub: pb_grpc.RetrievalServiceAsyncStub,
    specs: Sequence[DocumentSpec],
    metadata: tuple[tuple[str, str], ...] = (),
    *,
    on_result: Callable[[pb.DocumentResult], None] | None = None,
    on_progress: Callable[[pb.IngestProgress], None] | None = None,
    deadline_s: float | None = None,
) -> IngestReport:
    """Stream `specs` over one IngestDocuments call of a raw stub (prefer
    `client.retrieval.ingest`, which authenticates and raises `callisto.errors`)."""
    if not specs:
        return IngestReport()
    call = stub.IngestDocuments(request_stream(specs), metadata=metadata, timeout=deadline_s)
    return await collect_results(call, on_result=on_result, on_progress=on_progress)


def _record(report: IngestReport, result: pb.DocumentResult) -> None:
    if result.outcome == pb.DOCUMENT_OUTCOME_CREATED:
        report.created.append(result.document_id)
    elif result.outcome == pb.DOCUMENT_OUTCOME_UPDATED:
        report.updated.append(result.document_id)
    elif result.outcome == pb.DOCUMENT_OUTCOME_UNCHANGED:
        report.unchanged.append(result.document_id)
    else:
        report.failed[result.document_id] = result.error


class ProgressBar:
    """A rich progress bar fed by `client.retrieval.ingest`'s callbacks."""

    def __init__(self, total: int, *, console: Console | None = None, show: bool = True) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[chunks]} chunks"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            disable=not show,
            transient=False,
        )
        self._task = self._progress.add_task("ingesting", total=total, chunks=0)

    def __enter__(self) -> ProgressBar:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def on_result(self, result: pb.DocumentResult) -> None:
        self._progress.advance(self._task)
        if result.outcome == pb.DOCUMENT_OUTCOME_FAILED:
            self._progress.console.print(
                f"[red]failed[/red] {result.document_id}: {result.error.message}"
            )

    def on_progress(self, counters: pb.IngestProgress) -> None:
        self._progress.update(self._task, chunks=counters.chunks_stored)


class FolderIngester:
    """Ingests folders into the tenant of `api_key` through `target` (service or gateway), with a
    progress bar, over `callisto.Client`."""

    def __init__(
        self,
        target: str,
        api_key: str,
        *,
        show_progress: bool = True,
        console: Console | None = None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.target = target
        self.api_key = api_key
        self.show_progress = show_progress
        self.console = console or Console(stderr=True)
        self.chunk_bytes = chunk_bytes

    async def ingest_specs(self, specs: Sequence[DocumentSpec]) -> IngestReport:
        from callisto.client import Client

        async with await Client.connect(
            self.target, api_key=self.api_key, default_timeout=None
        ) as client:
            with ProgressBar(len(specs), console=self.console, show=self.show_progress) as bar:
                return await client.retrieval.ingest(
                    specs,
                    on_result=bar.on_result,
                    on_progress=bar.on_progress,
                    chunk_bytes=self.chunk_bytes,
                )

    async def ingest_folder(
        self,
        folder: Path,
        *,
        recursive: bool = False,
        tags: Sequence[str] = (),
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> IngestReport:
        specs = await asyncio.to_thread(folder_specs, folder, recursive, tags, attributes)
        return await self.ingest_specs(specs)


def folder_specs(
    folder: Path,
    recursive: bool = False,
    tags: Sequence[str] = (),
    attributes: Mapping[str, AttributeValue] | None = None,
) -> list[FileSpec]:
    """A spec per supported file, ids relative to `folder`."""
    root = folder if folder.is_dir() else folder.parent
    return [
        file_spec(root, path, tags=tags, attributes=attributes)
        for path in discover(folder, recursive)
    ]
