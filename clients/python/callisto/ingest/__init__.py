"""Client-side ingestion: stream files over `IngestDocuments`, and load the bundled samples."""

from callisto.ingest.folder import (
    SUPPORTED_SUFFIXES,
    FileSpec,
    FolderIngester,
    IngestReport,
    discover,
    file_spec,
    folder_specs,
)
from callisto.ingest.samples import SamplesReport, ingest_samples, samples_dir

__all__ = [
    "SUPPORTED_SUFFIXES",
    "FileSpec",
    "FolderIngester",
    "IngestReport",
    "SamplesReport",
    "discover",
    "file_spec",
    "folder_specs",
    "ingest_samples",
    "samples_dir",
]
