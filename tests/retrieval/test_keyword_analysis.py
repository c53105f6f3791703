"""Keyword (BM25) search analyses text: stemming and stop words, chosen per collection."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
