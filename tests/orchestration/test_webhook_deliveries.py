"""Webhook deliveries end to end: a real orchestration process allowed to reach 127.0.0.1
(CALLISTO_OUTBOUND_ALLOWED_NETWORKS) and a dispatcher of the test process sharing its
persistence and Redis, as a replica would, posting to the real local receiver
(`callisto.mesh.webhook_receiver`). Signed deliveries verify at the receiver; failures are
retried with growing waits and every attempt is recorded; one delivery per webhook and key
however often it is published; a delivery outlives the process that published it; a redirect
to a refused address is a recorded failure; deleting a webhook stops its deliveries; and
`send_webhook` with the same idempotency key sends once."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from outbound_test_support import (
    LOOPBACK_ALLOWED,
    SECRET,
    LocalServer,
    OutboundMesh,
    client_of,
    in_process_dispatcher,
    module_mesh,
)

import callisto
from callisto import errors
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.mesh.webhook_receiver import WebhookReceiver
from callisto.services.common.tenancy import bind_tenant, reset_tenant
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.tools.builtin import build_registry
from callisto.services.orchestration.tools.registry import ToolContext
from callisto.services.orchestration.webhooks import WebhookDispatcher
from callisto.signing import verify

pytestmark = pytest.mark.asyncio(loop_scope="session")

mesh = module_mesh(LOOPBACK_ALLOWED)
TENANT = "acme"


@contextlib.contextmanager
def as_tenant(tenant: str) -> Iterator[None]:
    token = bind_tenant(tenant)
    try:
        yield
    finally:
        reset_tenant(token)


@contextlib.contextmanager
def receiver(tmp_path: Path, fail_first: int = 0) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET, tmp_path / "deliveries.jsonl", fail_first=fail_first) as r:
        yield r


@pytest.fixture
async def acme(mesh: OutboundMesh) -> AsyncIterator[callisto.Client]:
    async with client_of(mesh, TENANT) as client:
        yield client


@pytest.fixture
async def dispatcher(mesh: OutboundMesh) -> AsyncIterator[tuple[WebhookDispatcher, Backends]]:
    async with in_process_dispatcher(mesh) as pair:
        yield pair


async def deliveries(client: callisto.Client, webhook: str) -> list[pb.WebhookDelivery]:
    return [d async for d in client.orchestration.list_webhook_deliveries(webhook)]


async def settled(
    client: callisto.Client, webhook: str, count: int = 1
) -> list[pb.WebhookDelivery]:
    """The webhook's deliveries once `count` of them are no longer pending."""
    for _ in range(300):
        found = await deliveries(client, webhook)
        done = [d for d in found if d.state != pb.DELIVERY_STATE_PENDING]
        if len(done) >= count:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"deliveries still pending: {found}")


def seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


async def test_delivery_is_signed_and_verifies_at_the_receiver(
    acme: callisto.Client, dispatcher: tuple[WebhookDispatcher, Backends], tmp_path: Path
) -> None:
    with receiver(tmp_path) as local:
        hook = await acme.orchestration.create_webhook(
            url=local.url, secret=SECRET, event_types=["run.done"]
        )
        with as_tenant(TENANT):
            delivery = await dispatcher[0].deliver(
                hook.name,
                "run.done",
                {"outcome": "approved", "total": 1200},
                idempotency_key="run-1:done",
                conversation="conversations/c1",
            )
        assert delivery.state == pb.DELIVERY_STATE_SUCCEEDED
        (record,) = local.records()
    assert record["verified"] and record["acted"] and not record["duplicate"]
    assert record["event"] == "run.done" and record["idempotency_key"] == "run-1:done"
    body = record["body"]
    assert set(body) == {"id", "type", "created", "conversation", "data"}
    assert body["type"] == "run.done" and body["conversation"] == "conversations/c1"
    assert body["data"] == {"outcome": "approved", "total": 1200}
    assert TENANT not in json.dumps(body)
    assert delivery.name == f"{hook.name}/deliveries/{body['id']}"
    # The receiver's check is the SDK's: the same header verifies the stored body.
    assert verify(SECRET, record["signature"], delivery.body.encode())
    assert not verify("another-secret-0123456789", record["signature"], delivery.body.encode())
    (listed,) = await deliveries(acme, hook.name)
    assert listed.state == pb.DELIVERY_STATE_SUCCEEDED and listed.body == delivery.body
    assert [a.status_code for a in listed.attempts] == [200]


