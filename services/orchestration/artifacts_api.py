"""ListArtifacts and DownloadArtifact: the files a conversation's runs stored (the reports of
`create_report`), read through persistence as the caller's tenant, so another tenant's
conversation or artifact is NOT_FOUND exactly as persistence answers it.

A listing's page token wraps persistence's own and is bound to the conversation listed; a
download answers the stored bytes as a `google.api.HttpBody` with their content type, which
the gateway serves as the HTTP response's body and Content-Type."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.api import httpbody_pb2

from callisto import errors as sdk
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.services.common.errors import InvalidArgument
from callisto.services.common.pagination import page_tokens
from callisto.services.common.validation import (
    RESOURCE_ID,
    Violations,
    check_page_size,
    parse_name,
)
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.relay import relayed
from callisto.services.orchestration.settings import OrchestrationSettings

Context = grpc.aio.ServicerContext[Any, Any]

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50
ARTIFACT_NAME_RULE = "must look like conversations/{conversation}/artifacts/{artifact}"
_NOT_ISSUED = "is not a token this service issued"


class ArtifactsRpc(pb_grpc.OrchestrationServiceServicer):
    def __init__(self, backends: Backends, settings: OrchestrationSettings) -> None:
        self._artifacts_backends = backends

    async def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: Context
    ) -> pb.ListArtifactsResponse:
        v = Violations()
        _check_conversation(v, request.parent, "parent")
        page_size = check_page_size(
            v, request.page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE
        )
        v.raise_if_any()
        query = {"artifacts": request.parent}
        cursor = await page_tokens.decode(request.page_token, query)
        inner = cursor.get("p", "") if cursor is not None else ""
        if not isinstance(inner, str) or (cursor is not None and not inner):
            raise InvalidArgument.field("page_token", _NOT_ISSUED)
        with _relaying():
            page = await self._artifacts_backends.persistence.list_artifacts_page(
                request.parent, page_size=page_size, page_token=inner
            )
        token = (
            await page_tokens.encode({"p": page.next_page_token}, query)
            if page.next_page_token
            else ""
        )
        return pb.ListArtifactsResponse(artifacts=page.artifacts, next_page_token=token)

    async def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        v = Violations()
        _check_artifact(v, request.name, "name")
        v.raise_if_any()
        with _relaying():
            artifact = await self._artifacts_backends.persistence.get_artifact(request.name)
        return httpbody_pb2.HttpBody(content_type=artifact.content_type, data=artifact.content)


def _check_conversation(v: Violations, name: str, field: str) -> None:
    if not name:
        v.add(field, "is required")
        return
    try:
        parse_name(name, "conversations", field)
    except InvalidArgument as error:
        for violation in error.violations:
            v.add(violation.field, violation.description)


def _check_artifact(v: Violations, name: str, field: str) -> None:
    """`conversations/{conversation}/artifacts/{artifact}`, both ids resource ids."""
    if not name:
        v.add(field, "is required")
        return
    conversation, separator, artifact = name.rpartition("/artifacts/")
    if not separator or not RESOURCE_ID.fullmatch(artifact):
        v.add(field, ARTIFACT_NAME_RULE)
        return
    _check_conversation(v, conversation, field)


@contextmanager
def _relaying() -> Iterator[None]:
    """Persistence's answers keep their status (another tenant's artifact is NOT_FOUND)."""
    try:
        yield
    except sdk.CallistoError as error:
        raise relayed(error) from None
