"""A fixed-seed barrage of hostile requests at every retrieval RPC, the IngestDocuments stream
included (data before its header, two headers, no end, bytes that are not the declared type):
each answer is OK or a client error (never INTERNAL/UNKNOWN), every stream ends with exactly one
terminal message, the service stays SERVING, and tenant acme's document and entity are
byte-for-byte intact and invisible to tenant globex."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from hostile_support import (
    Hostile,
    Metadata,
    call_unary,
    check_forged_page_tokens,
    check_rpc_error,
    check_status,
    describe,
    request_class,
    send_undecodable,
    stream_requests,
    unary_methods,
)
from retrieval_test_support import bearer

from callisto.api.common.v1.common_pb2 import AttributeValue
from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from callisto.mesh.processes import ServiceProcess

SERVICE = pb.DESCRIPTOR.services_by_name["RetrievalService"]
COLLECTIONS = ("documents", "entities", "tenants/globex/documents")
MIME_TYPES = (
    "text/plain",
    "text/markdown",
    "text/csv",
    "text/html",
    "application/json",
    "application/pdf",
    "application/octet-stream",
    "image/png",
    "text/plain; charset=utf-16",
    "",
)
ROUNDS = 60
SECRET = "acme-secret-7f3d"
PRECIOUS_DOCUMENT = "hostile-precious-doc"
PRECIOUS_ENTITY = "hostile-precious-entity"


def seeds(document: str, entity: str) -> dict[str, Message]:
    """A valid request per RPC, aimed at the given resources, for the barrage to mutate."""
    keep = pb.MetadataFilter(
        field="tags", operator=pb.FILTER_OPERATOR_CONTAINS, value=AttributeValue(string_value="a")
    )
    return {
        "IngestDocument": pb.IngestDocumentRequest(
            header=pb.DocumentHeader(
                document_id=document.removeprefix("documents/"),
                title="t",
                mime_type="text/plain",
                tags=["a"],
                attributes={"year": AttributeValue(int_value=2024)},
                chunking=pb.ChunkingOptions(chunk_size=200, chunk_overlap=20),
            ),
            content=b"hello world, a plan",
        ),
        "GetDocument": pb.GetDocumentRequest(name=document),
        "ListDocuments": pb.ListDocumentsRequest(page_size=2, tags=["a"]),
        "DeleteDocument": pb.DeleteDocumentRequest(name=document),
        "Search": pb.SearchRequest(
            query="plan", mode=pb.SEARCH_MODE_HYBRID, page_size=3, filters=[keep], diversify=True
        ),
        "BatchUpsertEntities": pb.BatchUpsertEntitiesRequest(
            entities=[
                pb.Entity(
                    name=entity, entity_type="speaker", title="t", master="m", facets={"f": "v"}
                )
            ]
        ),
        "DeleteEntity": pb.DeleteEntityRequest(name=entity),
        "SearchEntities": pb.SearchEntitiesRequest(
            query="m", entity_types=["speaker"], page_size=3
        ),
    }


def hostile_header(source: Hostile) -> pb.DocumentHeader:
    header = source.request(pb.DocumentHeader(), huge=0)
    assert isinstance(header, pb.DocumentHeader)
    if source.rng.random() < 0.7:
        header.mime_type = source.choice(MIME_TYPES)
    if source.rng.random() < 0.5:
        header.document_id = source.choice(("scratch", "scratch-2", PRECIOUS_DOCUMENT + "-x"))
    if source.rng.random() < 0.5:
        header.ClearField("chunking")
    return header


def hostile_stream(source: Hostile) -> list[pb.IngestDocumentsRequest]:
    """Items in a hostile order: data before a header, two headers, an end with no header..."""
    items: list[pb.IngestDocumentsRequest] = []
    for _ in range(source.rng.randrange(0, 7)):
        roll = source.rng.random()
        if roll < 0.35:
            items.append(pb.IngestDocumentsRequest(header=hostile_header(source)))
        elif roll < 0.7:
            items.append(pb.IngestDocumentsRequest(data=source.raw_bytes()))
        elif roll < 0.9:
            items.append(pb.IngestDocumentsRequest(end=pb.DocumentEnd()))
        else:
            items.append(pb.IngestDocumentsRequest())
    return items


async def ingest_stream(
    stub: pb_grpc.RetrievalServiceStub, items: list[pb.IngestDocumentsRequest], metadata: Metadata
) -> None:
    what = "IngestDocuments(" + ", ".join(describe(i)[:120] for i in items) + ")"
    responses, error = await asyncio.to_thread(
        stream_requests, stub.IngestDocuments, items, metadata
    )
    terminals = 0
    for response in responses:
        assert isinstance(response, pb.IngestDocumentsResponse)
        assert terminals == 0, f"{what}: a message after the terminal one"
        event = response.WhichOneof("event")
        assert event is not None, f"{what}: a response without an event"
        if event == "error":
            check_status(response.error, what)
        elif event == "document" and response.document.HasField("error"):
            check_status(response.document.error, what)
        terminals += event in ("error", "summary")
    if error is not None:
        assert terminals == 0, f"{what}: a status after the terminal message"
        check_rpc_error(error, what)
        return
    assert terminals == 1, f"{what}: {terminals} terminal messages"


async def snapshot(stub: pb_grpc.RetrievalServiceAsyncStub, auth: Metadata) -> bytes:
    document = await stub.GetDocument(
        pb.GetDocumentRequest(name=f"documents/{PRECIOUS_DOCUMENT}"), metadata=auth
    )
    entities = await stub.SearchEntities(
        pb.SearchEntitiesRequest(query=SECRET, page_size=100), metadata=auth
    )
    entity = [hit.entity for hit in entities.hits if hit.entity.name.endswith(PRECIOUS_ENTITY)]
    assert len(entity) == 1
    return document.SerializeToString(deterministic=True) + entity[0].SerializeToString(
        deterministic=True
    )


async def test_hostile_requests_get_client_errors_and_leave_data_intact(
    rstub: pb_grpc.RetrievalServiceAsyncStub,
    retrieval_service: ServiceProcess,
    api_key: str,
    other_api_key: str,
) -> None:
    auth, other_auth = bearer(api_key), bearer(other_api_key)
    await rstub.IngestDocument(
        pb.IngestDocumentRequest(
            header=pb.DocumentHeader(
                document_id=PRECIOUS_DOCUMENT, title=SECRET, mime_type="text/plain", tags=["keep"]
            ),
            content=f"{SECRET}: the quarterly plan is to ship the mesh.".encode(),
        ),
        metadata=auth,
    )
    await rstub.BatchUpsertEntities(
        pb.BatchUpsertEntitiesRequest(
            entities=[
                pb.Entity(
                    name=f"entities/{PRECIOUS_ENTITY}",
                    entity_type="speaker",
                    title=SECRET,
                    master=SECRET,
                    facets={"brand": SECRET},
                )
            ]
        ),
        metadata=auth,
    )
    await rstub.IngestDocument(
        pb.IngestDocumentRequest(
            header=pb.DocumentHeader(document_id="theirs", mime_type="text/plain"),
            content=b"globex notes",
        ),
        metadata=other_auth,
    )
    before = await snapshot(rstub, auth)
    globex_page = await rstub.ListDocuments(pb.ListDocumentsRequest(page_size=1), metadata=auth)

    identities: list[tuple[str, Metadata, list[str]]] = [
        ("acme", auth, ["documents/scratch", "documents/theirs", globex_page.next_page_token]),
        (
            "globex",
            other_auth,
            [f"documents/{PRECIOUS_DOCUMENT}", f"entities/{PRECIOUS_ENTITY}", PRECIOUS_DOCUMENT],
        ),
        ("anonymous", (("authorization", "Bearer nope"),), [f"documents/{PRECIOUS_DOCUMENT}"]),
    ]
    sources = {
        who: Hostile(seed + 100, COLLECTIONS, names, [globex_page.next_page_token])
        for seed, (who, _, names) in enumerate(identities)
    }
    targets = {
        "acme": seeds("documents/scratch", "entities/scratch"),
        "globex": seeds(f"documents/{PRECIOUS_DOCUMENT}", f"entities/{PRECIOUS_ENTITY}"),
        "anonymous": seeds(f"documents/{PRECIOUS_DOCUMENT}", f"entities/{PRECIOUS_ENTITY}"),
    }
    blocking = grpc.insecure_channel(retrieval_service.address)
    stream_stub = pb_grpc.RetrievalServiceStub(blocking)
    methods = unary_methods(SERVICE)
    try:
        for round_index in range(ROUNDS):
            who, metadata, _ = identities[round_index % len(identities)]
            source = sources[who]
            calls: list[Awaitable[object]] = []
            for method in methods:
                if method.name == "DeleteEntity" and who == "acme":
                    continue  # acme may delete its own entities; the precious one must stay
                if round_index % 4 < 2:
                    request = source.mutate(targets[who][method.name], huge=round_index % 2)
                else:
                    request = source.request(request_class(method)(), huge=round_index % 2)
                if isinstance(request, pb.IngestDocumentRequest) and source.rng.random() < 0.7:
                    request.header.CopyFrom(hostile_header(source))
                calls.append(call_unary(rstub, method.name, request, metadata))
            calls.append(ingest_stream(stream_stub, hostile_stream(source), metadata))
            results = await asyncio.gather(*calls)
            if who != "acme":
                for result in results:
                    reply = result[1] if isinstance(result, tuple) else None
                    if reply is not None:
                        assert SECRET.encode() not in reply.SerializeToString(), f"leak: {reply}"
    finally:
        blocking.close()

    retrieval_service.check_alive()
    assert retrieval_service.health() == health_pb2.HealthCheckResponse.SERVING
    assert await snapshot(rstub, auth) == before
    try:
        # The barrage may have made globex a document of the same id: its own, not acme's.
        theirs = await rstub.GetDocument(
            pb.GetDocumentRequest(name=f"documents/{PRECIOUS_DOCUMENT}"), metadata=other_auth
        )
        assert SECRET.encode() not in theirs.SerializeToString(), "globex reads acme's document"
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
    for query in (SECRET, "quarterly plan"):
        hits = await rstub.Search(pb.SearchRequest(query=query, page_size=50), metadata=other_auth)
        assert SECRET.encode() not in hits.SerializeToString()
        entities = await rstub.SearchEntities(
            pb.SearchEntitiesRequest(query=query, page_size=50), metadata=other_auth
        )
        assert SECRET.encode() not in entities.SerializeToString()


async def test_undecodable_request_bodies_are_invalid_argument_for_every_rpc(
    retrieval_service: ServiceProcess, api_key: str
) -> None:
    service = SERVICE
    calls = await asyncio.to_thread(
        send_undecodable, retrieval_service.address, service, bearer(api_key)
    )
    assert calls >= len(service.methods)
    # Without a valid key the body is never looked at.
    anonymous = (("authorization", "Bearer nope"),)
    await asyncio.to_thread(send_undecodable, retrieval_service.address, service, anonymous, False)
    retrieval_service.check_alive()


async def test_forged_page_tokens_are_invalid_for_listing_and_search(
    rstub: pb_grpc.RetrievalServiceAsyncStub, tenant_keys: Callable[[str], str]
) -> None:
    auth = bearer(tenant_keys("forger"))
    for index in range(3):
        await rstub.IngestDocument(
            pb.IngestDocumentRequest(
                header=pb.DocumentHeader(document_id=f"forged-{index}", mime_type="text/plain"),
                content=f"paging through the mesh, part {index}".encode(),
            ),
            metadata=auth,
        )
    requests: dict[str, Message] = {
        "ListDocuments": pb.ListDocumentsRequest(page_size=1),
        "Search": pb.SearchRequest(query="paging through the mesh", page_size=1),
    }
    for method, request in requests.items():
        first = await getattr(rstub, method)(request, metadata=auth)
        await check_forged_page_tokens(rstub, method, request, first.next_page_token, auth)
        follow = type(request)()
        follow.CopyFrom(request)
        follow.page_token = first.next_page_token  # type: ignore[attr-defined]
        await getattr(rstub, method)(follow, metadata=auth)
