"""Turn document bytes into text segments with page numbers, heading paths and exact offsets.

Every parser feeds a :class:`_TextBuilder`, which joins segments with a blank line into the
document's ``full_text`` and records where each one starts, so citations can point at exact
character ranges. Parsing is CPU-bound and blocking, and untrusted bytes can make it costly: the
service runs it in a worker process of :mod:`parse_pool`, bounded in memory and time.
"""

from __future__ import annotations

import csv
import io
import mimetypes
import re
import zipfile
from dataclasses import dataclass
from typing import Literal

from callisto.documents import CSV, DOCX, HTML, MARKDOWN, PDF, TEXT, mime_type_for
from callisto.services.retrieval.errors import (
    CorruptDocument,
    DocumentTooLarge,
    UnsupportedMimeType,
)
from callisto.services.retrieval.models import ParsedDocument, Segment

# Aliases seen in the wild, mapped to the canonical type each parser handles.
_ALIASES = {
    "application/csv": CSV,
    "text/x-markdown": MARKDOWN,
    "application/xhtml+xml": HTML,
    "text/x-rst": TEXT,
}
SUPPORTED_MIME_TYPES = frozenset({PDF, DOCX, CSV, MARKDOWN, HTML, TEXT})

_SEPARATOR = "\n\n"

# "rows": one record per CSV row ("column: value" lines); "table": the whole table as text.
CsvMode = Literal["rows", "table"]


@dataclass(frozen=True, slots=True)
class ParseOptions:
    """Limits and modes for parsing: ``max_bytes`` bounds the raw document; the inflated-size,
    entry-count and compression-ratio limits bound what a DOCX (a zip) inflates to."""

    max_bytes: int = 20 * 1024 * 1024
    max_inflated_bytes: int = 128 * 1024 * 1024
    max_archive_entries: int = 10_000
    max_compression_ratio: float = 200.0
    csv_mode: CsvMode = "rows"


