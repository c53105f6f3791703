"""No tenant can see or touch another's text through the gRPC service: not with filters, not
with crafted ids, not with entity names."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from retrieval_test_support import Doc, bad_request, bearer, ingest, results

from callisto.api.common.v1 import common_pb2
from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc

Stub = pb_grpc.RetrievalServiceStub
SECRET = b"Project Nightjar: the acquisition price is EUR 412 million, closing in March."


@pytest.fixture(scope="module")
async def keys(rstub: Stub, tenant_keys: Callable[[str], str]) -> tuple[str, str]:
    """(owner, intruder): the owner holds the secret document and a secret entity."""
    owner, intruder = tenant_keys("iso-owner"), tenant_keys("iso-intruder")
    for key, text in [(owner, SECRET), (intruder, b"Our canteen serves soup on Mondays.")]:
        outcome = results(await ingest(rstub, [Doc("plan", text, "text/plain")], bearer(key)))
        assert outcome["plan"].outcome == pb.DOCUMENT_OUTCOME_CREATED
    await rstub.BatchUpsertEntities(
        pb.BatchUpsertEntitiesRequest(entities=[pb.Entity(
            name="entities/speaker-1", entity_type="speaker", title="Nightjar lead",
            master="Leads the confidential Nightjar acquisition.", facets={"bio": "acquisitions"},
        )]),
        metadata=bearer(owner),
    )  # fmt: skip
    return owner, intruder


def texts(response: pb.SearchResponse) -> list[str]:
    return [h.citation.text for h in response.hits]


@pytest.mark.parametrize(
    "field",
    ["document_id", "title", "source_uri", "attributes.x", "mime_type"],
)
async def test_filter_injection_returns_nothing_of_another_tenant(
    rstub: Stub, keys: tuple[str, str], field: str
) -> None:
    _, intruder = keys
    for payload in ['plan" or tenant == "iso-owner', 'x") or (tenant != "', 'plan\\" || true']:
        response = await rstub.Search(
            pb.SearchRequest(
                query="acquisition price Nightjar",
                mode=pb.SEARCH_MODE_KEYWORD,
                page_size=100,
                filters=[pb.MetadataFilter(
                    field=field, operator=pb.FILTER_OPERATOR_NOT_EQUAL,
                    value=common_pb2.AttributeValue(string_value=payload),
                )],
            ),
            metadata=bearer(intruder),
        )  # fmt: skip
        assert all("Nightjar" not in t for t in texts(response))


async def test_an_unknown_field_like_tenant_is_rejected(rstub: Stub, keys: tuple[str, str]) -> None:
    _, intruder = keys
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await rstub.Search(
            pb.SearchRequest(query="x", filters=[pb.MetadataFilter(
                field="tenant == \"iso-owner\" or id", operator=pb.FILTER_OPERATOR_EQUAL,
                value=common_pb2.AttributeValue(string_value="a"))]),
            metadata=bearer(intruder),
        )  # fmt: skip
    assert "filters[0].field" in bad_request(failed.value)


async def test_every_search_mode_stays_inside_the_tenant(
    rstub: Stub, keys: tuple[str, str]
) -> None:
    owner, intruder = keys
    for mode in (pb.SEARCH_MODE_DENSE, pb.SEARCH_MODE_KEYWORD, pb.SEARCH_MODE_HYBRID):
        for diversify in (False, True):
            request = pb.SearchRequest(
                query="Nightjar acquisition price", mode=mode, diversify=diversify, page_size=100
            )
            mine = await rstub.Search(request, metadata=bearer(owner))
            theirs = await rstub.Search(request, metadata=bearer(intruder))
            assert texts(mine)[0] == SECRET.decode()
            assert all("Nightjar" not in t for t in texts(theirs))


async def test_crafted_ids_cannot_read_or_delete_another_tenants_document(
    rstub: Stub, keys: tuple[str, str]
) -> None:
    owner, intruder = keys
    # The same plain id exists in both tenants: each sees only its own.
    own = await rstub.GetDocument(pb.GetDocumentRequest(name="documents/plan"),
                                  metadata=bearer(intruder))  # fmt: skip
    assert "canteen" in own.document.title or own.document.content_hash
    for crafted in ['plan" or document_id != "', 'plan") or (1 == 1', "plan\nor true", "*"]:
        name = f"documents/{crafted}"
        for call in (rstub.GetDocument, rstub.DeleteDocument):
            request_type = (
                pb.GetDocumentRequest if call is rstub.GetDocument else pb.DeleteDocumentRequest
            )
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call(request_type(name=name), metadata=bearer(intruder))  # type: ignore[operator]
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as rejected:
        await rstub.DeleteEntity(pb.DeleteEntityRequest(name='entities/speaker-1" or "1'),
                                 metadata=bearer(intruder))  # fmt: skip
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The intruder deleting its own "plan" leaves the owner's document alone.
    await rstub.DeleteDocument(pb.DeleteDocumentRequest(name="documents/plan"),
                               metadata=bearer(intruder))  # fmt: skip
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await rstub.DeleteEntity(pb.DeleteEntityRequest(name="entities/speaker-1"),
                                 metadata=bearer(intruder))  # fmt: skip
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    still = await rstub.GetDocument(pb.GetDocumentRequest(name="documents/plan"),
                                    metadata=bearer(owner))  # fmt: skip
    assert still.document.chunk_count == 1
    hits = await rstub.Search(pb.SearchRequest(query="Nightjar", mode=pb.SEARCH_MODE_KEYWORD),
                              metadata=bearer(owner))  # fmt: skip
    assert texts(hits) == [SECRET.decode()]


async def test_entities_and_listings_are_per_tenant(rstub: Stub, keys: tuple[str, str]) -> None:
    owner, intruder = keys
    theirs = await rstub.SearchEntities(
        pb.SearchEntitiesRequest(query="Nightjar acquisition lead"), metadata=bearer(intruder)
    )
    assert not theirs.hits
    mine = await rstub.SearchEntities(
        pb.SearchEntitiesRequest(query="Nightjar acquisition lead"), metadata=bearer(owner)
    )
    assert mine.hits[0].entity.name == "entities/speaker-1"
    listed = await rstub.ListDocuments(pb.ListDocumentsRequest(), metadata=bearer(intruder))
    assert all("Nightjar" not in d.title for d in listed.documents)


async def test_calls_without_a_key_are_unauthenticated(rstub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await rstub.Search(pb.SearchRequest(query="Nightjar"))
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
