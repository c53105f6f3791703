"""Helpers shared by the persistence tests (a unique module name: test dirs are not packages)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from callisto import errors
from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2_grpc as pb_grpc
from callisto.client import auth_metadata

Metadata = tuple[tuple[str, str], ...]


def bearer(key: str) -> Metadata:
    return auth_metadata(key)


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations of the error, field → description."""
    return errors.from_rpc_error(error).field_violations


def error_reason(error: grpc.aio.AioRpcError) -> str:
    return errors.from_rpc_error(error).reason


def precondition_violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The PreconditionFailure violations of the error, (type, subject)."""
    return [(v.type, v.subject) for v in errors.from_rpc_error(error).precondition_violations]


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
