"""Session documents: CRUD, compare-and-set with etags, tenant isolation, listing by kind."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from persistence_test_support import Metadata, error_reason, field_violations

from callisto.api.persistence.v1 import persistence_pb2 as pb

if TYPE_CHECKING:
    from callisto.api.persistence.v1.persistence_pb2_grpc import PersistenceServiceAsyncStub as Stub


def state(**values: object) -> struct_pb2.Struct:
    document = struct_pb2.Struct()
    document.update(values)
    return document


async def test_session_crud_with_compare_and_set(stub: Stub, auth: Metadata) -> None:
    created = (
        await stub.CreateSession(
            pb.CreateSessionRequest(
                session=pb.Session(kind="workflow", state=state(step="plan")),
                session_id=f"wf-{uuid.uuid4().hex[:8]}",
            ),
            metadata=auth,
        )
    ).session
    assert (created.version, created.etag) == (1, '"1"')
    got = await stub.GetSession(pb.GetSessionRequest(name=created.name), metadata=auth)
    assert got.session == created

    updated = (
        await stub.UpdateSession(
            pb.UpdateSessionRequest(
                session=pb.Session(name=created.name, state=state(step="run"), etag=created.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["state"]),
            ),
            metadata=auth,
        )
    ).session
    assert (updated.version, updated.etag, updated.kind) == (2, '"2"', "workflow")
    assert updated.state["step"] == "run"

    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await stub.UpdateSession(
            pb.UpdateSessionRequest(
                session=pb.Session(name=created.name, state=state(step="x"), etag=created.etag)
            ),
            metadata=auth,
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    assert error_reason(stale.value) == "ETAG_MISMATCH"
    with pytest.raises(grpc.aio.AioRpcError) as stale_delete:
        await stub.DeleteSession(
            pb.DeleteSessionRequest(name=created.name, etag=created.etag), metadata=auth
        )
    assert stale_delete.value.code() == grpc.StatusCode.ABORTED

    await stub.DeleteSession(
        pb.DeleteSessionRequest(name=created.name, etag=updated.etag), metadata=auth
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.GetSession(pb.GetSessionRequest(name=created.name), metadata=auth)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_concurrent_compare_and_set_has_exactly_one_winner_per_version(
    stub: Stub, auth: Metadata
) -> None:
    session = (
        await stub.CreateSession(
            pb.CreateSessionRequest(session=pb.Session(state=state(n=0))), metadata=auth
        )
    ).session

    async def increment() -> int:
        """Read-modify-write with retries on ABORTED, as a client of the etag contract does."""
        conflicts = 0
        while True:
            current = (
                await stub.GetSession(pb.GetSessionRequest(name=session.name), metadata=auth)
            ).session
            try:
                await stub.UpdateSession(
                    pb.UpdateSessionRequest(
                        session=pb.Session(
                            name=session.name,
                            state=state(n=current.state["n"] + 1),
                            etag=current.etag,
                        ),
                        update_mask=field_mask_pb2.FieldMask(paths=["state"]),
                    ),
                    metadata=auth,
                )
                return conflicts
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.ABORTED
                conflicts += 1

    conflicts = await asyncio.gather(*(increment() for _ in range(12)))
    final = (await stub.GetSession(pb.GetSessionRequest(name=session.name), metadata=auth)).session
    assert final.state["n"] == 12  # no lost update
    assert final.version == 13
    assert sum(conflicts) > 0


async def test_sessions_are_isolated_per_tenant_and_listed_by_kind(
    stub: Stub, auth: Metadata, other_auth: Metadata
) -> None:
    kind = f"k{uuid.uuid4().hex[:8]}"
    names = {
        (
            await stub.CreateSession(
                pb.CreateSessionRequest(session=pb.Session(kind=kind)), metadata=auth
            )
        ).session.name
        for _ in range(7)
    }
    listed: list[str] = []
    token = ""
    while True:
        page = await stub.ListSessions(
            pb.ListSessionsRequest(kind=kind, page_size=3, page_token=token), metadata=auth
        )
        listed.extend(s.name for s in page.sessions)
        token = page.next_page_token
        if not token:
            break
    assert sorted(listed) == sorted(names) and len(listed) == 7
    theirs = await stub.ListSessions(pb.ListSessionsRequest(kind=kind), metadata=other_auth)
    assert list(theirs.sessions) == []
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.GetSession(pb.GetSessionRequest(name=next(iter(names))), metadata=other_auth)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_invalid_session_requests_list_every_violation(stub: Stub, auth: Metadata) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.CreateSession(
            pb.CreateSessionRequest(
                session=pb.Session(kind="k" * 65, ttl={"seconds": -1}), session_id="-bad"
            ),
            metadata=auth,
        )
    assert set(field_violations(error.value)) == {"session_id", "session.kind", "session.ttl"}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.UpdateSession(
            pb.UpdateSessionRequest(
                session=pb.Session(name="sessions/ok", etag="nope"),
                update_mask=field_mask_pb2.FieldMask(paths=["version"]),
            ),
            metadata=auth,
        )
    assert set(field_violations(error.value)) == {"update_mask", "session.etag"}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.CreateSession(pb.CreateSessionRequest(), metadata=auth)
    assert set(field_violations(error.value)) == {"session"}


async def test_update_without_mask_writes_only_the_populated_fields(
    stub: Stub, auth: Metadata
) -> None:
    created = (
        await stub.CreateSession(
            pb.CreateSessionRequest(session=pb.Session(kind="chat", state=state(a=1))),
            metadata=auth,
        )
    ).session
    updated = (
        await stub.UpdateSession(
            pb.UpdateSessionRequest(session=pb.Session(name=created.name, state=state(a=2))),
            metadata=auth,
        )
    ).session
    assert (updated.kind, updated.state["a"]) == ("chat", 2)
    cleared = (
        await stub.UpdateSession(
            pb.UpdateSessionRequest(
                session=pb.Session(name=created.name),
                update_mask=field_mask_pb2.FieldMask(paths=["kind"]),
            ),
            metadata=auth,
        )
    ).session
    assert (cleared.kind, cleared.state["a"]) == ("", 2)
