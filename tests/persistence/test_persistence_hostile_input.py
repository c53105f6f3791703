"""A fixed-seed barrage of hostile requests at every persistence RPC: each answer is OK or a
client error (never INTERNAL/UNKNOWN), the service stays SERVING, and tenant acme's conversation
and messages are byte-for-byte intact and invisible to tenant globex."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import grpc
from google.protobuf import duration_pb2, field_mask_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from hostile_support import (
    Hostile,
    Metadata,
    call_unary,
    check_rpc_error,
    check_status,
    describe,
    request_class,
    send_undecodable,
    unary_methods,
)

from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2_grpc as pb_grpc
from callisto.client import auth_metadata
from callisto.mesh.processes import ServiceProcess

SERVICE = pb.DESCRIPTOR.services_by_name["PersistenceService"]
COLLECTIONS = ("conversations", "sessions", "retentionPolicy", "tenants/globex/conversations")
ROUNDS = 100
SECRET = "acme-secret-7f3d"


def seeds(conversation: str, message: str, session: str) -> dict[str, Message]:
    """A valid request per RPC, aimed at the given resources, for the barrage to mutate."""
    title_mask = field_mask_pb2.FieldMask(paths=["title"])
    return {
        "CreateConversation": pb.CreateConversationRequest(
            conversation=pb.Conversation(title="t", tags=["a"], metadata={"k": "v"})
        ),
        "GetConversation": pb.GetConversationRequest(name=conversation),
        "ListConversations": pb.ListConversationsRequest(page_size=5, tags=["keep"]),
        "UpdateConversation": pb.UpdateConversationRequest(
            conversation=pb.Conversation(name=conversation, title="x"), update_mask=title_mask
        ),
        "DeleteConversation": pb.DeleteConversationRequest(name=conversation),
        "CreateMessage": pb.CreateMessageRequest(
            parent=conversation, message=pb.Message(role=2, text="x", metadata={"k": 1})
        ),
        "GetMessage": pb.GetMessageRequest(name=message),
        "UpdateMessage": pb.UpdateMessageRequest(
            message=pb.Message(name=message, feedback=pb.Feedback(rating=1, comment="c")),
            update_mask=field_mask_pb2.FieldMask(paths=["feedback"]),
        ),
        "ListMessages": pb.ListMessagesRequest(parent=conversation, page_size=2),
        "CreateEvent": pb.CreateEventRequest(
            parent=conversation, event=pb.Event(type="note", data={"k": "v"})
        ),
        "ListEvents": pb.ListEventsRequest(parent=conversation, page_size=2),
        "ExportConversation": pb.ExportConversationRequest(name=conversation, include_events=True),
        "CreateArtifact": pb.CreateArtifactRequest(
            parent=conversation,
            artifact=pb.Artifact(display_name="r.csv", content_type="text/csv", content=b"a,b\n"),
        ),
        "GetArtifact": pb.GetArtifactRequest(name=f"{conversation}/artifacts/abc"),
        "ListArtifacts": pb.ListArtifactsRequest(parent=conversation, page_size=2),
        "CreateSession": pb.CreateSessionRequest(session=pb.Session(kind="k", state={"a": 1})),
        "GetSession": pb.GetSessionRequest(name=session),
        "ListSessions": pb.ListSessionsRequest(page_size=2, kind="k"),
        "UpdateSession": pb.UpdateSessionRequest(
            session=pb.Session(name=session, state={"a": 2}),
            update_mask=field_mask_pb2.FieldMask(paths=["state"]),
        ),
        "DeleteSession": pb.DeleteSessionRequest(name=session),
        "GetRetentionPolicy": pb.GetRetentionPolicyRequest(name="retentionPolicy"),
        "UpdateRetentionPolicy": pb.UpdateRetentionPolicyRequest(
            retention_policy=pb.RetentionPolicy(
                name="retentionPolicy", conversation_ttl=duration_pb2.Duration(seconds=86_400)
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["conversation_ttl"]),
        ),
        "SubscribeEvents": pb.SubscribeEventsRequest(parent=conversation),
        "GetCaller": pb.GetCallerRequest(),
    }


async def snapshot(stub: pb_grpc.PersistenceServiceAsyncStub, auth: Metadata, name: str) -> bytes:
    """The conversation, its messages and events, serialised deterministically."""
    reply = await stub.ExportConversation(
        pb.ExportConversationRequest(name=name, include_events=True), metadata=auth
    )
    reply.ClearField("export_time")
    return reply.SerializeToString(deterministic=True)


async def subscribe(
    stub: pb_grpc.PersistenceServiceAsyncStub, request: pb.SubscribeEventsRequest, auth: Metadata
) -> None:
    """Read a subscription briefly: events and heartbeats, then at most one terminal message."""
    what = f"SubscribeEvents({describe(request)})"
    call = stub.SubscribeEvents(request, metadata=auth, timeout=0.5)
    terminals = 0
    try:
        async for response in call:
            assert terminals == 0, f"{what}: a message after the terminal one"
            kind = response.WhichOneof("kind")
            assert kind is not None, f"{what}: a response without a payload"
            if kind == "error":
                check_status(response.error, what)
                terminals += 1
            elif kind == "end":
                terminals += 1
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED or terminals:
            check_rpc_error(error, what)


async def barrage(
    stub: pb_grpc.PersistenceServiceAsyncStub,
    identities: list[tuple[str, Metadata, list[str]]],
    targets: dict[str, dict[str, Message]],
    tokens: list[str],
) -> None:
    # Page tokens are forged from genuine ones of both tenants.
    hostile = {
        who: Hostile(seed, COLLECTIONS, names, tokens)
        for seed, (who, _, names) in enumerate(identities)
    }
    methods = unary_methods(SERVICE)
    for round_index in range(ROUNDS):
        who, metadata, _ = identities[round_index % len(identities)]
        source = hostile[who]
        calls: list[Awaitable[object]] = []
        huge = 1 if round_index % 3 == 0 else 0
        for method in methods:
            if round_index % 2:
                request = source.mutate(targets[who][method.name], huge=huge)
            else:
                request = source.request(request_class(method)(), huge=huge)
            calls.append(call_unary(stub, method.name, request, metadata))
        subscription = source.mutate(targets[who]["SubscribeEvents"], huge=0)
        assert isinstance(subscription, pb.SubscribeEventsRequest)
        calls.append(subscribe(stub, subscription, metadata))
        results = await asyncio.gather(*calls)
        if who == "globex":
            for result in results:
                reply = result[1] if result else None
                if reply is not None:
                    assert SECRET.encode() not in reply.SerializeToString(), f"leak: {reply}"


async def test_hostile_requests_get_client_errors_and_leave_data_intact(
    stub: pb_grpc.PersistenceServiceAsyncStub,
    persistence: ServiceProcess,
    auth: Metadata,
    other_auth: Metadata,
) -> None:
    # Tenant acme's data the barrage must not touch, and a scratch conversation it may.
    precious = (
        await stub.CreateConversation(
            pb.CreateConversationRequest(
                conversation=pb.Conversation(
                    title=SECRET,
                    tags=["keep"],
                    participants=[pb.Participant(id="p1", display_name=SECRET)],
                )
            ),
            metadata=auth,
        )
    ).conversation
    precious_messages = []
    for index in range(3):
        created = await stub.CreateMessage(
            pb.CreateMessageRequest(
                parent=precious.name,
                message=pb.Message(role=2, author="u", text=f"{SECRET} message {index}"),
            ),
            metadata=auth,
        )
        precious_messages.append(created.message.name)
    scratch = (
        await stub.CreateConversation(
            pb.CreateConversationRequest(conversation=pb.Conversation(title="scratch")),
            metadata=auth,
        )
    ).conversation
    theirs = (
        await stub.CreateConversation(
            pb.CreateConversationRequest(conversation=pb.Conversation(title="globex")),
            metadata=other_auth,
        )
    ).conversation
    their_session = (
        await stub.CreateSession(
            pb.CreateSessionRequest(session=pb.Session(kind="k")), metadata=other_auth
        )
    ).session
    before = await snapshot(stub, auth, precious.name)
    globex_pages = await stub.ListConversations(
        pb.ListConversationsRequest(page_size=1), metadata=other_auth
    )

    # acme aims at its scratch data and globex's; globex and anonymous callers aim at acme's.
    scratch_message = (
        await stub.CreateMessage(
            pb.CreateMessageRequest(parent=scratch.name, message=pb.Message(role=2, text="s")),
            metadata=auth,
        )
    ).message.name
    scratch_session = (
        await stub.CreateSession(
            pb.CreateSessionRequest(session=pb.Session(kind="k")), metadata=auth
        )
    ).session.name
    targets = {
        "acme": seeds(scratch.name, scratch_message, scratch_session),
        "globex": seeds(precious.name, precious_messages[0], scratch_session),
        "anonymous": seeds(precious.name, precious_messages[0], scratch_session),
        "none": seeds(precious.name, precious_messages[0], scratch_session),
    }
    identities: list[tuple[str, Metadata, list[str]]] = [
        (
            "acme",
            auth,
            [
                scratch.name,
                theirs.name,
                their_session.name,
                "retentionPolicy",
                globex_pages.next_page_token,
            ],
        ),
        ("globex", other_auth, [precious.name, *precious_messages, "retentionPolicy"]),
        ("anonymous", auth_metadata("cal_nope"), [precious.name]),
        ("none", (), [precious.name]),
    ]
    # The barrage may change either tenant's retention policy; other tests expect it untouched.
    policies = {
        who: (
            await stub.GetRetentionPolicy(
                pb.GetRetentionPolicyRequest(name="retentionPolicy"), metadata=metadata
            )
        ).retention_policy
        for who, metadata in (("acme", auth), ("globex", other_auth))
    }
    acme_pages = await stub.ListMessages(
        pb.ListMessagesRequest(parent=precious.name, page_size=1), metadata=auth
    )
    tokens = [globex_pages.next_page_token, acme_pages.next_page_token]
    try:
        await barrage(stub, identities, targets, [t for t in tokens if t])
    finally:
        for who, metadata in (("acme", auth), ("globex", other_auth)):
            policy = pb.RetentionPolicy(
                name="retentionPolicy",
                conversation_ttl=policies[who].conversation_ttl,
                session_ttl=policies[who].session_ttl,
            )
            await stub.UpdateRetentionPolicy(
                pb.UpdateRetentionPolicyRequest(
                    retention_policy=policy,
                    update_mask=field_mask_pb2.FieldMask(paths=["conversation_ttl", "session_ttl"]),
                ),
                metadata=metadata,
            )

    # Still alive and serving; acme's data unchanged and still invisible to globex.
    persistence.check_alive()
    assert persistence.health() == health_pb2.HealthCheckResponse.SERVING
    assert await snapshot(stub, auth, precious.name) == before
    for name in (precious.name, *precious_messages):
        method = stub.GetConversation if name == precious.name else stub.GetMessage
        request = (
            pb.GetConversationRequest(name=name)
            if name == precious.name
            else pb.GetMessageRequest(name=name)
        )
        try:
            await method(request, metadata=other_auth)  # type: ignore[operator]
            raise AssertionError(f"globex can read {name}")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListConversations(
        pb.ListConversationsRequest(page_size=1000), metadata=other_auth
    )
    assert SECRET.encode() not in listed.SerializeToString()


async def test_undecodable_request_bodies_are_invalid_argument_for_every_rpc(
    persistence: ServiceProcess, auth: Metadata
) -> None:
    calls = await asyncio.to_thread(send_undecodable, persistence.address, SERVICE, auth)
    assert calls >= len(SERVICE.methods)
    # Without a valid key the body is never looked at.
    anonymous = auth_metadata("cal_nope")
    await asyncio.to_thread(send_undecodable, persistence.address, SERVICE, anonymous, False)
    persistence.check_alive()
