"""A stream cut inside a document fails that document as the client's error, not INTERNAL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from retrieval_test_support import bearer

from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc

HEADER = pb.IngestDocumentsRequest(
    header=pb.DocumentHeader(document_id="cut-short", mime_type="text/markdown")
)
DATA = pb.IngestDocumentsRequest(data=b"# Title\nNo end marker follows.")


@pytest.mark.parametrize(
    "items", [[HEADER, DATA], [HEADER, DATA, HEADER]], ids=["stream-ends", "second-header"]
)
async def test_a_document_cut_short_is_invalid_argument_not_internal(
    rstub: pb_grpc.RetrievalServiceStub,
    tenant_keys: Callable[[str], str],
    items: list[pb.IngestDocumentsRequest],
) -> None:
    async def requests() -> AsyncIterator[pb.IngestDocumentsRequest]:
        for item in items:
            yield item

    call = rstub.IngestDocuments(requests(), metadata=bearer(tenant_keys("stream-end")))
    codes = []
    async for response in call:
        event = response.WhichOneof("event")
        if event == "document" and response.document.HasField("error"):
            codes.append(response.document.error.code)
        elif event == "error":
            codes.append(response.error.code)
    assert codes, "the cut-short document must fail"
    assert all(code == grpc.StatusCode.INVALID_ARGUMENT.value[0] for code in codes), codes
