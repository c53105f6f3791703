"""Page tokens are signed: every list RPC refuses a token that was tampered with, made up,
issued to another tenant, by another deployment, or for other parameters."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import TYPE_CHECKING

import grpc
import pytest
from hostile_support import check_forged_page_tokens
from persistence_test_support import Metadata, field_violations, new_conversation

from callisto.api.common.v1 import common_pb2
from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.services.common.pagination import PageTokenCodec
from callisto.services.common.tenancy import bind_tenant, reset_tenant

if TYPE_CHECKING:
    from callisto.api.persistence.v1.persistence_pb2_grpc import PersistenceServiceAsyncStub as Stub


async def _filled_conversation(stub: Stub, auth: Metadata) -> str:
    conversation = await new_conversation(stub, auth, tags=["paged"])
    for index in range(3):
        await stub.CreateMessage(
            pb.CreateMessageRequest(
                parent=conversation.name,
                message=pb.Message(role=common_pb2.ROLE_USER, text=f"m{index}"),
            ),
            metadata=auth,
        )
    return conversation.name


async def _first_pages(stub: Stub, auth: Metadata, name: str) -> dict[str, tuple[object, str]]:
    """A first-page request and its genuine next_page_token, per list RPC."""
    await new_conversation(stub, auth, tags=["paged"])
    for _ in range(2):
        await stub.CreateSession(
            pb.CreateSessionRequest(session=pb.Session(kind="paged")), metadata=auth
        )
    requests: dict[str, object] = {
        "ListConversations": pb.ListConversationsRequest(page_size=1, tags=["paged"]),
        "ListMessages": pb.ListMessagesRequest(parent=name, page_size=1),
        "ListEvents": pb.ListEventsRequest(parent=name, page_size=1),
        "ListSessions": pb.ListSessionsRequest(page_size=1, kind="paged"),
    }
    pages: dict[str, tuple[object, str]] = {}
    for method, request in requests.items():
        reply = await getattr(stub, method)(request, metadata=auth)
        assert reply.next_page_token, method
        pages[method] = (request, reply.next_page_token)
    return pages


async def test_forged_page_tokens_are_invalid_for_every_list_rpc(
    stub: Stub, auth: Metadata
) -> None:
    name = await _filled_conversation(stub, auth)
    for method, (request, genuine) in (await _first_pages(stub, auth, name)).items():
        await check_forged_page_tokens(stub, method, request, genuine, auth)  # type: ignore[arg-type]
        # The genuine token still pages on.
        follow = type(request)()  # type: ignore[operator]
        follow.CopyFrom(request)
        follow.page_token = genuine
        await getattr(stub, method)(follow, metadata=auth)


async def test_an_unsigned_token_with_a_huge_offset_never_reaches_storage(
    stub: Stub, auth: Metadata
) -> None:
    name = await _filled_conversation(stub, auth)
    # The shape tokens had before they were signed (the query digest right, so only the
    # cursor is forged), with offsets Redis cannot take.
    query = json.dumps({"parent": name}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(query.encode()).hexdigest()[:16]
    for offset in (2**70, 2**63, -1):
        raw = json.dumps({"c": {"o": offset}, "q": digest}).encode()
        token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ListMessages(
                pb.ListMessagesRequest(parent=name, page_token=token), metadata=auth
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in field_violations(raised.value)


async def test_a_token_only_serves_its_tenant_its_deployment_and_its_query(
    stub: Stub, auth: Metadata, other_auth: Metadata
) -> None:
    name = await _filled_conversation(stub, auth)
    first = await stub.ListMessages(pb.ListMessagesRequest(parent=name, page_size=1), metadata=auth)
    token = first.next_page_token

    # Another tenant's: globex has a conversation of the same name.
    await new_conversation(stub, other_auth, conversation_id=name.split("/")[1])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListMessages(
            pb.ListMessagesRequest(parent=name, page_size=1, page_token=token), metadata=other_auth
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(raised.value)["page_token"] == "is not a token this service issued"

    # Another query's: the same token for another conversation.
    other = await _filled_conversation(stub, auth)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListMessages(
            pb.ListMessagesRequest(parent=other, page_size=1, page_token=token), metadata=auth
        )
    assert "different parameters" in field_violations(raised.value)["page_token"]

    # Another deployment's: a well-formed token for this very query under another key.
    foreign = PageTokenCodec()
    foreign.configure(secret="another deployment")
    bound = bind_tenant("acme")
    try:
        forged = await foreign.encode({"o": 1}, {"parent": name})
    finally:
        reset_tenant(bound)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListMessages(
            pb.ListMessagesRequest(parent=name, page_size=1, page_token=forged), metadata=auth
        )
    assert field_violations(raised.value)["page_token"] == "is not a token this service issued"

    second = await stub.ListMessages(
        pb.ListMessagesRequest(parent=name, page_size=1, page_token=token), metadata=auth
    )
    assert second.messages[0].position == 2