async def test_failed_attempts_are_retried_with_backoff_and_all_recorded(
    acme: callisto.Client, dispatcher: tuple[WebhookDispatcher, Backends], tmp_path: Path
) -> None:
    with receiver(tmp_path, fail_first=2) as local:
        hook = await acme.orchestration.create_webhook(
            url=local.url, secret=SECRET, event_types=["step.failed"]
        )
        with as_tenant(TENANT):
            delivery = await dispatcher[0].deliver(
                hook.name, "step.failed", {"step": "a"}, idempotency_key="run-2:step-a"
            )
        records = local.records()
    assert delivery.state == pb.DELIVERY_STATE_SUCCEEDED
    assert [r["status"] for r in records] == [500, 500, 200]
    assert {r["idempotency_key"] for r in records} == {"run-2:step-a"}
    assert [r["acted"] for r in records] == [False, False, True]
    (listed,) = await deliveries(acme, hook.name)
    attempts = list(listed.attempts)
    assert [a.status_code for a in attempts] == [500, 500, 200]
    assert [bool(a.error) for a in attempts] == [True, True, False]
    assert "HTTP 500" in attempts[0].error
    assert all(a.latency.ToNanoseconds() > 0 for a in attempts)
    times = [seconds(a.time) for a in attempts]
    first_wait, second_wait = times[1] - times[0], times[2] - times[1]
    # Base 0.3 s then 0.6 s, each plus up to 0.15 s of jitter.
    assert 0.3 <= first_wait < 0.45 + 0.3
    assert 0.6 <= second_wait < 0.75 + 0.3


async def test_publishing_the_same_event_again_delivers_once_to_subscribed_webhooks_only(
    acme: callisto.Client, dispatcher: tuple[WebhookDispatcher, Backends], tmp_path: Path
) -> None:
    with receiver(tmp_path) as local, receiver(tmp_path / "other") as other:
        done = await acme.orchestration.create_webhook(
            url=local.url, secret=SECRET, event_types=["run.done"]
        )
        failed = await acme.orchestration.create_webhook(
            url=other.url, secret=SECRET, event_types=["run.failed"]
        )
        with as_tenant(TENANT):
            for _ in range(3):
                await dispatcher[0].publish(
                    "run.done", {"n": 1}, idempotency_key="run-3:done", conversation="c"
                )
        local.wait_for(lambda records: any(r["acted"] for r in records))
        await asyncio.sleep(1.0)
        assert len(local.records()) == 1
        assert other.records() == []
    assert len(await deliveries(acme, done.name)) == 1
    assert await deliveries(acme, failed.name) == []


async def test_a_delivery_outlives_the_process_that_published_it(
    mesh: OutboundMesh, acme: callisto.Client, tmp_path: Path
) -> None:
    with receiver(tmp_path, fail_first=1) as local:
        hook = await acme.orchestration.create_webhook(
            url=local.url, secret=SECRET, event_types=["approval.requested"]
        )
        async with in_process_dispatcher(mesh) as (publisher, _):
            with as_tenant(TENANT):
                await publisher.publish(
                    "approval.requested", {"approval": "a1"}, idempotency_key="run-4:approval"
                )
        # The publisher is gone (its sending cancelled); the orchestration process's sweeper
        # finds the pending delivery when it is due and finishes it.
        (delivery,) = await settled(acme, hook.name)
        records = local.records()
    assert delivery.state == pb.DELIVERY_STATE_SUCCEEDED
    assert [r["acted"] for r in records].count(True) == 1
    assert delivery.attempts[-1].status_code == 200


