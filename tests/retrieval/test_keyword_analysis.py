"""Keyword (BM25) search analyses text: stemming and stop words, chosen per collection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from callisto.services.retrieval.analysis import TextAnalyzer
from callisto.services.retrieval.embedder import Embedder
from callisto.services.retrieval.errors import InvalidArgument
from callisto.services.retrieval.ingest_pipeline import IngestDocument, IngestPipeline
from callisto.services.retrieval.milvus_store import MilvusConfig, MilvusStore
from callisto.services.retrieval.models import DocumentMeta, SearchMode


def markdown(tenant: str, document_id: str, text: str) -> IngestDocument:
    async def content() -> AsyncIterator[bytes]:
        yield text.encode()

    meta = DocumentMeta(tenant=tenant, document_id=document_id, mime_type="text/markdown")
    return IngestDocument(meta=meta, content=content())


async def ingest(store: MilvusStore, embedder: Embedder, tenant: str, docs: dict[str, str]) -> None:
    async def source() -> AsyncIterator[IngestDocument]:
        for document_id, text in docs.items():
            yield markdown(tenant, document_id, text)

    events = [e async for e in IngestPipeline(store, embedder).run(source())]
    assert not any(e.error for e in events), events


async def keyword(store: MilvusStore, tenant: str, query: str) -> list[str]:
    hits = await store.search_chunks(tenant, mode=SearchMode.BM25, query_text=query, top_k=10)
    return [h.document_id for h in hits]


def test_english_analyzer_stems_and_drops_stop_words() -> None:
    analyzer = TextAnalyzer("english")
    assert analyzer.analyse("Monitoring the Servers") == "monitor server"
    assert analyzer.analyse("monitored") == analyzer.analyse("monitors") == "monitor"
    assert TextAnalyzer("none").analyse("Monitoring the Servers") == "monitoring the servers"


def test_unknown_analyzer_is_rejected() -> None:
    with pytest.raises(InvalidArgument):
        TextAnalyzer("klingon")


async def test_keyword_search_matches_other_forms_of_a_word(
    store: MilvusStore, embedder: Embedder, tenant: str
) -> None:
    await ingest(
        store,
        embedder,
        tenant,
        {"ops": "# Ops\nWe monitor the servers around the clock.", "misc": "# Misc\nLunch menu."},
    )
    assert await keyword(store, tenant, "monitoring") == ["ops"]
    assert await keyword(store, tenant, "servers monitored") == ["ops"]


async def test_stop_words_neither_match_nor_rank(
    store: MilvusStore, embedder: Embedder, tenant: str
) -> None:
    await ingest(
        store,
        embedder,
        tenant,
        {
            "filler": "# Notes\nIt is the one that is in the box, and it is on the shelf.",
            "pumps": "# Pumps\nPump maintenance schedule.",
        },
    )
    assert set(await keyword(store, tenant, "the pump is in the box")) == {"pumps", "filler"}
    assert await keyword(store, tenant, "what is the") == []
    # Only stop words: no keyword hits and no error; hybrid still has the dense side.
    assert await keyword(store, tenant, "the and of") == []


async def test_a_collection_keeps_the_analyzer_it_was_created_with(
    tmp_path: Path, embedder: Embedder
) -> None:
    uri = str(tmp_path / "french.db")
    french = await MilvusStore.open(MilvusConfig(uri=uri, text_analyzer="french"))
    try:
        await ingest(french, embedder, "t", {"fr": "# Note\nNous finissons avec les chevaux."})
    finally:
        await french.close()
    reopened = await MilvusStore.open(MilvusConfig(uri=uri, text_analyzer="english"))
    try:
        # French stemming, not English: "finir" and "cheval" match "finissons" and "chevaux".
        assert await keyword(reopened, "t", "finir") == ["fr"]
        assert await keyword(reopened, "t", "cheval") == ["fr"]
    finally:
        await reopened.close()


async def test_a_collection_made_before_analysis_still_searches_raw_words(
    tmp_path: Path, embedder: Embedder
) -> None:
    uri = str(tmp_path / "legacy.db")
    _create_legacy_chunks(uri)
    store = await MilvusStore.open(MilvusConfig(uri=uri))
    try:
        await ingest(store, embedder, "t", {"ops": "# Ops\nWe monitor the servers."})
        assert await keyword(store, "t", "monitor servers") == ["ops"]
    finally:
        await store.close()


def _create_legacy_chunks(uri: str) -> None:
    """The chunk collection as created before the keyword analyzer: BM25 over ``text``."""
    from pymilvus import DataType, Function, FunctionType, MilvusClient

    client = MilvusClient(uri=uri)
    config = MilvusConfig(uri=uri)
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    fields: Sequence[tuple[str, DataType, dict[str, object]]] = [
        ("id", DataType.VARCHAR, {"max_length": 64, "is_primary": True}),
        ("tenant", DataType.VARCHAR, {"max_length": 128, "is_partition_key": True}),
        ("document_id", DataType.VARCHAR, {"max_length": 128}),
        ("source_uri", DataType.VARCHAR, {"max_length": 2048}),
        ("mime_type", DataType.VARCHAR, {"max_length": 128}),
        ("tags", DataType.ARRAY,
         {"element_type": DataType.VARCHAR, "max_capacity": 64, "max_length": 128}),
        ("chunk_index", DataType.INT64, {}),
        ("chunk_count", DataType.INT64, {}),
        ("start_offset", DataType.INT64, {}),
        ("end_offset", DataType.INT64, {}),
        ("page", DataType.INT64, {}),
        ("section", DataType.VARCHAR, {"max_length": 2048}),
        ("created_time_ms", DataType.INT64, {}),
        ("title", DataType.VARCHAR, {"max_length": 1024}),
        ("attributes", DataType.JSON, {}),
        ("content_hash", DataType.VARCHAR, {"max_length": 64}),
        ("text", DataType.VARCHAR, {"max_length": 65535, "enable_analyzer": True}),
        ("dense", DataType.FLOAT_VECTOR, {"dim": config.dim}),
        ("sparse", DataType.SPARSE_FLOAT_VECTOR, {}),
    ]  # fmt: skip
    for name, kind, options in fields:
        schema.add_field(name, kind, **options)
    schema.add_function(
        Function(
            name="legacy_bm25",
            function_type=FunctionType.BM25,
            input_field_names=["text"],
            output_field_names=["sparse"],
        )
    )
    index = client.prepare_index_params()
    index.add_index("dense", index_type="FLAT", metric_type="COSINE")
    index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection(config.chunk_collection, schema=schema, index_params=index)
    client.close()
