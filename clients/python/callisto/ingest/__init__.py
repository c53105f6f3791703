"""Client-side ingestion: stream a folder's files over `IngestDocuments`."""

from callisto.documents import SUPPORTED_SUFFIXES
from callisto.ingest.folder import (
    FileSpec,
    FolderIngester,
    IngestReport,
    discover,
    file_spec,
    folder_specs,
)

__all__ = [
    "SUPPORTED_SUFFIXES",
    "FileSpec",
    "FolderIngester",
    "IngestReport",
    "discover",
    "file_spec",
    "folder_specs",
]
