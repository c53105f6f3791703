"""The retrieval service over gRPC: real Triton embedder, real Milvus Lite, real process."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from retrieval_test_support import (
    MAX_DOCUMENT_BYTES,
    Doc,
    bad_request,
    bearer,
    ingest,
    requests,
    results,
    violations,
)

from callisto.api.common.v1 import common_pb2
from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from callisto.services.retrieval.parsing import parse_document

Stub = pb_grpc.RetrievalServiceStub

MARKDOWN = b"""# Harbour Logistics Handbook

## Cold storage
Frozen goods are kept at minus twenty degrees Celsius in warehouse C.
Every pallet is scanned when it enters the cold room.

## Forklift safety
Forklift drivers must complete the annual safety refresher before operating in aisle nine.
"""
HTML = b"""<html><head><title>Canteen</title></head><body>
<h1>Canteen menu</h1><p>On Fridays the canteen serves grilled mackerel with potato salad.</p>
<h2>Opening hours</h2><p>The canteen opens at half past eleven and closes at two.</p>
</body></html>"""
CSV = b"""sku,product,price_eur
HB-100,Harbour crane rental per day,1450
HB-200,Tugboat assistance per hour,820
"""
TEXT = b"Visitors must sign in at the gatehouse and wear a high-visibility vest at all times.\n"


def make_pdf(pages: list[str]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    return bytes(pdf.output())


def make_docx() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Berth allocation", level=1)
    document.add_paragraph("Container ships longer than three hundred metres dock at berth seven.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


FORMATS = {
    "handbook-md": (MARKDOWN, "text/markdown"),
    "canteen-html": (HTML, "text/html"),
    "prices-csv": (CSV, "text/csv"),
    "visitors-txt": (TEXT, "text/plain"),
    "tides-pdf": (
        make_pdf(["Tide tables are published every Monday.", "High tide peaks at noon."]),
        "application/pdf",
    ),
    "berths-docx": (
        make_docx(),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ),
}


@pytest.fixture(scope="module")
async def port_key(rstub: Stub, tenant_keys: Callable[[str], str]) -> str:
    """Tenant `harbour` with one document of every format ingested."""
    key = tenant_keys("harbour")
    docs = [Doc(i, content, mime, tags=[i.split("-")[1], "port"]) for i, (content, mime) in
            FORMATS.items()]  # fmt: skip
    responses = await ingest(rstub, docs, bearer(key))
    outcomes = {i: r.outcome for i, r in results(responses).items()}
    assert outcomes == {i: pb.DOCUMENT_OUTCOME_CREATED for i in FORMATS}, results(responses)
    return key


async def search(stub: Stub, key: str, query: str, **fields: object) -> pb.SearchResponse:
    return await stub.Search(pb.SearchRequest(query=query, **fields), metadata=bearer(key))  # type: ignore[arg-type]


async def test_every_format_is_ingested_with_progress_and_a_summary(
    rstub: Stub, tenant_keys: Callable[[str], str]
) -> None:
    key = tenant_keys("formats")
    docs = [Doc(i, content, mime, piece=333) for i, (content, mime) in FORMATS.items()]
    responses = await ingest(rstub, docs, bearer(key))
    kinds = [r.WhichOneof("event") for r in responses]
    assert kinds[-1] == "summary" and "progress" in kinds
    assert [r.sequence for r in responses] == list(range(1, len(responses) + 1))
    by_id = results(responses)
    assert set(by_id) == set(FORMATS)
    for document_id, result in by_id.items():
        assert result.outcome == pb.DOCUMENT_OUTCOME_CREATED
        assert result.document.chunk_count >= 1
        assert result.document.size_bytes == len(FORMATS[document_id][0])
    summary = responses[-1].summary.progress
    assert summary.documents_parsed == len(FORMATS) and summary.documents_failed == 0


async def test_reingest_is_idempotent_update_replaces_and_delete_removes(
    rstub: Stub, tenant_keys: Callable[[str], str]
) -> None:
    key = tenant_keys("lifecycle")
    doc = Doc("notice", b"The ferry to the island leaves at seven in the morning.", "text/plain")
    first = results(await ingest(rstub, [doc], bearer(key)))["notice"]
    again = results(await ingest(rstub, [doc], bearer(key)))["notice"]
    assert first.outcome == pb.DOCUMENT_OUTCOME_CREATED
    assert again.outcome == pb.DOCUMENT_OUTCOME_UNCHANGED
    assert again.document.content_hash == first.document.content_hash

    changed = Doc("notice", b"The ferry to the island now leaves at nine in the evening.",
                  "text/plain")  # fmt: skip
    updated = results(await ingest(rstub, [changed], bearer(key)))["notice"]
    assert updated.outcome == pb.DOCUMENT_OUTCOME_UPDATED
    hits = (await search(rstub, key, "when does the ferry leave", mode=pb.SEARCH_MODE_KEYWORD)).hits
    assert [h.citation.text for h in hits] == [changed.content.decode()]

    got = await rstub.GetDocument(pb.GetDocumentRequest(name="documents/notice"),
                                  metadata=bearer(key))  # fmt: skip
    assert got.document.content_hash == updated.document.content_hash
    listed = await rstub.ListDocuments(pb.ListDocumentsRequest(), metadata=bearer(key))
    assert [d.name for d in listed.documents] == ["documents/notice"]

    await rstub.DeleteDocument(pb.DeleteDocumentRequest(name="documents/notice"),
                               metadata=bearer(key))  # fmt: skip
    assert not (await search(rstub, key, "ferry", mode=pb.SEARCH_MODE_KEYWORD)).hits
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await rstub.GetDocument(pb.GetDocumentRequest(name="documents/notice"),
                                metadata=bearer(key))  # fmt: skip
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "mode", [pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_KEYWORD, pb.SEARCH_MODE_HYBRID]
)
async def test_each_mode_finds_the_right_passage(rstub: Stub, port_key: str, mode: int) -> None:
    response = await search(rstub, port_key, "frozen goods cold storage temperature", mode=mode)
    assert response.hits[0].citation.document_id == "handbook-md"
    assert response.hits[0].rank == 1


async def test_weighted_fusion_and_diversify_return_cited_hits(rstub: Stub, port_key: str) -> None:
    weighted = await search(
        rstub, port_key, "fish on Fridays in the canteen",
        fusion=pb.FUSION_METHOD_WEIGHTED, dense_weight=0.7, keyword_weight=0.3,
    )  # fmt: skip
    assert weighted.hits[0].citation.document_id == "canteen-html"
    diverse = await search(rstub, port_key, "fish on Fridays in the canteen", diversify=True)
    assert diverse.hits[0].citation.document_id == "canteen-html"
    assert len({h.citation.chunk_id for h in diverse.hits}) == len(diverse.hits)


async def test_citations_point_at_the_exact_source_text(rstub: Stub, port_key: str) -> None:
    for query, document_id in [
        ("forklift safety refresher", "handbook-md"),
        ("high tide at noon", "tides-pdf"),
        ("tugboat assistance price", "prices-csv"),
        ("which berth for long container ships", "berths-docx"),
    ]:
        hits = (await search(rstub, port_key, query, filters=[
            pb.MetadataFilter(field="document_id", operator=pb.FILTER_OPERATOR_EQUAL,
                              value=common_pb2.AttributeValue(string_value=document_id))
        ])).hits  # fmt: skip
        assert hits, query
        content, mime = FORMATS[document_id]
        full_text = parse_document(content, mime).full_text
        for hit in hits:
            c = hit.citation
            assert c.document_id == document_id and c.title == document_id
            assert c.source_uri == f"test://{document_id}" and len(c.chunk_id) == 40
            assert full_text[c.start_offset : c.end_offset] == c.text
            assert c.score > 0
        if document_id == "tides-pdf":
            assert {h.citation.page for h in hits} <= {1, 2} and hits[0].citation.page == 2
        if document_id == "handbook-md":
            assert hits[0].citation.section == "Harbour Logistics Handbook > Forklift safety"


async def test_filters_on_tags_and_mime_type_restrict_hits(rstub: Stub, port_key: str) -> None:
    only_html = await search(rstub, port_key, "safety", page_size=20, filters=[
        pb.MetadataFilter(field="tags", operator=pb.FILTER_OPERATOR_CONTAINS,
                          value=common_pb2.AttributeValue(string_value="html")),
    ])  # fmt: skip
    assert only_html.hits and {h.citation.document_id for h in only_html.hits} == {"canteen-html"}
    not_md = await search(rstub, port_key, "safety", page_size=20, filters=[
        pb.MetadataFilter(field="mime_type", operator=pb.FILTER_OPERATOR_IN, values=[
            common_pb2.AttributeValue(string_value="text/plain"),
            common_pb2.AttributeValue(string_value="text/csv"),
        ]),
    ])  # fmt: skip
    assert {h.citation.document_id for h in not_md.hits} <= {"visitors-txt", "prices-csv"}


async def test_pages_follow_each_other_without_repeats(rstub: Stub, port_key: str) -> None:
    full = await search(rstub, port_key, "harbour", page_size=8)
    seen: list[str] = []
    token = ""
    for _ in range(10):
        page = await search(rstub, port_key, "harbour", page_size=3, page_token=token)
        seen.extend(h.citation.chunk_id for h in page.hits)
        token = page.next_page_token
        if not token:
            break
    assert seen[:8] == [h.citation.chunk_id for h in full.hits]
    assert len(seen) == len(set(seen))
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        first = await search(rstub, port_key, "harbour", page_size=3)
        await search(rstub, port_key, "crane", page_size=3, page_token=first.next_page_token)
    assert reused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in bad_request(reused.value)


async def test_min_score_drops_weak_hits(rstub: Stub, port_key: str) -> None:
    dense = await search(rstub, port_key, "grilled mackerel", mode=pb.SEARCH_MODE_DENSE)
    top = dense.hits[0].citation.score
    strict = await search(rstub, port_key, "grilled mackerel", mode=pb.SEARCH_MODE_DENSE,
                          min_score=top - 1e-6)  # fmt: skip
    assert [h.citation.chunk_id for h in strict.hits] == [dense.hits[0].citation.chunk_id]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"query": "  "}, "query"),
        ({"query": "x", "page_size": 101}, "page_size"),
        ({"query": "x", "page_size": -1}, "page_size"),
        ({"query": "x", "dense_weight": 2.0}, "dense_weight"),
        ({"query": "x", "page_token": "garbage!"}, "page_token"),
        (
            {"query": "x", "filters": [pb.MetadataFilter(
                field="tenant", operator=pb.FILTER_OPERATOR_EQUAL,
                value=common_pb2.AttributeValue(string_value="globex"))]},
            "filters[0].field",
        ),
        (
            {"query": "x", "filters": [pb.MetadataFilter(
                field="page", operator=pb.FILTER_OPERATOR_EQUAL,
                value=common_pb2.AttributeValue(string_value="one"))]},
            "filters[0].value",
        ),
        (
            {"query": "x", "filters": [pb.MetadataFilter(
                field="tags", operator=pb.FILTER_OPERATOR_GREATER,
                value=common_pb2.AttributeValue(string_value="a"))]},
            "filters[0].operator",
        ),
        (
            {"query": "x", "filters": [pb.MetadataFilter(
                field="title", operator=pb.FILTER_OPERATOR_EQUAL)]},
            "filters[0].value",
        ),
    ],
)  # fmt: skip
async def test_bad_search_requests_name_the_field(
    rstub: Stub, port_key: str, request_fields: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await rstub.Search(pb.SearchRequest(**request_fields), metadata=bearer(port_key))  # type: ignore[arg-type]
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in bad_request(failed.value), bad_request(failed.value)


async def test_bad_documents_fail_alone_while_the_batch_goes_on(
    rstub: Stub, tenant_keys: Callable[[str], str]
) -> None:
    key = tenant_keys("mixed")
    docs = [
        Doc("good-1", b"Lighthouse keepers log the weather every three hours.", "text/plain"),
        Doc("corrupt", b"%PDF-1.7\nthis is not really a pdf", "application/pdf"),
        Doc("unsupported", b"\x00\x01", "image/png"),
        Doc("too-big", b"a" * (MAX_DOCUMENT_BYTES + 10), "text/plain", piece=64 * 1024),
        Doc("bad id!", b"text", "text/plain"),
        Doc("good-2", b"The pilot boat meets every tanker at the outer buoy.", "text/plain"),
    ]
    responses = await ingest(rstub, docs, bearer(key))
    by_id = results(responses)
    assert by_id["good-1"].outcome == by_id["good-2"].outcome == pb.DOCUMENT_OUTCOME_CREATED
    expected = {
        "corrupt": (grpc.StatusCode.INVALID_ARGUMENT, "data"),
        "unsupported": (grpc.StatusCode.INVALID_ARGUMENT, "header.mime_type"),
        "too-big": (grpc.StatusCode.RESOURCE_EXHAUSTED, "data"),
        "bad id!": (grpc.StatusCode.INVALID_ARGUMENT, "header.document_id"),
    }
    for document_id, (code, field) in expected.items():
        result = by_id[document_id]
        assert result.outcome == pb.DOCUMENT_OUTCOME_FAILED
        assert result.error.code == code.value[0], (document_id, result.error)
        assert field in violations(result.error), (document_id, result.error)
    assert responses[-1].summary.progress.documents_failed == 4


async def test_a_broken_stream_ends_with_a_terminal_error(
    rstub: Stub, tenant_keys: Callable[[str], str]
) -> None:
    async def broken() -> object:
        yield pb.IngestDocumentsRequest(data=b"data before any header")

    call = rstub.IngestDocuments(broken(), metadata=bearer(tenant_keys("mixed")))  # type: ignore[arg-type]
    responses = [r async for r in call]
    assert responses[-1].WhichOneof("event") == "error"
    assert responses[-1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_unary_ingest_maps_failures_to_statuses(
    rstub: Stub, tenant_keys: Callable[[str], str]
) -> None:
    key = tenant_keys("unary")
    ok = await rstub.IngestDocument(
        pb.IngestDocumentRequest(
            header=pb.DocumentHeader(source_uri="https://example.test/a b.txt",
                                     mime_type="text/plain"),
            content=b"Anchors are inspected yearly.",
        ),
        metadata=bearer(key),
    )  # fmt: skip
    assert ok.result.outcome == pb.DOCUMENT_OUTCOME_CREATED
    assert ok.result.document_id == "https:-example.test-a-b.txt"
    for header, content, code, field in [
        (pb.DocumentHeader(document_id="x", mime_type="text/plain"), b"", "INVALID_ARGUMENT",
         "content"),
        (pb.DocumentHeader(document_id="x", mime_type="application/pdf"), b"%PDF-1.4 junk",
         "INVALID_ARGUMENT", "content"),
        (pb.DocumentHeader(document_id="x", mime_type="text/plain"),
         b"a" * (MAX_DOCUMENT_BYTES + 1), "RESOURCE_EXHAUSTED", "content"),
        (pb.DocumentHeader(document_id='x" or tenant != "', mime_type="text/plain"), b"a",
         "INVALID_ARGUMENT", "header.document_id"),
    ]:  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await rstub.IngestDocument(
                pb.IngestDocumentRequest(header=header, content=content), metadata=bearer(key)
            )
        assert failed.value.code().name == code
        assert field in bad_request(failed.value), bad_request(failed.value)


async def test_document_names_are_validated(rstub: Stub, port_key: str) -> None:
    for name in ["notes/x", "documents/", 'documents/x" or 1==1']:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await rstub.GetDocument(pb.GetDocumentRequest(name=name), metadata=bearer(port_key))
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "name" in bad_request(failed.value)


async def test_list_documents_pages_and_filters_by_tag(rstub: Stub, port_key: str) -> None:
    names: list[str] = []
    token = ""
    while True:
        page = await rstub.ListDocuments(
            pb.ListDocumentsRequest(page_size=4, page_token=token), metadata=bearer(port_key)
        )
        names.extend(d.name for d in page.documents)
        token = page.next_page_token
        if not token:
            break
    assert names == sorted(f"documents/{i}" for i in FORMATS)
    tagged = await rstub.ListDocuments(
        pb.ListDocumentsRequest(tags=["pdf", "port"]), metadata=bearer(port_key)
    )
    assert [d.name for d in tagged.documents] == ["documents/tides-pdf"]


async def test_a_cancelled_stream_stops_and_stores_nothing_more(
    rstub: Stub, tenant_keys: Callable[[str], str]
) -> None:
    key = tenant_keys("cancel")
    never = asyncio.Event()

    async def stalled() -> AsyncIterator[pb.IngestDocumentsRequest]:
        for doc in [Doc("done", b"The harbour master retires in June.", "text/plain")]:
            async for message in requests([doc]):
                yield message
        yield pb.IngestDocumentsRequest(
            header=pb.DocumentHeader(document_id="half", mime_type="text/plain")
        )
        yield pb.IngestDocumentsRequest(data=b"Half of a document that never ends")
        await never.wait()

    call = rstub.IngestDocuments(stalled(), metadata=bearer(key))
    async for response in call:
        if response.WhichOneof("event") == "document":
            assert response.document.document_id == "done"
            break
    call.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED
    for name, code in [("documents/done", None), ("documents/half", grpc.StatusCode.NOT_FOUND)]:
        try:
            await rstub.GetDocument(pb.GetDocumentRequest(name=name), metadata=bearer(key))
            assert code is None
        except grpc.aio.AioRpcError as error:
            assert error.code() == code
