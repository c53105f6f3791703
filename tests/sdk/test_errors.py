"""The error hierarchy: statuses from the real persistence service decode into typed errors
with their details; raw stubs over the SDK channel are authenticated."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

import callisto
from callisto import errors
from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2_grpc as pb_grpc
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import ServiceProcess


def packed(*details: object) -> list[any_pb2.Any]:
    out = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)  # type: ignore[arg-type]
        out.append(holder)
    return out


def test_from_status_decodes_every_detail_kind() -> None:
    status = status_pb2.Status(
        code=grpc.StatusCode.FAILED_PRECONDITION.value[0],
        message="not now",
        details=packed(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field="a.b", description="bad")
                ]
            ),
            error_details_pb2.ErrorInfo(
                reason="FINISHED", domain="callisto.dev", metadata={"k": "v"}
            ),
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=2, nanos=5 * 10**8)
            ),
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type="STATUS", subject="conversations/c", description="finished"
                    )
                ]
            ),
        ),
    )
    error = errors.from_status(status)
    assert isinstance(error, errors.FailedPrecondition)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.message == "not now"
    assert error.field_violations == {"a.b": "bad"}
    assert (error.reason, error.domain, error.metadata) == ("FINISHED", "callisto.dev", {"k": "v"})
    assert error.retry_delay == 2.5
    assert error.precondition_violations == [
        errors.PreconditionViolation("STATUS", "conversations/c", "finished")
    ]
    assert error.retryable


def test_every_status_code_but_ok_has_its_own_subclass() -> None:
    for code in grpc.StatusCode:
        if code == grpc.StatusCode.OK:
            continue
        cls = errors.error_class(code)
        assert cls is not errors.CallistoError
        assert cls.code == code


async def test_invalid_request_raises_invalid_argument_with_field_violations(
    client: callisto.Client,
) -> None:
    with pytest.raises(errors.InvalidArgument) as raised:
        await client.persistence.create_conversation(conversation_id="Not An Id!", title="x")
    assert "conversation_id" in raised.value.field_violations
    assert raised.value.reason == "INVALID_ARGUMENT"
    assert not raised.value.retryable


async def test_missing_conversation_raises_not_found(client: callisto.Client) -> None:
    with pytest.raises(errors.NotFound):
        await client.persistence.get_conversation("conversations/never-created")


async def test_stale_etag_raises_aborted(client: callisto.Client) -> None:
    session = await client.persistence.create_session(kind="sdk", state={"n": 1})
    await client.persistence.update_session(
        pb.Session(name=session.name, etag=session.etag, kind="sdk"), ["kind"]
    )
    with pytest.raises(errors.Aborted):
        await client.persistence.update_session(
            pb.Session(name=session.name, etag=session.etag, kind="sdk"), ["kind"]
        )


async def test_wrong_api_key_raises_unauthenticated(persistence: ServiceProcess) -> None:
    async with await callisto.Client.connect(persistence.address, api_key="ck_wrong") as bad:
        with pytest.raises(errors.Unauthenticated):
            await bad.persistence.get_conversation("conversations/x")


async def test_raw_stub_over_the_client_channel_carries_the_api_key(
    client: callisto.Client,
) -> None:
    created = await client.persistence.create_conversation(title="raw")
    stub = client.stub(pb_grpc.PersistenceServiceStub)
    response = await stub.GetConversation(pb.GetConversationRequest(name=created.name))
    assert response.conversation.title == "raw"


async def test_raw_stub_errors_decode_with_from_rpc_error(client: callisto.Client) -> None:
    stub = client.stub(pb_grpc.PersistenceServiceStub)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetConversation(pb.GetConversationRequest(name="bogus"))
    error = errors.from_rpc_error(raised.value)
    assert isinstance(error, errors.InvalidArgument)
    assert "name" in error.field_violations


async def test_the_sdk_works_through_the_gateway_with_error_details_intact(
    persistence_gateway: EnvoyGateway, api_key: str
) -> None:
    async with await callisto.Client.connect(
        persistence_gateway.grpc_target, api_key=api_key
    ) as through:
        created = await through.persistence.create_conversation(title="via envoy")
        assert (await through.persistence.get_conversation(created.name)).title == "via envoy"
        with pytest.raises(errors.InvalidArgument) as raised:
            await through.persistence.create_conversation(conversation_id="Bad Id!")
        assert "conversation_id" in raised.value.field_violations


def test_callisto_errors_imports_first_thing_in_a_fresh_interpreter() -> None:
    # `from callisto import errors` before anything else loaded the SDK once recursed forever.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from callisto import errors; import callisto; "
            "print(errors.NotFound.__name__, callisto.Client.__name__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["NotFound", "Client"]
