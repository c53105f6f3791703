"""Plain dataclasses shared by the retrieval backends (no protobuf here)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from callisto.services.common.errors import CallistoError

# JSON-compatible attribute values stored in Milvus JSON fields.
AttributeValue = str | int | float | bool
Attributes = Mapping[str, AttributeValue]


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of text from one page/section; ``start`` indexes the document's ``full_text``."""

    text: str
    start: int
    section: tuple[str, ...] = ()
    page: int | None = None
    # CSV row number (1-based, header excluded) when parsed row-per-record.
    row: int | None = None

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    """Extracted text; every segment satisfies ``full_text[s.start:s.end] == s.text``."""

    full_text: str
    segments: tuple[Segment, ...]
    mime_type: str
    title: str | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of one segment, small enough to embed; offsets index the document's full text."""

    index: int
    text: str
    start: int
    end: int
    section: tuple[str, ...] = ()
    page: int | None = None


@dataclass(frozen=True, slots=True)
class DocumentMeta:
    """Document-level metadata copied onto every chunk row."""

    tenant: str
    document_id: str
    title: str = ""
    source_uri: str = ""
    mime_type: str = "text/plain"
    tags: tuple[str, ...] = ()
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """What an idempotent document upsert did."""

    document_id: str
    content_hash: str
    chunks_written: int
    chunks_deleted: int
    unchanged: bool
    # True when no earlier version of the document was stored.
    created: bool = False


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """A stored document as its header row describes it."""

    tenant: str
    document_id: str
    title: str
    source_uri: str
    mime_type: str
    tags: tuple[str, ...]
    attributes: dict[str, AttributeValue]
    content_hash: str
    chunk_count: int
    created_time_ms: int
    # When the current version was stored, and the size of its bytes.
    updated_time_ms: int = 0
    size_bytes: int = 0


@dataclass(frozen=True, slots=True)
class DocumentPage:
    """One page of ``list_documents``; ``next_page_token`` is empty on the last page."""

    documents: tuple[DocumentInfo, ...]
    next_page_token: str


class SearchMode(enum.Enum):
    DENSE = "dense"
    BM25 = "bm25"
    HYBRID = "hybrid"


class FusionKind(enum.Enum):
    RRF = "rrf"
    WEIGHTED = "weighted"


@dataclass(frozen=True, slots=True)
class Fusion:
    """How hybrid search merges the dense and BM25 lists.

    RRF: score = sum over lists of 1 / (rrf_k + rank). WEIGHTED: each list's scores are min-max
    normalised to [0, 1] and fused as ``dense_weight * dense + sparse_weight * bm25`` (0 for a
    passage missing from a list).
    """

    kind: FusionKind = FusionKind.RRF
    rrf_k: int = 60
    dense_weight: float = 0.5
    sparse_weight: float = 0.5
    # Candidates each side brings to fusion; 0: the store's ``hybrid_candidates``.
    candidates: int = 0


# Hybrid search's default: min-max normalised weighted fusion favouring the dense side, each side
# 100 candidates deep. On the labelled benchmark (README, bench/retrieval_quality.py) it was the
# only setting at least as good as dense alone on both collection sizes; RRF and equal weights
# lost to dense on the small one.
DEFAULT_WEIGHTS = (0.7, 0.3)
DEFAULT_FUSION = Fusion(
    FusionKind.WEIGHTED, dense_weight=DEFAULT_WEIGHTS[0], sparse_weight=DEFAULT_WEIGHTS[1]
)


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A passage with everything needed to cite it."""

    chunk_id: str
    document_id: str
    title: str
    source_uri: str
    mime_type: str
    chunk_index: int
    start: int
    end: int
    page: int | None
    section: tuple[str, ...]
    text: str
    score: float
    tags: tuple[str, ...] = ()
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    # Present only when the search asked for vectors (MMR needs them).
    embedding: tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class EntityRecord:
    """A searchable entity: a master description plus named facet texts."""

    entity_id: str
    entity_type: str
    title: str
    master: str
    facets: Mapping[str, str] = field(default_factory=dict)
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FacetMatch:
    """One facet (or the master record, facet ``"master"``) that matched a query."""

    facet: str
    text: str
    score: float


@dataclass(frozen=True, slots=True)
class EntityHit:
    """An entity ranked by its aggregated score, with the facets that contributed."""

    entity_id: str
    entity_type: str
    title: str
    score: float
    master_score: float
    matches: tuple[FacetMatch, ...]
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


class ProgressKind(enum.Enum):
    DOCUMENT_PARSED = "document_parsed"
    CHUNKS_EMBEDDED = "chunks_embedded"
    DOCUMENT_STORED = "document_stored"
    DOCUMENT_UNCHANGED = "document_unchanged"
    DOCUMENT_FAILED = "document_failed"


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One step of ingest progress; counters are running totals for the whole batch."""

    kind: ProgressKind
    document_id: str
    documents_parsed: int
    chunks_embedded: int
    chunks_stored: int
    documents_failed: int
    chunk_count: int = 0
    error_field: str = ""
    error: str = ""
    # DOCUMENT_FAILED: the typed error behind the failure (it carries its gRPC status).
    failure: CallistoError | None = None
    # DOCUMENT_STORED: whether this was the document's first version.
    created: bool = False
    # SHA-256 (hex) and size of the document's bytes, once they were read.
    content_hash: str = ""
    size_bytes: int = 0


def section_path(section: Sequence[str]) -> str:
    """Serialise a heading path for storage ("A > B")."""
    return " > ".join(section)
