"""The run RPCs of OrchestrationService: Converse, RunConversation, StreamConversation,
SubmitInput, CancelConversation."""

from __future__ import annotations

from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.services.orchestration.runs import RunManager


class RunsRpc(pb_grpc.OrchestrationServiceServicer):
    def __init__(self, runs: RunManager) -> None:
        self._runs = runs
