"""The conversation RPCs that read what runs stored: GetConversationMetrics and
DownloadConversation (Markdown, PDF or JSON)."""

from __future__ import annotations

from typing import Any

import grpc
from google.api import httpbody_pb2

from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.relay import Unimplemented

Context = grpc.aio.ServicerContext[Any, Any]


class ExportsRpc(pb_grpc.OrchestrationServiceServicer):
    def __init__(self, backends: Backends) -> None:
        self._exports_backends = backends

    async def GetConversationMetrics(
        self, request: pb.GetConversationMetricsRequest, context: Context
    ) -> pb.GetConversationMetricsResponse:
        raise Unimplemented("GetConversationMetrics is not available yet")

    async def DownloadConversation(
        self, request: pb.DownloadConversationRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        raise Unimplemented("DownloadConversation is not available yet")
