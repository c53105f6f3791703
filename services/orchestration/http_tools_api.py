"""CreateHttpTool, GetHttpTool, ListHttpTools, DeleteHttpTool."""

from __future__ import annotations

from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.settings import OrchestrationSettings


class HttpToolsRpc(pb_grpc.OrchestrationServiceServicer):
    def __init__(self, backends: Backends, settings: OrchestrationSettings) -> None:
        pass
