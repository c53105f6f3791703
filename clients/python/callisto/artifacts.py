"""`client.orchestration`'s artifacts: the reports a conversation's runs made.

- `list_artifacts(conversation)` is an async iterator over every artifact of the conversation,
  newest first, without content (name, display name, content type, size, SHA-256, metadata).
- `download_artifact(name)` answers the bytes as a `google.api.HttpBody` (`content_type`,
  `data`); `conversations/{c}/artifacts/{a}` names an artifact.

Both are reads, retried on UNAVAILABLE / RetryInfo; another tenant's conversation or artifact
raises `callisto.errors.NotFound`.
"""

# `timeout` is a gRPC deadline sent to the server (and spent across retries), not a local
# cancel scope, so these functions take it the way grpc stubs do.
# ruff: noqa: ASYNC109
from __future__ import annotations

from collections.abc import AsyncIterator

from google.api import httpbody_pb2

from callisto._facade import Facade, Metadata
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.api.persistence.v1 import persistence_pb2
from callisto.persistence import conversation_name
from callisto.streams import paged


class ArtifactsMixin(Facade):
    """Listing and downloading a conversation's artifacts."""

    @property
    def _artifacts_stub(self) -> pb_grpc.OrchestrationServiceAsyncStub:
        return pb_grpc.OrchestrationServiceStub(self._client.channel)

    def list_artifacts(
        self,
        conversation: str,
        *,
        page_size: int = 0,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[persistence_pb2.Artifact]:
        """Every artifact of the conversation (a name or a bare id), newest first."""
        parent = conversation_name(conversation)

        async def fetch(token: str) -> pb.ListArtifactsResponse:
            return await self._unary(
                self._artifacts_stub.ListArtifacts,
                pb.ListArtifactsRequest(parent=parent, page_size=page_size, page_token=token),
                idempotent=True,
                timeout=timeout,
                metadata=metadata,
                response_type=pb.ListArtifactsResponse,
            )

        return paged(fetch, lambda r: r.artifacts, lambda r: r.next_page_token)

    async def download_artifact(
        self, name: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> httpbody_pb2.HttpBody:
        """The artifact's bytes and content type."""
        return await self._unary(
            self._artifacts_stub.DownloadArtifact,
            pb.DownloadArtifactRequest(name=name),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=httpbody_pb2.HttpBody,
        )
