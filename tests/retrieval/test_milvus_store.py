from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

import pytest

from callisto.services.retrieval.embedder import Embedder
from callisto.services.retrieval.errors import InvalidArgument, InvalidFilter, NotFound
from callisto.services.retrieval.filters import Condition
from callisto.services.retrieval.ingest_pipeline import IngestDocument, IngestPipeline
from callisto.services.retrieval.milvus_store import MilvusStore
from callisto.services.retrieval.models import (
    AttributeValue,
    DocumentMeta,
    Fusion,
    FusionKind,
    ProgressEvent,
    ProgressKind,
    SearchMode,
)
from callisto.services.retrieval.search import Retriever, SearchRequest

CORPUS = {
    "milvus-guide": (
        "# Milvus\nMilvus stores dense vectors and sparse BM25 vectors for hybrid search."
    ),
    "redis-guide": "# Redis\nRedis keeps conversations in streams with append only files.",
    "triton-guide": "# Triton\nTriton inference server hosts the embedder and the language model.",
    "envoy-guide": "# Envoy\nEnvoy gateway transcodes HTTP JSON requests into gRPC calls.",
}


async def _bytes(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 16):
        yield data[i : i + 16]


def doc(
    tenant: str,
    document_id: str,
    text: str,
    *,
    tags: Sequence[str] = (),
    attributes: Mapping[str, AttributeValue] | None = None,
    mime_type: str = "text/markdown",
) -> IngestDocument:
    meta = DocumentMeta(
        tenant=tenant,
        document_id=document_id,
        title=document_id.replace("-", " ").title(),
        source_uri=f"file:///{document_id}.md",
        mime_type=mime_type,
        tags=tuple(tags),
        attributes=dict(attributes or {}),
    )
    return IngestDocument(meta=meta, content=_bytes(text.encode()))


async def ingest(
    store: MilvusStore, embedder: Embedder, documents: Sequence[IngestDocument]
) -> list[ProgressEvent]:
    async def source() -> AsyncIterator[IngestDocument]:
        for d in documents:
            yield d

    return [event async for event in IngestPipeline(store, embedder).run(source())]


async def seed(store: MilvusStore, embedder: Embedder, tenant: str) -> None:
    await ingest(
        store,
        embedder,
        [
            doc(
                tenant,
                name,
                text,
                tags=[name.split("-")[0], "guide"],
                attributes={"year": 2024 + i, "public": i % 2 == 0},
            )
            for i, (name, text) in enumerate(CORPUS.items())
        ],
    )


@pytest.mark.parametrize("mode", list(SearchMode))
async def test_each_mode_ranks_the_right_document_first(
    store: MilvusStore, embedder: Embedder, tenant: str, mode: SearchMode
) -> None:
    await seed(store, embedder, tenant)
    retriever = Retriever(store, embedder)
    hits = await retriever.search(
        SearchRequest(tenant=tenant, query="sparse BM25 vectors hybrid search", mode=mode, top_k=3)
    )
    assert hits[0].document_id == "milvus-guide"
    assert hits[0].score >= hits[-1].score
    top = hits[0]
    assert (top.title, top.source_uri, top.section) == (
        "Milvus Guide",
        "file:///milvus-guide.md",
        ("Milvus",),
    )
    assert top.text.startswith("Milvus") and top.end - top.start == len(top.text)


async def test_weighted_fusion_and_threshold_and_offset(
    store: MilvusStore, embedder: Embedder, tenant: str
) -> None:
    await seed(store, embedder, tenant)
    retriever = Retriever(store, embedder)
    request = SearchRequest(
        tenant=tenant,
        query="Redis streams conversations",
        top_k=4,
        fusion=Fusion(kind=FusionKind.WEIGHTED, dense_weight=0.7, sparse_weight=0.3),
    )
    hits = await retriever.search(request)
    assert hits[0].document_id == "redis-guide"
    second_page = await retriever.search(
        SearchRequest(tenant=tenant, query=request.query, top_k=1, offset=1, fusion=request.fusion)
    )
    assert second_page[0].chunk_id == hits[1].chunk_id
    dense = await retriever.search(
        SearchRequest(
            tenant=tenant,
            query="Redis streams conversations",
            mode=SearchMode.DENSE,
            top_k=4,
            score_threshold=0.3,
        )
    )
    assert [h.document_id for h in dense] == ["redis-guide"]


async def test_reingest_same_content_writes_nothing(
    store: MilvusStore, embedder: Embedder, tenant: str
) -> None:
    await seed(store, embedder, tenant)
    before = await store.count_chunks(tenant)
    events = await ingest(
        store,
        embedder,
        [
            doc(
                tenant,
                "milvus-guide",
                CORPUS["milvus-guide"],
                tags=["milvus", "guide"],
                attributes={"year": 2024, "public": True},
            )
        ],
    )
    assert [e.kind for e in events] == [ProgressKind.DOCUMENT_UNCHANGED]
    assert await store.count_chunks(tenant) == before


