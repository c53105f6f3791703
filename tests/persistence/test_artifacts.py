"""Artifacts: stored with their conversation (bytes, size and SHA-256 computed by the service),
listed newest first without content in signed pages, idempotent by request id, validated field
by field, invisible to other tenants, and gone when their conversation is deleted or expires."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2, struct_pb2
from persistence_test_support import Metadata, error_reason, field_violations, new_conversation
from redis.asyncio import Redis

from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.mesh.processes import RedisServer
from callisto.services.persistence.server import MAX_ARTIFACTS
from callisto.services.persistence.settings import PersistenceSettings

if TYPE_CHECKING:
    from callisto.api.persistence.v1.persistence_pb2_grpc import PersistenceServiceAsyncStub as Stub

LIMIT = PersistenceSettings().artifact_max_bytes
PDF = b"%PDF-1.4\n" + bytes(range(256)) + b"\n%%EOF\n"


def artifact(
    content: bytes = b"a,b\n1,2\n",
    *,
    display_name: str = "report.csv",
    content_type: str = "text/csv",
    metadata: dict[str, object] | None = None,
) -> pb.Artifact:
    result = pb.Artifact(display_name=display_name, content_type=content_type, content=content)
    if metadata is not None:
        result.metadata.update(metadata)
    return result


async def create(
    stub: Stub, auth: Metadata, parent: str, body: pb.Artifact | None = None, request_id: str = ""
) -> pb.Artifact:
    reply = await stub.CreateArtifact(
        pb.CreateArtifactRequest(parent=parent, artifact=body or artifact(), request_id=request_id),
        metadata=auth,
    )
    return reply.artifact


async def rpc_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


@pytest_asyncio.fixture(loop_scope="session")
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def conversation_keys(redis: Redis, tenant: str, conversation: str) -> list[bytes]:
    pattern = f"callisto:{{t:{tenant}}}:conv:{conversation.removeprefix('conversations/')}*"
    return [key async for key in redis.scan_iter(match=pattern)]


async def test_artifact_is_stored_with_its_bytes_size_and_sha256(
    stub: Stub, auth: Metadata
) -> None:
    conversation = await new_conversation(stub, auth)
    created = await create(
        stub,
        auth,
        conversation.name,
        artifact(
            PDF,
            display_name="Supplier offer (v2).pdf",
            content_type="application/pdf",
            metadata={"tool": "create_report", "step": "report"},
        ),
    )
    assert created.name.startswith(f"{conversation.name}/artifacts/")
    assert created.content == b""
    assert created.size_bytes == len(PDF)
    assert created.sha256 == hashlib.sha256(PDF).hexdigest()
    assert created.HasField("create_time")
    got = (await stub.GetArtifact(pb.GetArtifactRequest(name=created.name), metadata=auth)).artifact
    assert got.content == PDF
    assert got.display_name == "Supplier offer (v2).pdf"
    assert got.content_type == "application/pdf"
    assert dict(got.metadata) == {"tool": "create_report", "step": "report"}
    assert (got.sha256, got.size_bytes, got.create_time) == (
        created.sha256,
        created.size_bytes,
        created.create_time,
    )


async def test_output_only_fields_of_a_create_are_ignored(stub: Stub, auth: Metadata) -> None:
    conversation = await new_conversation(stub, auth)
    body = artifact(b"hello")
    body.name = "conversations/elsewhere/artifacts/mine"
    body.sha256 = "0" * 64
    body.size_bytes = 99
    created = await create(stub, auth, conversation.name, body)
    assert created.name.startswith(f"{conversation.name}/artifacts/")
    assert created.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert created.size_bytes == 5


async def test_list_is_newest_first_without_content_in_pages(stub: Stub, auth: Metadata) -> None:
    conversation = await new_conversation(stub, auth)
    names = []
    for index in range(5):
        created = await create(
            stub,
            auth,
            conversation.name,
            artifact(f"row,{index}\n".encode(), display_name=f"{index}.csv"),
        )
        names.append(created.name)
    seen: list[pb.Artifact] = []
    token = ""
    pages = 0
    while True:
        page = await stub.ListArtifacts(
            pb.ListArtifactsRequest(parent=conversation.name, page_size=2, page_token=token),
            metadata=auth,
        )
        pages += 1
        seen.extend(page.artifacts)
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert [a.name for a in seen] == names[::-1]
    assert all(a.content == b"" and a.size_bytes > 0 and a.sha256 for a in seen)
    empty = await new_conversation(stub, auth)
    listed = await stub.ListArtifacts(pb.ListArtifactsRequest(parent=empty.name), metadata=auth)
    assert list(listed.artifacts) == [] and listed.next_page_token == ""


async def test_forged_and_foreign_page_tokens_are_refused(
    stub: Stub, auth: Metadata, other_auth: Metadata
) -> None:
    conversation = await new_conversation(stub, auth)
    for index in range(3):
        await create(stub, auth, conversation.name, artifact(f"{index}".encode()))
    page = await stub.ListArtifacts(
        pb.ListArtifactsRequest(parent=conversation.name, page_size=1), metadata=auth
    )
    token = page.next_page_token
    assert token
    other = await new_conversation(stub, auth)
    for bad in (
        token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        "e30.e30",
        "x" * 5000,
    ):
        error = await rpc_error(
            stub.ListArtifacts(
                pb.ListArtifactsRequest(parent=conversation.name, page_token=bad), metadata=auth
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in field_violations(error)
    # A genuine token of another conversation's listing is refused too.
    error = await rpc_error(
        stub.ListArtifacts(
            pb.ListArtifactsRequest(parent=other.name, page_token=token), metadata=auth
        )
    )
    assert "page_token" in field_violations(error)
    # Another tenant cannot use acme's token (and does not see the conversation either).
    error = await rpc_error(
        stub.ListArtifacts(
            pb.ListArtifactsRequest(parent=conversation.name, page_token=token),
            metadata=other_auth,
        )
    )
    assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)


async def test_content_over_the_limit_is_refused_at_its_field_with_the_limit(
    stub: Stub, auth: Metadata
) -> None:
    conversation = await new_conversation(stub, auth)
    error = await rpc_error(create(stub, auth, conversation.name, artifact(b"x" * (LIMIT + 1))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(LIMIT) in field_violations(error)["artifact.content"]
    error = await rpc_error(create(stub, auth, conversation.name, artifact(b"")))
    assert "artifact.content" in field_violations(error)
    at_limit = await create(stub, auth, conversation.name, artifact(b"y" * LIMIT))
    assert at_limit.size_bytes == LIMIT


@pytest.mark.parametrize(
    ("display_name", "description"),
    [
        ("", "is required"),
        ("x" * 256, "at most 255"),
        ("../../etc/passwd", "path separators"),
        ("reports\\q3.pdf", "path separators"),
        ("q3\x00.pdf", "control"),
        ("q3\n.pdf", "control"),
        ("invoice\u202efdp.exe", "control"),
        ("..", "name a file"),
        (" . ", "name a file"),
    ],
)
async def test_hostile_display_names_are_refused(
    stub: Stub, auth: Metadata, display_name: str, description: str
) -> None:
    conversation = await new_conversation(stub, auth)
    error = await rpc_error(
        create(stub, auth, conversation.name, artifact(display_name=display_name))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert description in field_violations(error)["artifact.display_name"]


async def test_every_bad_field_is_reported_at_once(stub: Stub, auth: Metadata) -> None:
    conversation = await new_conversation(stub, auth)
    body = artifact(b"", display_name="", content_type="text/html")
    body.metadata.update({"blob": "x" * (300 * 1024)})
    error = await rpc_error(
        stub.CreateArtifact(
            pb.CreateArtifactRequest(
                parent=conversation.name, artifact=body, request_id="has space"
            ),
            metadata=auth,
        )
    )
    violations = field_violations(error)
    assert set(violations) >= {
        "artifact.display_name",
        "artifact.content_type",
        "artifact.content",
        "artifact.metadata",
        "request_id",
    }
    assert "text/csv" in violations["artifact.content_type"]
    error = await rpc_error(
        stub.CreateArtifact(pb.CreateArtifactRequest(parent=conversation.name), metadata=auth)
    )
    assert "artifact" in field_violations(error)
    nan = struct_pb2.Struct()
    nan.update({"score": float("nan")})
    body = artifact()
    body.metadata.CopyFrom(nan)
    error = await rpc_error(create(stub, auth, conversation.name, body))
    assert "finite" in field_violations(error)["artifact.metadata"]


async def test_a_repeated_request_id_returns_the_first_artifact(stub: Stub, auth: Metadata) -> None:
    conversation = await new_conversation(stub, auth)
    request_id = f"report-{uuid.uuid4().hex}"
    first = await create(stub, auth, conversation.name, artifact(b"first"), request_id)
    again = await create(stub, auth, conversation.name, artifact(b"first"), request_id)
    # The request id names the attempt: other bytes under it still answer the first artifact.
    other = await create(stub, auth, conversation.name, artifact(b"second"), request_id)
    assert again == first and other == first
    listed = await stub.ListArtifacts(
        pb.ListArtifactsRequest(parent=conversation.name), metadata=auth
    )
    assert [a.name for a in listed.artifacts] == [first.name]
    got = (await stub.GetArtifact(pb.GetArtifactRequest(name=first.name), metadata=auth)).artifact
    assert got.content == b"first"
    fresh = await create(stub, auth, conversation.name, artifact(b"first"), "another-request")
    assert fresh.name != first.name


async def test_another_tenants_conversation_and_artifacts_are_not_found(
    stub: Stub, auth: Metadata, other_auth: Metadata
) -> None:
    conversation = await new_conversation(stub, auth)
    created = await create(stub, auth, conversation.name)
    for call in (
        stub.GetArtifact(pb.GetArtifactRequest(name=created.name), metadata=other_auth),
        stub.ListArtifacts(pb.ListArtifactsRequest(parent=conversation.name), metadata=other_auth),
        stub.CreateArtifact(
            pb.CreateArtifactRequest(parent=conversation.name, artifact=artifact()),
            metadata=other_auth,
        ),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
    # globex's namesake conversation does not reach acme's artifacts either.
    await new_conversation(
        stub, other_auth, conversation_id=conversation.name.removeprefix("conversations/")
    )
    error = await rpc_error(
        stub.GetArtifact(pb.GetArtifactRequest(name=created.name), metadata=other_auth)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListArtifacts(
        pb.ListArtifactsRequest(parent=conversation.name), metadata=other_auth
    )
    assert list(listed.artifacts) == []


async def test_missing_parents_and_artifacts_are_not_found_and_bad_names_invalid(
    stub: Stub, auth: Metadata
) -> None:
    conversation = await new_conversation(stub, auth)
    missing = f"conversations/missing-{uuid.uuid4().hex[:8]}"
    for call in (
        stub.CreateArtifact(
            pb.CreateArtifactRequest(parent=missing, artifact=artifact()), metadata=auth
        ),
        stub.ListArtifacts(pb.ListArtifactsRequest(parent=missing), metadata=auth),
        stub.GetArtifact(pb.GetArtifactRequest(name=f"{missing}/artifacts/abc"), metadata=auth),
        stub.GetArtifact(
            pb.GetArtifactRequest(name=f"{conversation.name}/artifacts/abc"), metadata=auth
        ),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    for name in (
        "",
        conversation.name,
        f"{conversation.name}/artifacts/",
        f"{conversation.name}/artifacts/ABC",
        f"{conversation.name}/artifacts/abc\n",
        f"{conversation.name}/artifacts/a/b",
        "conversations/../artifacts/abc",
        f"{conversation.name}/messages/1",
    ):
        error = await rpc_error(stub.GetArtifact(pb.GetArtifactRequest(name=name), metadata=auth))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "name" in field_violations(error)
    for parent, page_size in (
        ("sessions/x", 0),
        (conversation.name, -1),
        (conversation.name, 1001),
    ):
        error = await rpc_error(
            stub.ListArtifacts(
                pb.ListArtifactsRequest(parent=parent, page_size=page_size), metadata=auth
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_artifacts_are_deleted_with_their_conversation(
    stub: Stub, auth: Metadata, redis: Redis
) -> None:
    conversation_id = f"arts-{uuid.uuid4().hex[:12]}"
    conversation = await new_conversation(stub, auth, conversation_id=conversation_id)
    created = await create(stub, auth, conversation.name, artifact(PDF), request_id="once")
    assert any(
        k.endswith(b":arts") for k in await conversation_keys(redis, "acme", conversation_id)
    )
    await stub.DeleteConversation(
        pb.DeleteConversationRequest(name=conversation.name), metadata=auth
    )
    assert await conversation_keys(redis, "acme", conversation_id) == []
    # A new conversation of the same id starts without the old one's artifacts or request ids.
    await new_conversation(stub, auth, conversation_id=conversation_id)
    error = await rpc_error(
        stub.GetArtifact(pb.GetArtifactRequest(name=created.name), metadata=auth)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListArtifacts(
        pb.ListArtifactsRequest(parent=conversation.name), metadata=auth
    )
    assert list(listed.artifacts) == []
    again = await create(stub, auth, conversation.name, artifact(PDF), request_id="once")
    assert again.name != created.name


async def test_artifacts_expire_with_their_conversation(
    stub: Stub, auth: Metadata, redis: Redis
) -> None:
    conversation_id = f"arts-ttl-{uuid.uuid4().hex[:8]}"
    ttl = duration_pb2.Duration()
    ttl.FromMilliseconds(1500)
    created = (
        await stub.CreateConversation(
            pb.CreateConversationRequest(
                conversation=pb.Conversation(ttl=ttl), conversation_id=conversation_id
            ),
            metadata=auth,
        )
    ).conversation
    stored = await create(stub, auth, created.name)
    for key in await conversation_keys(redis, "acme", conversation_id):
        assert 0 < await redis.pttl(key) <= 1500, key
    await asyncio.sleep(1.8)
    error = await rpc_error(
        stub.GetArtifact(pb.GetArtifactRequest(name=stored.name), metadata=auth)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert await conversation_keys(redis, "acme", conversation_id) == []


async def test_a_conversation_holds_a_bounded_number_of_artifacts(
    stub: Stub, auth: Metadata
) -> None:
    conversation = await new_conversation(stub, auth)
    await asyncio.gather(
        *(create(stub, auth, conversation.name, artifact(b"%d" % i)) for i in range(MAX_ARTIFACTS))
    )
    error = await rpc_error(create(stub, auth, conversation.name))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(error) == "ARTIFACT_LIMIT"
