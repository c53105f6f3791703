"""Client-side ingestion: what `client.retrieval.ingest` streams (files, bytes), and folders."""

from callisto.documents import SUPPORTED_SUFFIXES
from callisto.ingest.folder import (
    BytesDocument,
    DocumentSpec,
    FileSpec,
    FolderIngester,
    IngestReport,
    ProgressBar,
    discover,
    file_spec,
    folder_specs,
)

__all__ = [
    "SUPPORTED_SUFFIXES",
    "BytesDocument",
    "DocumentSpec",
    "FileSpec",
    "FolderIngester",
    "IngestReport",
    "ProgressBar",
    "discover",
    "file_spec",
    "folder_specs",
]
