"""What a document is called and what type it is: one table and one rule for the client (which
names the files it sends) and the retrieval service (which names documents sent without an id)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
CSV = "text/csv"
MARKDOWN = "text/markdown"
HTML = "text/html"
TEXT = "text/plain"

# File extension -> the MIME type the retrieval service parses it as.
MIME_TYPES: Mapping[str, str] = {
    ".pdf": PDF,
    ".docx": DOCX,
    ".csv": CSV,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".html": HTML,
    ".htm": HTML,
    ".txt": TEXT,
}
SUPPORTED_SUFFIXES = frozenset(MIME_TYPES)

MAX_DOCUMENT_ID_LENGTH = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")
_EDGES = "-._:"


def mime_type_for(filename: str) -> str | None:
    """The MIME type a file name's extension stands for, if it is a supported one."""
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return MIME_TYPES.get(suffix)


def document_id_from(source: str) -> str:
    """A stable, valid document id from a path or URI ("" when nothing usable is left).

    Long sources keep their tail and gain a digest of the whole source, so two long paths that
    share their last characters never collide.
    """
    cleaned = _UNSAFE.sub("-", source).strip(_EDGES)
    if len(cleaned) > MAX_DOCUMENT_ID_LENGTH:
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        cleaned = f"{cleaned[-100:].lstrip(_EDGES)}-{digest}"
    return cleaned
