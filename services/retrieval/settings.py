"""Settings of the retrieval service process (environment variables, read once at start-up)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from callisto.services.common.config import CommonSettings, setting


@dataclasses.dataclass(frozen=True)
class RetrievalSettings(CommonSettings):
    """Where Milvus and the embedder are, and the limits the handlers enforce."""

    data_dir: str = setting(
        "CALLISTO_RETRIEVAL_DATA_DIR",
        ".callisto/retrieval",
        "Folder of the embedded Milvus Lite database (`callisto.db`), owned by this process.",
    )
    milvus_uri: str = setting(
        "CALLISTO_MILVUS_URI",
        "",
        "Milvus to use: empty runs Milvus Lite in the data dir; `http://host:19530` a server.",
    )
    milvus_token: str = setting(
        "CALLISTO_MILVUS_TOKEN", "", "Milvus server token (`user:password` or an API key)."
    )
    milvus_index: str = setting(
        "CALLISTO_MILVUS_INDEX", "HNSW", "Dense index of new collections: HNSW, FLAT, IVF_FLAT."
    )
    milvus_timeout_seconds: float = setting(
        "CALLISTO_MILVUS_TIMEOUT_SECONDS", 30.0, "Bound on one Milvus call."
    )
    triton_url: str = setting(
        "CALLISTO_TRITON_URL", "127.0.0.1:8001", "Triton Inference Server gRPC address (host:port)."
    )
    embedder_model: str = setting(
        "CALLISTO_EMBEDDER_MODEL", "embedder", "Triton model that embeds text (384-dim)."
    )
    embed_timeout_seconds: float = setting(
        "CALLISTO_EMBED_TIMEOUT_SECONDS",
        30.0,
        "Bound on one embedding request (a batch of up to 64 texts) to Triton.",
    )
    embed_concurrency: int = setting(
        "CALLISTO_EMBED_CONCURRENCY",
        1,
        "Ingestion's embedding requests in flight to Triton (a search waits behind at most "
        "these; raise it for a GPU or several model instances).",
    )
    embed_ingest_batch: int = setting(
        "CALLISTO_EMBED_INGEST_BATCH", 16, "Texts per ingestion embedding request (1-64)."
    )
    embed_query_concurrency: int = setting(
        "CALLISTO_EMBED_QUERY_CONCURRENCY",
        4,
        "Query embeddings in flight to Triton; separate from ingestion's, so searches never "
        "wait behind bulk batches.",
    )
    max_document_bytes: int = setting(
        "CALLISTO_RETRIEVAL_MAX_DOCUMENT_BYTES",
        20 * 1024 * 1024,
        "Largest document accepted; larger ones fail with RESOURCE_EXHAUSTED.",
    )
    max_inflated_bytes: int = setting(
        "CALLISTO_RETRIEVAL_MAX_INFLATED_BYTES",
        128 * 1024 * 1024,
        "Most a DOCX may inflate to, all parts together (declared and read); more fails with "
        "RESOURCE_EXHAUSTED before parsing.",
    )
    max_archive_entries: int = setting(
        "CALLISTO_RETRIEVAL_MAX_ARCHIVE_ENTRIES", 10_000, "Most parts a DOCX may have."
    )
    max_compression_ratio: float = setting(
        "CALLISTO_RETRIEVAL_MAX_COMPRESSION_RATIO",
        200.0,
        "Largest inflated-to-compressed ratio of a DOCX part over 1 MiB (zip bombs reach 1000).",
    )
    parse_workers: int = setting(
        "CALLISTO_RETRIEVAL_PARSE_WORKERS",
        2,
        "Worker processes parsing documents; more documents wait their turn.",
    )
    parse_workers_per_tenant: int = setting(
        "CALLISTO_RETRIEVAL_PARSE_WORKERS_PER_TENANT",
        0,
        "Parse workers one tenant's documents may occupy at once, so no tenant holds them all; "
        "0: half of them (at least one).",
    )
    parse_timeout_seconds: float = setting(
        "CALLISTO_RETRIEVAL_PARSE_TIMEOUT_SECONDS",
        60.0,
        "Wall time one document's parse may take; then its worker is killed and replaced and the "
        "document fails with RESOURCE_EXHAUSTED.",
    )
    parse_memory_bytes: int = setting(
        "CALLISTO_RETRIEVAL_PARSE_MEMORY_BYTES",
        2 * 1024**3,
        "Address-space limit (RLIMIT_AS) of each parse worker; 0 for none.",
    )
    chunk_size: int = setting(
        "CALLISTO_RETRIEVAL_CHUNK_SIZE", 1000, "Default chunk size in characters."
    )
    chunk_overlap: int = setting(
        "CALLISTO_RETRIEVAL_CHUNK_OVERLAP", 150, "Default overlap of consecutive chunks."
    )
    max_result_window: int = setting(
        "CALLISTO_RETRIEVAL_MAX_RESULT_WINDOW",
        100,
        "How deep search pages go (offset + page size); also the hybrid and rerank pool.",
    )
    mmr_lambda: float = setting(
        "CALLISTO_RETRIEVAL_MMR_LAMBDA",
        0.7,
        "Default MMR trade-off of `diversify`: 1 relevance only, 0 diversity only.",
    )
    hybrid_dense_weight: float = setting(
        "CALLISTO_RETRIEVAL_HYBRID_DENSE_WEIGHT",
        0.7,
        "Dense share (0-1) of hybrid search's default weighted fusion; keyword gets the rest.",
    )
    text_analyzer: str = setting(
        "CALLISTO_RETRIEVAL_TEXT_ANALYZER",
        "english",
        "Keyword (BM25) analyzer of new collections: a Snowball language (english, french,"
        " german, spanish, ...) or `none`; a collection keeps the one it was created with.",
    )
    max_entities_per_batch: int = setting(
        "CALLISTO_RETRIEVAL_MAX_ENTITIES_PER_BATCH", 500, "Entities one BatchUpsertEntities takes."
    )

    @property
    def resolved_milvus_uri(self) -> str:
        return self.milvus_uri or str(Path(self.data_dir).expanduser() / "callisto.db")
