"""Resumable streams and paging: `subscribe_events` survives a kill -9 and restart of the
persistence service with no gap and no duplicate; list iterators follow next_page_token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sdk_test_support import PATIENT, Restartable

import callisto
from callisto import errors
from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2_grpc as pb_grpc
from callisto.mesh.gateway import EnvoyGateway
from callisto.streams import resume_stream

pytestmark = pytest.mark.timeout(180)

PERSISTENCE = "callisto.persistence.v1.PersistenceService"


@pytest_asyncio.fixture(loop_scope="session")
async def sdk(restartable: Restartable) -> AsyncIterator[callisto.Client]:
    async with await callisto.Client.connect(
        restartable.service.address, api_key=restartable.api_key, retry_policy=PATIENT
    ) as client:
        yield client


async def test_subscription_resumes_across_a_kill_and_restart_without_gap_or_duplicate(
    sdk: callisto.Client, restartable: Restartable
) -> None:
    conversation = await sdk.persistence.create_conversation(title="resume")
    await sdk.persistence.append_events(
        conversation.name, [("step", {"i": i}) for i in range(1, 21)]
    )
    total = 60
    subscription = sdk.persistence.subscribe_events(conversation.name, policy=PATIENT)
    seen: list[int] = []

    async def writer() -> None:
        # Appends go on through the outage: each is retried under its own request id.
        for i in range(21, total + 1):
            await sdk.persistence.append_event(conversation.name, "step", {"i": i}, timeout=60)
            if i == 30:
                await asyncio.to_thread(restartable.kill_service)
                asyncio.get_running_loop().call_later(
                    1.0, lambda: asyncio.ensure_future(restartable.restart_service_after(0))
                )
            await asyncio.sleep(0.01)
        finished = await sdk.persistence.get_conversation(conversation.name, timeout=30)
        await sdk.persistence.update_conversation(
            pb.Conversation(name=finished.name, status=pb.CONVERSATION_STATUS_COMPLETED),
            ["status"],
            timeout=30,
        )

    writing = asyncio.create_task(writer())
    async with asyncio.timeout(120):
        async for event in subscription:
            seen.append(event.sequence)
            if event.type == "step":
                assert event.data["i"] == event.sequence
    await writing
    # Every event once, in order: the 60 steps, then what finishing the conversation logged.
    assert subscription.end is not None
    assert seen == list(range(1, subscription.end.last_sequence + 1))
    assert len(seen) > total
    assert subscription.resumes >= 1
    assert subscription.last_sequence == subscription.end.last_sequence


async def test_a_subscription_through_envoy_resumes_when_its_upstream_dies_mid_stream(
    sdk: callisto.Client, restartable: Restartable, tmp_path: Path
) -> None:
    # Envoy resets a stream whose upstream died after the response began (RST_STREAM, which
    # gRPC reports as INTERNAL); the SDK takes that for the lost connection it is.
    gateway = EnvoyGateway.on_free_ports(
        {PERSISTENCE: ("127.0.0.1", restartable.service.port)}, tmp_path / "gateway"
    )
    await gateway.start_async()
    try:
        async with await callisto.Client.connect(
            gateway.grpc_target, api_key=restartable.api_key, retry_policy=PATIENT
        ) as through_envoy:
            conversation = await sdk.persistence.create_conversation(title="reset")
            subscription = through_envoy.persistence.subscribe_events(
                conversation.name, policy=PATIENT
            )
            seen: list[int] = []
            under_way = asyncio.Event()

            async def writer() -> None:
                for i in range(1, 31):
                    await sdk.persistence.append_event(
                        conversation.name, "step", {"i": i}, timeout=60
                    )
                    if i == 10:
                        await under_way.wait()  # the stream's response began through Envoy
                        await asyncio.to_thread(restartable.kill_service)
                        await restartable.restart_service_after(0.5)
                await sdk.persistence.update_conversation(
                    pb.Conversation(
                        name=conversation.name, status=pb.CONVERSATION_STATUS_COMPLETED
                    ),
                    ["status"],
                    timeout=30,
                )

            writing = asyncio.create_task(writer())
            async with asyncio.timeout(120):
                async for event in subscription:
                    seen.append(event.sequence)
                    if len(seen) == 10:
                        under_way.set()
            await writing
    finally:
        await gateway.stop_async()
    assert subscription.end is not None
    assert seen == list(range(1, subscription.end.last_sequence + 1))
    assert subscription.resumes >= 1


async def test_subscription_from_a_sequence_starts_after_it(sdk: callisto.Client) -> None:
    conversation = await sdk.persistence.create_conversation(title="after")
    await sdk.persistence.append_events(conversation.name, [("e", None)] * 5)
    await sdk.persistence.update_conversation(
        pb.Conversation(name=conversation.name, status=pb.CONVERSATION_STATUS_COMPLETED),
        ["status"],
    )
    subscription = sdk.persistence.subscribe_events(conversation.name, after_sequence=3)
    sequences = [event.sequence async for event in subscription]
    assert subscription.end is not None
    assert sequences == list(range(4, subscription.end.last_sequence + 1))


async def test_subscription_to_a_missing_conversation_raises_not_found(
    sdk: callisto.Client,
) -> None:
    with pytest.raises(errors.NotFound):
        async for _ in sdk.persistence.subscribe_events("conversations/missing"):
            pass


async def test_resume_stream_drops_replayed_positions_and_reopens_after_the_last(
    sdk: callisto.Client, restartable: Restartable
) -> None:
    """The generic helper over a raw stream whose cursor is coarse (it reopens two events early,
    so the server replays them) across a kill -9 and restart: each position once, in order."""
    conversation = await sdk.persistence.create_conversation(title="generic")
    await sdk.persistence.append_events(conversation.name, [("e", None)] * 10)
    stub = sdk.stub(pb_grpc.PersistenceServiceStub)
    opened: list[int] = []

    def open_stream(after: int) -> Any:
        opened.append(after)
        request = pb.SubscribeEventsRequest(
            parent=conversation.name, after_sequence=max(after - 2, 0)
        )
        return stub.SubscribeEvents(request)

    def position(response: pb.SubscribeEventsResponse) -> int | None:
        return response.sequence if response.WhichOneof("kind") == "event" else None

    seen: list[int] = []
    stream = resume_stream(open_stream, position=position, policy=PATIENT)
    async for response in stream:
        if response.WhichOneof("kind") != "event":
            continue
        seen.append(response.sequence)
        if response.sequence == 5:
            await asyncio.to_thread(restartable.kill_service)
            await restartable.restart_service_after(0.5)
        if response.sequence == 10:
            break
    await stream.aclose()
    assert seen == list(range(1, 11))
    assert opened[0] == 0 and opened[-1] == 5


async def test_paging_iterators_follow_next_page_token(sdk: callisto.Client) -> None:
    conversation = await sdk.persistence.create_conversation(title="pages")
    for i in range(7):
        await sdk.persistence.create_message(conversation.name, pb.Message(role=1, text=str(i)))
    texts = [m.text async for m in sdk.persistence.list_messages(conversation.name, page_size=2)]
    assert texts == [str(i) for i in range(7)]
    events = [e.sequence async for e in sdk.persistence.list_events(conversation.name, page_size=3)]
    assert events == list(range(1, 8))
    tag = "paging-tag"
    names = {
        (await sdk.persistence.create_conversation(title=f"p{i}", tags=[tag])).name
        for i in range(5)
    }
    listed = [c.name async for c in sdk.persistence.list_conversations(tags=[tag], page_size=2)]
    assert sorted(listed) == sorted(names)