class _TextBuilder:
    """Accumulates segments into one full text, keeping each segment's start offset exact."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self.segments: list[Segment] = []

    def add(
        self,
        text: str,
        *,
        section: tuple[str, ...] = (),
        page: int | None = None,
        row: int | None = None,
    ) -> None:
        text = text.strip()
        if not text:
            return
        if self._parts:
            self._parts.append(_SEPARATOR)
            self._length += len(_SEPARATOR)
        self.segments.append(
            Segment(text=text, start=self._length, section=section, page=page, row=row)
        )
        self._parts.append(text)
        self._length += len(text)

    def build(self, mime_type: str, title: str | None) -> ParsedDocument:
        return ParsedDocument(
            full_text="".join(self._parts),
            segments=tuple(self.segments),
            mime_type=mime_type,
            title=title,
        )


def resolve_mime_type(mime_type: str, filename: str = "") -> str:
    """Canonical MIME type for ``mime_type`` (parameters dropped), guessing from the file name
    when the type is empty or generic; raises :class:`UnsupportedMimeType`."""
    base = mime_type.split(";", 1)[0].strip().lower()
    base = _ALIASES.get(base, base)
    if base in ("", "application/octet-stream") and filename:
        guessed = mime_type_for(filename) or mimetypes.guess_type(filename)[0] or ""
        base = _ALIASES.get(guessed, guessed)
    if base not in SUPPORTED_MIME_TYPES:
        raise UnsupportedMimeType(
            "mime_type",
            f"unsupported MIME type {mime_type!r}; supported: "
            + ", ".join(sorted(SUPPORTED_MIME_TYPES)),
        )
    return base


def check_size(size: int, options: ParseOptions) -> None:
    if size > options.max_bytes:
        raise DocumentTooLarge(
            "content", f"document is larger than the {options.max_bytes}-byte limit"
        )


def parse_document(
    data: bytes, mime_type: str, filename: str = "", options: ParseOptions | None = None
) -> ParsedDocument:
    """Parse ``data`` according to its MIME type (blocking)."""
    options = options or ParseOptions()
    check_size(len(data), options)
    kind = resolve_mime_type(mime_type, filename)
    if kind == PDF:
        return _parse_pdf(data)
    if kind == DOCX:
        return _parse_docx(data, options)
    if kind == CSV:
        return _parse_csv(data, options.csv_mode)
    if kind == MARKDOWN:
        return _parse_markdown(_decode(data))
    if kind == HTML:
        return _parse_html(_decode(data))
    return _parse_text(_decode(data))


def _decode(data: bytes) -> str:
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CorruptDocument("content", "binary data (NUL bytes) in a text document")
    for encoding in (
        ("utf-8-sig", "utf-16")
        if data.startswith((b"\xff\xfe", b"\xfe\xff"))
        else (
            "utf-8-sig",
            "cp1252",
        )
    ):
        try:
            return data.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")
        except UnicodeDecodeError:
            continue
    raise CorruptDocument("content", "text is neither UTF-8 nor Windows-1252")


def _parse_pdf(data: bytes) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    builder = _TextBuilder()
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise CorruptDocument("content", "PDF is encrypted")
        title = reader.metadata.title if reader.metadata is not None else None
        for number, page in enumerate(reader.pages, start=1):
            builder.add(_normalise_newlines(page.extract_text() or ""), page=number)
    except CorruptDocument:
        raise
    # pypdf raises a wide range of errors on damaged files (struct, zlib, key and value errors).
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise CorruptDocument("content", f"unreadable PDF: {exc}") from exc
    return builder.build(PDF, str(title) if title else None)


# Parts smaller than this are not held to the compression ratio (tiny XML parts compress well).
_RATIO_FLOOR = 1024 * 1024


def check_archive(data: bytes, options: ParseOptions) -> None:
    """Refuse a zip bomb before python-docx inflates every part into memory: bound the number of
    entries, the sizes the archive declares and their ratio to the compressed sizes, then inflate
    each entry in pieces (never whole) to count what it really holds: zipfile stops at the
    declared size and checks the CRC, so an archive that lies about its sizes fails as corrupt."""
    limit = options.max_inflated_bytes
    too_large = f"the document inflates to more than the {limit}-byte limit"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
            if len(entries) > options.max_archive_entries:
                raise DocumentTooLarge(
                    "content", f"the archive has more than {options.max_archive_entries} entries"
                )
            declared = 0
            for entry in entries:
                declared += entry.file_size
                if declared > limit:
                    raise DocumentTooLarge("content", too_large)
                ratio = entry.file_size / max(entry.compress_size, 1)
                if entry.file_size > _RATIO_FLOOR and ratio > options.max_compression_ratio:
                    raise DocumentTooLarge(
                        "content",
                        f"part {entry.filename!r} inflates {ratio:.0f}-fold (the limit is "
                        f"{options.max_compression_ratio:.0f})",
                    )
            inflated = 0
            for entry in entries:
                with archive.open(entry) as stream:
                    while piece := stream.read(1024 * 1024):
                        inflated += len(piece)
                        if inflated > limit:
                            raise DocumentTooLarge("content", too_large)
    except (DocumentTooLarge, MemoryError):  # a MemoryError is the worker's limit, not corruption
        raise
    # A damaged or unsupported archive surfaces as BadZipFile, a zlib/lzma error, EOFError,
    # RuntimeError (an encrypted entry), ValueError, or zipfile's error for an unknown
    # compression method: every one of them means the client sent an unreadable file.
    except Exception as exc:
        raise CorruptDocument("content", f"unreadable DOCX: {exc}") from exc


def _parse_docx(data: bytes, options: ParseOptions) -> ParsedDocument:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    check_archive(data, options)
    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise CorruptDocument("content", f"unreadable DOCX: {exc}") from exc
    except MemoryError:
        raise
    except Exception as exc:  # python-docx wraps lxml/opc failures in its own types
        raise CorruptDocument("content", f"unreadable DOCX: {exc}") from exc
    builder = _TextBuilder()
    headings: list[str] = []
    body: list[str] = []

    def flush() -> None:
        builder.add("\n".join(body), section=tuple(headings))
        body.clear()

    for block in document.iter_inner_content():
        if isinstance(block, Paragraph):
            level = _docx_heading_level(block.style.name if block.style is not None else "")
            text = block.text.strip()
            if level is not None and text:
                flush()
                del headings[level - 1 :]
                headings.append(text)
                body.append(text)
            elif text:
                body.append(text)
        elif isinstance(block, Table):
            for row in block.rows:
                cells = [cell.text.strip() for cell in row.cells]
                if any(cells):
                    body.append(" | ".join(cells))
    flush()
    title = document.core_properties.title or None
    return builder.build(DOCX, title)


def _docx_heading_level(style_name: str) -> int | None:
    if style_name == "Title":
        return 1
    match = re.fullmatch(r"Heading (\d)", style_name)
    return int(match.group(1)) if match else None


def _parse_csv(data: bytes, mode: CsvMode) -> ParsedDocument:
    text = _decode(data)
    try:
        rows = list(csv.reader(io.StringIO(text), strict=True))
    except csv.Error as exc:
        raise CorruptDocument("content", f"malformed CSV: {exc}") from exc
    builder = _TextBuilder()
    if not rows:
        return builder.build(CSV, None)
    header = [name.strip() or f"column_{i + 1}" for i, name in enumerate(rows[0])]
    if mode == "table":
        builder.add("\n".join(", ".join(cell.strip() for cell in row) for row in rows))
        return builder.build(CSV, None)
    for number, row in enumerate(rows[1:], start=1):
        # Names are looked up per cell: copying the header per row is quadratic for a wide header
        # over many short rows.
        lines = [
            f"{header[i] if i < len(header) else f'column_{i + 1}'}: {value.strip()}"
            for i, value in enumerate(row)
            if value.strip()
        ]
        builder.add("\n".join(lines), row=number)
    return builder.build(CSV, None)


# The heading text is the rest of the line; its closing `#`s and blanks are stripped in Python
# (a lazy group followed by `[ \t#]*$` backtracks quadratically on long runs of blanks or `#`).
_ATX_HEADING = re.compile(r" {0,3}(#{1,6})[ \t]+(.*)")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def _parse_markdown(text: str) -> ParsedDocument:
    builder = _TextBuilder()
    headings: list[tuple[int, str]] = []
    body: list[str] = []
    in_fence = False

    def flush() -> None:
        builder.add("\n".join(body), section=tuple(h for _, h in headings))
        body.clear()

    title: str | None = None
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _ATX_HEADING.fullmatch(line)
        if match:
            flush()
            level, heading = len(match.group(1)), match.group(2).rstrip(" \t#").strip()
            headings = [(lv, h) for lv, h in headings if lv < level]
            headings.append((level, heading))
            if title is None and level == 1:
                title = heading
            body.append(heading)
        else:
            body.append(line)
    flush()
    return builder.build(MARKDOWN, title)


# Private-use marker placed around heading text so headings survive get_text() flattening.
_MARK = "\ue000"
_HEADING_LINE = re.compile(rf"^{_MARK}(\d){_MARK}(.*?){_MARK}$")


def _parse_html(text: str) -> ParsedDocument:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text.replace(_MARK, ""), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag is not None else None
    if title_tag is not None:
        title_tag.decompose()
    for level in range(1, 7):
        for heading in soup.find_all(f"h{level}"):
            label = " ".join(heading.get_text(" ", strip=True).split())
            heading.replace_with(f"\n{_MARK}{level}{_MARK}{label}{_MARK}\n")
    builder = _TextBuilder()
    headings: list[tuple[int, str]] = []
    body: list[str] = []

    def flush() -> None:
        builder.add("\n".join(body), section=tuple(h for _, h in headings))
        body.clear()

    for raw in soup.get_text("\n").split("\n"):
        line = " ".join(raw.split())
        match = _HEADING_LINE.match(line)
        if match:
            flush()
            level, label = int(match.group(1)), match.group(2)
            headings = [(lv, h) for lv, h in headings if lv < level]
            headings.append((level, label))
            body.append(label)
        elif line:
            body.append(line)
    flush()
    return builder.build(HTML, title or None)


def _parse_text(text: str) -> ParsedDocument:
    builder = _TextBuilder()
    builder.add(text)
    return builder.build(TEXT, None)


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")
