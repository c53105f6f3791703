"""SubmitFeedback against the real orchestration process: the rating is stored with the
message in the persistence service (visible through GetMessage), acts as the caller's tenant
(another tenant's message is NOT_FOUND), validates its input, and works over HTTP/JSON through
the real Envoy gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING

import grpc
import httpx
import pytest
import pytest_asyncio

import callisto
from callisto import errors
from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.api.persistence.v1 import persistence_pb2
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import ServiceProcess

if TYPE_CHECKING:
    from callisto.api.orchestration.v1.orchestration_pb2_grpc import (
        OrchestrationServiceAsyncStub as Stub,
    )

UP, DOWN = persistence_pb2.FEEDBACK_RATING_UP, persistence_pb2.FEEDBACK_RATING_DOWN


async def answer(client: callisto.Client) -> persistence_pb2.Message:
    """An assistant message in a new conversation of the client's tenant."""
    conversation = await client.persistence.create_conversation(
        persistence_pb2.Conversation(title="rated")
    )
    await client.persistence.create_message(
        conversation.name, persistence_pb2.Message(role=common_pb2.ROLE_USER, text="question")
    )
    return await client.persistence.create_message(
        conversation.name,
        persistence_pb2.Message(role=common_pb2.ROLE_ASSISTANT, author="agent", text="answer [1]"),
    )


async def failure(call: Awaitable[object]) -> errors.CallistoError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return errors.from_rpc_error(raised.value)


def feedback(name: str, rating: int, comment: str = "") -> pb.SubmitFeedbackRequest:
    return pb.SubmitFeedbackRequest(
        name=name, rating=persistence_pb2.FeedbackRating.ValueType(rating), comment=comment
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def globex_orchestration(
    orchestration: ServiceProcess, other_api_key: str
) -> AsyncIterator[Stub]:
    async with await callisto.Client.connect(
        orchestration.address, api_key=other_api_key
    ) as client:
        yield client.stub(pb_grpc.OrchestrationServiceStub)


async def test_feedback_is_stored_with_the_message(
    orch_stub: Stub, persistence_client: callisto.Client
) -> None:
    message = await answer(persistence_client)
    reply = await orch_stub.SubmitFeedback(feedback(message.name, UP, "clear and sourced"))
    rated = reply.message
    assert rated.name == message.name and rated.text == message.text
    assert (rated.feedback.rating, rated.feedback.comment) == (UP, "clear and sourced")
    assert rated.feedback.HasField("update_time")
    stored = await persistence_client.persistence.get_message(message.name)
    assert stored == rated

    changed = (await orch_stub.SubmitFeedback(feedback(message.name, DOWN))).message
    assert (changed.feedback.rating, changed.feedback.comment) == (DOWN, "")
    stored = await persistence_client.persistence.get_message(message.name)
    assert stored.feedback.rating == DOWN
    listed = [
        m
        async for m in persistence_client.persistence.list_messages(
            message.name.split("/messages/")[0]
        )
    ]
    assert [m.feedback.rating for m in listed] == [
        persistence_pb2.FEEDBACK_RATING_UNSPECIFIED,
        DOWN,
    ]


async def test_another_tenants_message_is_not_found_and_left_unrated(
    globex_orchestration: Stub, persistence_client: callisto.Client
) -> None:
    message = await answer(persistence_client)
    error = await failure(globex_orchestration.SubmitFeedback(feedback(message.name, DOWN, "x")))
    assert error.code == grpc.StatusCode.NOT_FOUND
    stored = await persistence_client.persistence.get_message(message.name)
    assert not stored.HasField("feedback")


async def test_a_missing_message_or_conversation_is_not_found(
    orch_stub: Stub, persistence_client: callisto.Client
) -> None:
    message = await answer(persistence_client)
    conversation = message.name.split("/messages/")[0]
    for name in (f"{conversation}/messages/3", "conversations/no-such-one/messages/1"):
        error = await failure(orch_stub.SubmitFeedback(feedback(name, UP)))
        assert error.code == grpc.StatusCode.NOT_FOUND, name


@pytest.mark.parametrize(
    ("name", "rating", "comment", "field"),
    [
        ("conversations/c1/messages/1", 0, "", "rating"),
        ("conversations/c1/messages/1", 9, "", "rating"),
        ("conversations/c1/messages/1", 1, "x" * 4097, "comment"),
        ("", 1, "", "name"),
        ("conversations/c1", 1, "", "name"),
        ("conversations/c1/messages/0", 1, "", "name"),
        ("conversations/c1/messages/x", 1, "", "name"),
        ("conversations/C1/messages/1", 1, "", "name"),
        ("agents/a/messages/1", 1, "", "name"),
    ],
)
async def test_invalid_feedback_names_the_field(
    orch_stub: Stub, name: str, rating: int, comment: str, field: str
) -> None:
    error = await failure(orch_stub.SubmitFeedback(feedback(name, rating, comment)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.field_violations, error.field_violations


async def test_a_bad_rating_leaves_the_message_unrated(
    orch_stub: Stub, persistence_client: callisto.Client
) -> None:
    message = await answer(persistence_client)
    error = await failure(orch_stub.SubmitFeedback(feedback(message.name, 0, "no rating")))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    stored = await persistence_client.persistence.get_message(message.name)
    assert not stored.HasField("feedback")


async def test_feedback_over_http_through_the_gateway(
    mesh_gateway: EnvoyGateway, api_key: str, persistence_client: callisto.Client
) -> None:
    message = await answer(persistence_client)
    async with httpx.AsyncClient(
        base_url=mesh_gateway.http_url, headers={"authorization": f"Bearer {api_key}"}
    ) as http:
        response = await http.post(
            f"/v1/{message.name}:submitFeedback",
            json={"rating": "FEEDBACK_RATING_DOWN", "comment": "wrong date"},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["message"]["feedback"]["rating"] == "FEEDBACK_RATING_DOWN"
        assert body["message"]["feedback"]["comment"] == "wrong date"
        invalid = await http.post(f"/v1/{message.name}:submitFeedback", json={"comment": "?"})
        assert invalid.status_code == 400
    stored = await persistence_client.persistence.get_message(message.name)
    assert (stored.feedback.rating, stored.feedback.comment) == (DOWN, "wrong date")
