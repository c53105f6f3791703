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
        "CALLISTO_RETRIEVAL_MMR_LAMBDA", 0.7, "MMR rerank trade-off: 1 relevance only, 0 diversity."
    )
    max_entities_per_batch: int = setting(
        "CALLISTO_RETRIEVAL_MAX_ENTITIES_PER_BATCH", 500, "Entities one BatchUpsertEntities takes."
    )

    @property
    def resolved_milvus_uri(self) -> str:
        return self.milvus_uri or str(Path(self.data_dir).expanduser() / "callisto.db")