async def test_a_redirect_to_a_refused_address_is_a_recorded_failure(
    acme: callisto.Client, dispatcher: tuple[WebhookDispatcher, Backends]
) -> None:
    metadata = "http://169.254.169.254/latest/meta-data/"
    with LocalServer(lambda seen, i: (302, {"Location": metadata}, b"")) as server:
        hook = await acme.orchestration.create_webhook(
            url=server.url + "/hook", secret=SECRET, event_types=["run.done"]
        )
        with as_tenant(TENANT):
            delivery = await dispatcher[0].deliver(
                hook.name, "run.done", {}, idempotency_key="run-5:done"
            )
    assert delivery.state == pb.DELIVERY_STATE_FAILED
    (attempt,) = delivery.attempts
    assert "refused address" in attempt.error and "link-local" in attempt.error
    assert attempt.status_code == 0
    assert len(server.requests) == 1


async def test_deleting_a_webhook_stops_its_pending_deliveries(
    acme: callisto.Client, dispatcher: tuple[WebhookDispatcher, Backends], tmp_path: Path
) -> None:
    with receiver(tmp_path, fail_first=100) as local:
        hook = await acme.orchestration.create_webhook(
            url=local.url, secret=SECRET, event_types=["run.done"]
        )
        with as_tenant(TENANT):
            await dispatcher[0].publish("run.done", {}, idempotency_key="run-6:done")
        local.wait_for(lambda records: len(records) >= 1)
        await acme.orchestration.delete_webhook(hook.name)
        seen = len(local.records())
        await asyncio.sleep(2.0)
        # At most the attempt already in flight when it was deleted.
        assert len(local.records()) <= seen + 1
        with pytest.raises(errors.NotFound):
            await deliveries(acme, hook.name)


async def test_send_webhook_with_the_same_idempotency_key_sends_once(
    mesh: OutboundMesh,
    acme: callisto.Client,
    dispatcher: tuple[WebhookDispatcher, Backends],
    tmp_path: Path,
) -> None:
    registry = build_registry(mesh.settings(), webhooks=dispatcher[0])
    with receiver(tmp_path) as local:
        hook = await acme.orchestration.create_webhook(
            url=local.url, secret=SECRET, event_types=["run.done"]
        )

        def context(key: str) -> ToolContext:
            return ToolContext(
                tenant=TENANT,
                conversation="conversations/wf-1",
                agent=pb.Agent(),
                backends=dispatcher[1],
                idempotency_key=key,
            )

        arguments = {"webhook": hook.name, "event_type": "workflow.action", "payload": {"po": 7}}
        first = await registry.call(
            "send_webhook", arguments, context("wf-1:notify:1"), call_id="1"
        )
        again = await registry.call(
            "send_webhook", arguments, context("wf-1:notify:1"), call_id="2"
        )
        assert first.ok and again.ok, (first.error, again.error)
        assert first.result is not None and again.result is not None
        assert first.result.data["delivery"] == again.result.data["delivery"]
        assert first.result.data["state"] == "succeeded"
        assert len(local.records()) == 1
        other = await registry.call(
            "send_webhook", arguments, context("wf-1:notify:2"), call_id="3"
        )
        assert other.ok and len(local.records()) == 2
        assert [r["idempotency_key"] for r in local.records()] == ["wf-1:notify:1", "wf-1:notify:2"]
        refused = await registry.call(
            "send_webhook",
            {**arguments, "event_type": "run.failed"},
            context("wf-1:notify:3"),
            call_id="4",
        )
        assert not refused.ok and "takes only" in refused.error
    listed = await deliveries(acme, hook.name)
    # Newest first.
    assert [d.idempotency_key for d in listed] == ["wf-1:notify:2", "wf-1:notify:1"]
    assert registry.get("send_webhook").side_effects
