"""Helpers shared by the persistence tests (a unique module name: test dirs are not packages)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2_grpc as pb_grpc

Metadata = tuple[tuple[str, str], ...]


def bearer(key: str) -> Metadata:
    return (("authorization", f"Bearer {key}"),)


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations in `grpc-status-details-bin`, field → description."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in the trailers"
    found: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found.update({v.field: v.description for v in bad_request.field_violations})
    return found


def error_reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def precondition_violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The PreconditionFailure violations in `grpc-status-details-bin`, (type, subject)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    found: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            found.extend((v.type, v.subject) for v in failure.violations)
    return found


async def new_conversation(
    stub: pb_grpc.PersistenceServiceAsyncStub,
    auth: Metadata,
    *,
    title: str = "t",
    tags: Sequence[str] = (),
    conversation_id: str = "",
    participants: Sequence[pb.Participant] = (),
) -> pb.Conversation:
    reply = await stub.CreateConversation(
        pb.CreateConversationRequest(
            conversation=pb.Conversation(title=title, tags=tags, participants=participants),
            conversation_id=conversation_id,
        ),
        metadata=auth,
    )
    return reply.conversation
