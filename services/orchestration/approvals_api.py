"""ListApprovals and GetApproval: the tenant's approvals of workflow steps (answered through
SubmitInput or Converse, see runs_api)."""

from __future__ import annotations

from typing import Any

import grpc

from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.services.common.errors import InvalidArgument
from callisto.services.common.validation import parse_name
from callisto.services.orchestration.approvals import ApprovalStore
from callisto.services.orchestration.runs_api import APPROVAL_ID

Context = grpc.aio.ServicerContext[Any, Any]


class ApprovalsRpc(pb_grpc.OrchestrationServiceServicer):
    def __init__(self, approvals: ApprovalStore) -> None:
        self._approval_store = approvals

    async def ListApprovals(
        self, request: pb.ListApprovalsRequest, context: Context
    ) -> pb.ListApprovalsResponse:
        if request.conversation:
            parse_name(request.conversation, "conversations", "conversation")
        approvals, token = await self._approval_store.list_pending(
            request.page_size, request.page_token, request.conversation
        )
        return pb.ListApprovalsResponse(approvals=approvals, next_page_token=token)

    async def GetApproval(
        self, request: pb.GetApprovalRequest, context: Context
    ) -> pb.GetApprovalResponse:
        if not request.name.startswith("approvals/") or not APPROVAL_ID.match(request.name):
            raise InvalidArgument.field("name", "must look like approvals/ap-…")
        record = await self._approval_store.get(request.name)
        return pb.GetApprovalResponse(approval=record.approval)