async def test_update_replaces_chunks_and_delete_removes_all(
    store: MilvusStore, embedder: Embedder, tenant: str
) -> None:
    long_text = "# Long\n" + " ".join(f"Old sentence {i} about apples." for i in range(200))
    await ingest(store, embedder, [doc(tenant, "doc-1", long_text)])
    old = await store.get_document(tenant, "doc-1")
    assert old.chunk_count > 3
    await ingest(store, embedder, [doc(tenant, "doc-1", "# Short\nNew text about pears.")])
    new = await store.get_document(tenant, "doc-1")
    assert new.chunk_count == 1 and new.content_hash != old.content_hash
    assert new.created_time_ms == old.created_time_ms
    assert await store.count_chunks(tenant, [Condition("document_id", "eq", "doc-1")]) == 1
    hits = await store.search_chunks(tenant, mode=SearchMode.BM25, query_text="apples", top_k=5)
    assert hits == []
    assert await store.delete_document(tenant, "doc-1") >= 1
    assert await store.count_chunks(tenant) == 0
    with pytest.raises(NotFound):
        await store.get_document(tenant, "doc-1")


async def test_list_documents_pages_by_id(
    store: MilvusStore, embedder: Embedder, tenant: str
) -> None:
    await seed(store, embedder, tenant)
    first = await store.list_documents(tenant, page_size=3)
    assert [d.document_id for d in first.documents] == [
        "envoy-guide",
        "milvus-guide",
        "redis-guide",
    ]
    second = await store.list_documents(tenant, page_size=3, page_token=first.next_page_token)
    assert [d.document_id for d in second.documents] == ["triton-guide"]
    assert second.next_page_token == ""


async def test_metadata_filters(store: MilvusStore, embedder: Embedder, tenant: str) -> None:
    await seed(store, embedder, tenant)

    async def ids(*conditions: Condition) -> set[str]:
        hits = await store.search_chunks(
            tenant,
            mode=SearchMode.BM25,
            query_text="vectors redis triton envoy gateway",
            top_k=10,
            conditions=conditions,
        )
        return {h.document_id for h in hits}

    assert await ids(Condition("tags", "contains", "redis")) == {"redis-guide"}
    assert await ids(Condition("tags", "contains_any", ["redis", "envoy"])) == {
        "redis-guide",
        "envoy-guide",
    }
    assert await ids(Condition("attributes.year", "ge", 2026)) == {"triton-guide", "envoy-guide"}
    assert await ids(Condition("attributes.public", "eq", True)) == {"milvus-guide", "triton-guide"}
    assert await ids(Condition("document_id", "in", ["envoy-guide"])) == {"envoy-guide"}
    with pytest.raises(InvalidFilter):
        await ids(Condition("tenant", "eq", "x"))


@pytest.mark.parametrize(
    "value", ['x" or tenant != "', '") or (1==1', 'guide" || tenant == "victim', "guide\\"]
)
async def test_filter_injection_returns_nothing_of_another_tenant(
    store: MilvusStore, embedder: Embedder, tenant: str, value: str
) -> None:
    victim = f"{tenant}-victim"
    await seed(store, embedder, victim)
    await ingest(store, embedder, [doc(tenant, "own", "# Own\nOur own vectors.", tags=["own"])])
    for condition in (Condition("tags", "contains", value), Condition("title", "eq", value)):
        for mode in (SearchMode.BM25, SearchMode.HYBRID):
            hits = await Retriever(store, embedder).search(
                SearchRequest(tenant=tenant, query="vectors", mode=mode, conditions=[condition])
            )
            assert hits == []
    assert await store.count_chunks(victim) == len(CORPUS)


async def test_crafted_document_id_is_rejected_and_touches_nothing(
    store: MilvusStore, embedder: Embedder, tenant: str
) -> None:
    victim = f"{tenant}-other"
    await seed(store, embedder, victim)
    crafted = f'a" or tenant == "{victim}'
    with pytest.raises(InvalidArgument):
        await store.delete_document(tenant, crafted)
    with pytest.raises(InvalidArgument):
        await store.get_document(tenant, crafted)
    events = await ingest(store, embedder, [doc(tenant, crafted, "# X\nhello")])
    assert events[0].kind is ProgressKind.DOCUMENT_FAILED and events[0].error_field == "document_id"
    assert await store.count_chunks(victim) == len(CORPUS)


async def test_diversify_spreads_near_duplicates(
    store: MilvusStore, embedder: Embedder, tenant: str
) -> None:
    text = "Milvus stores dense vectors for hybrid search in collections."
    await ingest(
        store,
        embedder,
        [
            doc(tenant, "dup-1", f"# A\n{text}"),
            doc(tenant, "dup-2", f"# A\n{text} Again."),
            doc(tenant, "other", "# B\nHybrid search mixes BM25 keywords with other signals."),
        ],
    )
    query = "hybrid search dense vectors"
    plain = await Retriever(store, embedder).search(
        SearchRequest(tenant=tenant, query=query, mode=SearchMode.DENSE, top_k=2)
    )
    assert {h.document_id for h in plain} == {"dup-1", "dup-2"}
    diverse = await Retriever(store, embedder).search(
        SearchRequest(
            tenant=tenant,
            query=query,
            mode=SearchMode.DENSE,
            top_k=2,
            diversify=True,
            mmr_lambda=0.3,
        )
    )
    assert {h.document_id for h in diverse} == {"dup-1", "other"} or {
        h.document_id for h in diverse
    } == {"dup-2", "other"}
