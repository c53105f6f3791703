"""Retries: idempotent calls ride out an outage as the server's RetryInfo says; writes that
the server cannot deduplicate are never retried; deadlines bound the whole call."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sdk_test_support import PATIENT, Restartable

import callisto
from callisto import errors
from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.retry import RetryPolicy

pytestmark = pytest.mark.timeout(120)


@pytest_asyncio.fixture(loop_scope="session")
async def sdk(restartable: Restartable) -> AsyncIterator[callisto.Client]:
    async with await callisto.Client.connect(
        restartable.service.address, api_key=restartable.api_key, retry_policy=PATIENT
    ) as client:
        yield client


async def test_unavailable_carries_the_servers_retry_delay(
    sdk: callisto.Client, restartable: Restartable
) -> None:
    conversation = await sdk.persistence.create_conversation(title="retry-info")
    restartable.redis.stop()
    try:
        async with await callisto.Client.connect(
            restartable.service.address,
            api_key=restartable.api_key,
            retry_policy=RetryPolicy(max_attempts=1),
        ) as once:
            with pytest.raises(errors.Unavailable) as raised:
                await once.persistence.get_conversation(conversation.name)
        assert raised.value.retry_delay is not None and raised.value.retry_delay > 0
    finally:
        restartable.redis.start()


def test_retry_waits_at_least_the_retry_info_delay() -> None:
    policy = RetryPolicy()
    told = errors.Unavailable("down", retry_delay=0.3)
    waits = [policy.delay(1, told) for _ in range(100)]
    assert all(0.3 <= wait <= 0.45 for wait in waits)
    assert len(set(waits)) > 1  # jittered
    capped = errors.Unavailable("down", retry_delay=3600)
    assert policy.delay(1, capped) <= policy.max_retry_delay * 1.5


async def test_idempotent_read_is_retried_until_redis_is_back(
    sdk: callisto.Client, restartable: Restartable
) -> None:
    conversation = await sdk.persistence.create_conversation(title="read-retry")
    restartable.redis.stop()
    back = asyncio.create_task(restartable.restart_redis_after(1.5))
    started = time.monotonic()
    fetched = await sdk.persistence.get_conversation(conversation.name, timeout=30)
    await back
    assert fetched.title == "read-retry"
    # It succeeded only after Redis came back: it was retried, not lucky.
    assert time.monotonic() - started >= 1.4


async def test_create_with_request_id_is_retried_and_stored_once(
    sdk: callisto.Client, restartable: Restartable
) -> None:
    conversation = await sdk.persistence.create_conversation(title="write-retry")
    restartable.kill_service()
    back = asyncio.create_task(restartable.restart_service_after(1.0))
    message = await sdk.persistence.create_message(
        conversation.name, pb.Message(role=1, text="once"), timeout=60
    )
    await back
    # The same request id again returns the first message instead of a second one.
    again = await sdk.persistence.create_message(
        conversation.name, pb.Message(role=1, text="once"), request_id="fixed-id"
    )
    repeat = await sdk.persistence.create_message(
        conversation.name, pb.Message(role=1, text="once"), request_id="fixed-id"
    )
    assert again.name == repeat.name
    texts = [m.name async for m in sdk.persistence.list_messages(conversation.name)]
    assert texts == [message.name, again.name]


async def test_non_idempotent_write_is_not_retried(
    sdk: callisto.Client, restartable: Restartable
) -> None:
    session = await sdk.persistence.create_session(kind="no-retry")
    restartable.redis.stop()
    try:
        started = time.monotonic()
        with pytest.raises(errors.Unavailable):
            await sdk.persistence.update_session(
                pb.Session(name=session.name, etag=session.etag, kind="changed"), ["kind"]
            )
        # One attempt: no RetryInfo wait (about 1 s) was spent.
        assert time.monotonic() - started < 0.9
    finally:
        restartable.redis.start()


async def test_deadline_bounds_all_attempts(sdk: callisto.Client, restartable: Restartable) -> None:
    conversation = await sdk.persistence.create_conversation(title="deadline")
    restartable.redis.stop()
    try:
        started = time.monotonic()
        with pytest.raises((errors.Unavailable, errors.DeadlineExceeded)):
            await sdk.persistence.get_conversation(conversation.name, timeout=0.5)
        assert time.monotonic() - started < 1.5
    finally:
        restartable.redis.start()


async def test_default_deadline_applies_to_calls_without_their_own(
    restartable: Restartable,
) -> None:
    # A frozen service cannot answer, so only the client's default deadline can end the call
    # (a tiny deadline alone races a fast local answer).
    restartable.service.send_signal(signal.SIGSTOP)
    try:
        async with await callisto.Client.connect(
            restartable.service.address,
            api_key=restartable.api_key,
            default_timeout=0.3,
            retry_policy=RetryPolicy(max_attempts=1),
        ) as hasty:
            started = time.monotonic()
            with pytest.raises(errors.DeadlineExceeded):
                await hasty.persistence.get_conversation("conversations/any")
            assert time.monotonic() - started < 5
    finally:
        restartable.service.send_signal(signal.SIGCONT)
