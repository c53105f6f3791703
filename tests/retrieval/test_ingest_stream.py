"""The IngestDocuments stream protocol and hostile documents, through the real service process:
protocol violations are INVALID_ARGUMENT with field violations, no document is ever swallowed
and the summary counts what happened; zip bombs and spinning parsers fail alone and fast."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from hostile_documents import DOCX, spinning_pdf, zip_bomb_docx
from retrieval_test_support import bearer, retrieval_env, violations

from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from callisto.mesh.processes import ServiceProcess, free_port

Stub = pb_grpc.RetrievalServiceStub
Request = pb.IngestDocumentsRequest
END = Request(end=pb.DocumentEnd())
PARSE_TIMEOUT_S = 3.0


def header(document_id: str, mime_type: str = "text/plain", **fields: object) -> Request:
    return Request(header=pb.DocumentHeader(document_id=document_id, mime_type=mime_type, **fields))  # type: ignore[arg-type]


def data(content: bytes) -> Request:
    return Request(data=content)


async def stream(
    stub: Stub, items: Sequence[Request], key: str
) -> list[pb.IngestDocumentsResponse]:
    async def requests() -> AsyncIterator[Request]:
        for item in items:
            yield item

    call = stub.IngestDocuments(requests(), metadata=bearer(key))
    return [response async for response in call]


def outcomes(responses: Sequence[pb.IngestDocumentsResponse]) -> list[tuple[str, int]]:
    return [
        (r.document.document_id, r.document.outcome)
        for r in responses
        if r.WhichOneof("event") == "document"
    ]


def failure(responses: Sequence[pb.IngestDocumentsResponse], document_id: str) -> pb.DocumentResult:
    [result] = [
        r.document
        for r in responses
        if r.WhichOneof("event") == "document" and r.document.document_id == document_id
    ]
    assert result.outcome == pb.DOCUMENT_OUTCOME_FAILED, result
    return result


def summary(responses: Sequence[pb.IngestDocumentsResponse]) -> pb.IngestProgress:
    assert responses[-1].WhichOneof("event") == "summary", responses[-1]
    return responses[-1].summary.progress


CREATED = pb.DOCUMENT_OUTCOME_CREATED
FAILED = pb.DOCUMENT_OUTCOME_FAILED
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_a_header_inside_a_document_fails_it_and_starts_the_next(
    rstub: Stub, tenant_keys: Callable[[str], str]
) -> None:
    key = tenant_keys("stream-second-header")
    responses = await stream(
        rstub,
        [
            header("alpha"), data(b"Alpha has no end."),
            header("bravo"), data(b"Bravo is complete."), END,
            header("charlie"), data(b"Charlie is complete too."), END,
        ],
        key,
    )  # fmt: skip
    assert sorted(outcomes(responses)) == [("alpha", FAILED), ("bravo", CREATED),
                                           ("charlie", CREATED)]  # fmt: skip
    error = failure(responses, "alpha").error
    assert error.code == INVALID and "end" in violations(error), error
    progress = summary(responses)
    assert (progress.documents_parsed, progress.documents_failed) == (2, 1)


async def test_an_empty_message_fails_its_document_and_the_next_is_kept(
    rstub: Stub, tenant_keys: Callable[[str], str]
) -> None:
    key = tenant_keys("stream-empty-item")
    responses = await stream(
        rstub,
        [
            header("alpha"), data(b"Alpha "), Request(), data(b"is broken."), END,
            header("bravo"), data(b"Bravo is complete."), END,
        ],
        key,
    )  # fmt: skip
    assert sorted(outcomes(responses)) == [("alpha", FAILED), ("bravo", CREATED)]
    error = failure(responses, "alpha").error
    assert error.code == INVALID and "item" in violations(error), error
    assert summary(responses).documents_failed == 1


async def test_a_stream_ending_inside_a_document_fails_it_with_invalid_argument(
    rstub: Stub, tenant_keys: Callable[[str], str]
) -> None:
    key = tenant_keys("stream-no-end")
    responses = await stream(rstub, [header("alpha"), data(b"Alpha never ends.")], key)
    error = failure(responses, "alpha").error
    assert error.code == INVALID and "end" in violations(error), error
    assert summary(responses).documents_failed == 1


async def test_data_outside_a_document_ends_the_stream_after_the_results(
    rstub: Stub, tenant_keys: Callable[[str], str]
) -> None:
    key = tenant_keys("stream-stray-data")
    responses = await stream(
        rstub, [header("alpha"), data(b"Alpha is complete."), END, data(b"stray")], key
    )
    assert outcomes(responses) == [("alpha", CREATED)]
    assert responses[-1].WhichOneof("event") == "error"
    assert responses[-1].error.code == INVALID and "data" in violations(responses[-1].error)


async def test_undecodable_bytes_end_the_stream_with_invalid_argument_after_the_results(
    retrieval_channel: grpc.aio.Channel, tenant_keys: Callable[[str], str]
) -> None:
    key = tenant_keys("stream-garbage")
    raw = retrieval_channel.stream_stream(
        "/callisto.retrieval.v1.RetrievalService/IngestDocuments",
        request_serializer=None,
        response_deserializer=pb.IngestDocumentsResponse.FromString,
    )

    async def requests() -> AsyncIterator[bytes]:
        for item in (header("alpha"), data(b"Alpha is complete."), END):
            yield item.SerializeToString()
        yield b"\xff\xff\xff\xff\x0fnot a protobuf message"

    responses = [r async for r in raw(requests(), metadata=bearer(key))]
    assert outcomes(responses) == [("alpha", CREATED)]
    assert responses[-1].WhichOneof("event") == "error"
    assert responses[-1].error.code == INVALID and "item" in violations(responses[-1].error)


async def test_csv_row_per_record_false_ingests_one_table(
    rstub: Stub, tenant_keys: Callable[[str], str]
) -> None:
    key = tenant_keys("stream-csv-mode")
    table = b"sku,product\nHB-100,Crane rental\nHB-200,Tugboat hour\nHB-300,Pilot boat\n"
    items: list[Request] = []
    for document_id, chunking in [
        ("rows", pb.ChunkingOptions(csv_row_per_record=True)),
        ("table", pb.ChunkingOptions(csv_row_per_record=False)),
        ("default", None),
    ]:
        fields = {"chunking": chunking} if chunking is not None else {}
        items += [header(document_id, "text/csv", **fields), data(table), END]
    responses = await stream(rstub, items, key)
    counts = {
        r.document.document_id: r.document.document.chunk_count
        for r in responses
        if r.WhichOneof("event") == "document"
    }
    assert counts == {"rows": 3, "table": 1, "default": 3}


# A service of its own with a short parse time limit, so a spinning parse is stopped quickly.


@pytest.fixture(scope="module")
def strict_service(
    service_env: dict[str, str],
    triton_embedder_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    data_dir: Path = tmp_path_factory.mktemp("retrieval-strict")
    env = retrieval_env(service_env, triton_embedder_url, data_dir)
    env["CALLISTO_RETRIEVAL_PARSE_TIMEOUT_SECONDS"] = str(PARSE_TIMEOUT_S)
    service = ServiceProcess("retrieval", free_port(), env=env, log_path=data_dir / "retrieval.log")
    service.start()
    service.wait_healthy(timeout=120)
    yield service
    service.stop()


@pytest.fixture
async def strict_stub(strict_service: ServiceProcess) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(strict_service.address) as channel:
        yield pb_grpc.RetrievalServiceStub(channel)


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    from google.rpc import status_pb2

    for name, value in error.trailing_metadata() or ():
        if name == "grpc-status-details-bin":
            assert isinstance(value, bytes)
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info
    raise AssertionError("no ErrorInfo")


async def test_a_zip_bomb_docx_fails_fast_and_memory_stays_bounded(
    strict_stub: Stub, strict_service: ServiceProcess, tenant_keys: Callable[[str], str]
) -> None:
    key = tenant_keys("stream-zip-bomb")
    bomb = zip_bomb_docx()
    started = time.perf_counter()
    responses = await stream(
        strict_stub,
        [header("bomb", DOCX), data(bomb), END,
         header("after", "text/plain"), data(b"The harbour opens at six."), END],
        key,
    )  # fmt: skip
    assert time.perf_counter() - started < 10
    error = failure(responses, "bomb").error
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], error
    assert "inflates" in violations(error)["data"]
    assert ("after", CREATED) in outcomes(responses)
    assert summary(responses).documents_failed == 1
    assert _peak_rss_bytes(strict_service.pid) < 1024**3


async def test_a_spinning_pdf_is_stopped_at_the_time_limit_while_others_are_served(
    strict_stub: Stub, tenant_keys: Callable[[str], str]
) -> None:
    auth = bearer(tenant_keys("stream-spinning-pdf"))
    others = bearer(tenant_keys("stream-other-tenant"))
    started = time.perf_counter()
    spin = asyncio.ensure_future(
        strict_stub.IngestDocument(
            pb.IngestDocumentRequest(
                header=pb.DocumentHeader(document_id="spin", mime_type="application/pdf"),
                content=spinning_pdf(),
            ),
            metadata=auth,
        )
    )
    await asyncio.sleep(0.5)  # the spinning parse has started
    for i in range(3):
        call = time.perf_counter()
        ok = await strict_stub.IngestDocument(
            pb.IngestDocumentRequest(
                header=pb.DocumentHeader(document_id=f"quick-{i}", mime_type="text/plain"),
                content=b"Another tenant's documents are parsed by the other worker.",
            ),
            metadata=others,
        )
        assert ok.result.outcome == CREATED
        await strict_stub.ListDocuments(pb.ListDocumentsRequest(), metadata=auth)
        assert time.perf_counter() - call < 2.0
    with pytest.raises(grpc.aio.AioRpcError) as stopped:
        await spin
    elapsed = time.perf_counter() - started
    assert PARSE_TIMEOUT_S <= elapsed < PARSE_TIMEOUT_S + 7, elapsed
    assert stopped.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _error_info(stopped.value).reason == "DOCUMENT_TOO_COMPLEX"
