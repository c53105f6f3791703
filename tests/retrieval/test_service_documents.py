"""Document metadata and storage errors through the retrieval service (real Triton embedder,
real Milvus Lite, real process)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from retrieval_test_support import Doc, bad_request, bearer, ingest, results

from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc

Stub = pb_grpc.RetrievalServiceStub


async def test_documents_report_their_size_and_the_time_of_their_last_update(
    rstub: Stub, tenant_keys: Callable[[str], str]
) -> None:
    key = tenant_keys("document-metadata")
    first = Doc("timetable", b"The ferry leaves at seven.", "text/plain")
    await ingest(rstub, [first], bearer(key))
    request = pb.GetDocumentRequest(name="documents/timetable")
    before = (await rstub.GetDocument(request, metadata=bearer(key))).document
    assert before.size_bytes == len(first.content)

    await asyncio.sleep(0.05)
    second = Doc("timetable", b"The ferry now leaves at nine in the evening.", "text/plain")
    outcome = results(await ingest(rstub, [second], bearer(key)))["timetable"].outcome
    assert outcome == pb.DOCUMENT_OUTCOME_UPDATED
    after = (await rstub.GetDocument(request, metadata=bearer(key))).document
    assert after.size_bytes == len(second.content)
    assert after.update_time.ToMilliseconds() > before.update_time.ToMilliseconds()
    listed = await rstub.ListDocuments(pb.ListDocumentsRequest(), metadata=bearer(key))
    assert [(d.size_bytes, d.update_time) for d in listed.documents] == [
        (after.size_bytes, after.update_time)
    ]


@pytest.mark.parametrize("length", [65, 128])
async def test_facet_names_longer_than_the_schema_allows_are_invalid_not_unavailable(
    rstub: Stub, tenant_keys: Callable[[str], str], length: int
) -> None:
    key = tenant_keys("long-facets")
    entity = pb.Entity(
        name="entities/e1",
        entity_type="exhibitor",
        title="Crane",
        master="A harbour crane.",
        facets={"f" * length: "Lifts forty tonnes."},
    )
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await rstub.BatchUpsertEntities(
            pb.BatchUpsertEntitiesRequest(entities=[entity]), metadata=bearer(key)
        )
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "entities[0].facets" in bad_request(failed.value)
    assert "max_length" not in (failed.value.details() or "")
