"""Webhooks of a tenant and the deliveries of its events (store and dispatcher).

A webhook is a persistence session `webhook-{id}` of kind `orchestration.webhook` of the tenant
bound to the context (so another tenant's is NOT_FOUND): the resource without its secret, the
secret (needed to sign; never returned, never logged) and a random incarnation `uid`. A tenant
holds at most `MAX_WEBHOOKS` (checked at create; two racing creates may pass it by one).

Each delivery is a session `whd-{digest}` whose id is derived from the webhook's uid and the
event's idempotency key, so publishing the same event again (after a restart, or a repeated
`send_webhook`) finds the record instead of making a second one. Its kind is
`orchestration.webhook_delivery.{uid}`, which lists one webhook's deliveries newest first (a
re-created webhook of the same id does not inherit the old one's). A delivery is PENDING until
a 2xx (SUCCEEDED) or its last attempt or a refused address (FAILED); every attempt is recorded.

Who sends: a sorted set in the mesh's Redis (`DUE`) holds every PENDING delivery, scored by
when its next attempt is due. It is written before the record is created, so a crash in
between leaves an entry whose record is missing (dropped by the next look), never a record
nobody will send. One attempt is made under a short Redis lease per delivery (`SET NX PX`,
longer than an attempt can take): the holder re-reads the record, sends only when it is still
PENDING and due, writes the attempt by etag compare-and-set, reschedules or unindexes it, and
releases the lease. The process that published drives its deliveries itself; every process
also sweeps `DUE` each `SWEEP_INTERVAL_S` for deliveries that are due and leased by nobody
(their process died), so a delivery survives restarts and is never sent by two processes at
once. Retries wait `webhook_retry_base_s` · 2^(n-1) plus up to half the base of jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import re
import time
import unicodedata
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from redis.asyncio import Redis
from redis.exceptions import RedisError

from callisto import errors as sdk
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2
from callisto.persistence import PersistenceClient
from callisto.services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from callisto.services.common.tenancy import bind_tenant, current_tenant, reset_tenant
from callisto.services.common.validation import Violations, check_page_size
from callisto.services.orchestration.outbound import (
    OutboundClient,
    OutboundError,
    OutboundRefused,
    check_url,
)
from callisto.services.orchestration.relay import relayed
from callisto.services.orchestration.session_lists import all_sessions, session_page
from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.webhook_events import ACTION_EVENT, DELIVERED_EVENTS
from callisto.signing import signed_headers

log = logging.getLogger("callisto.orchestration.webhooks")

KIND = "orchestration.webhook"
DELIVERY_KIND = "orchestration.webhook_delivery."
WEBHOOK_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,49}$")
WEBHOOK_NAME = re.compile(r"^webhooks/([a-z0-9][a-z0-9-]{0,62})$")
DELIVERY_ID = re.compile(r"^[0-9a-f]{40}$")
EVENT_TYPES = DELIVERED_EVENTS
MAX_WEBHOOKS = 20
MAX_DESCRIPTION = 1000
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 16, 256
MAX_KEY_CHARS = 256
MAX_BODY_BYTES = 256 * 1024
# Deliveries are kept this long after their last write (webhooks themselves forever).
DELIVERY_TTL_S = 30 * 24 * 3600
KEEP_FOREVER = duration_pb2.Duration()

PREFIX = "callisto:orchestration:webhooks"
DUE = f"{PREFIX}:due"
SWEEP_INTERVAL_S = 1.0
SWEEP_BATCH = 100
# A lease outlives an attempt (bounded by outbound_timeout_s) by this much: enough for the
# record's load and save around the send. It is also how long a delivery whose sender died
# waits before another process sends it again (with the same Idempotency-Key, so a receiver
# that already acted on it does not act twice).
LEASE_MARGIN_S = 5.0
# How often `deliver` looks again at a delivery another process is sending.
POLL_S = 0.2

_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('del', KEYS[1]) else return 0 end"
)

_STATES = {
    "PENDING": pb.DELIVERY_STATE_PENDING,
    "SUCCEEDED": pb.DELIVERY_STATE_SUCCEEDED,
    "FAILED": pb.DELIVERY_STATE_FAILED,
}


@dataclass(frozen=True)
class StoredWebhook:
    """A webhook as stored: the resource (no secret), its secret and incarnation."""

    webhook: pb.Webhook
    secret: str
    uid: str

    @property
    def webhook_id(self) -> str:
        return self.webhook.name.removeprefix("webhooks/")


class WebhookStore:
    """Create, read, list and delete the webhooks of the tenant bound to the context."""

    def __init__(self, persistence: PersistenceClient, outbound: OutboundClient) -> None:
        self._persistence = persistence
        self._outbound = outbound

    async def create(self, webhook: pb.Webhook, webhook_id: str = "") -> pb.Webhook:
        v = Violations()
        if webhook_id and not WEBHOOK_ID.match(webhook_id):
            v.add(
                "webhook_id",
                "must be 1-50 lower-case letters, digits or '-', not starting with '-'",
            )
        problem = await check_url(self._outbound.guard, webhook.url)
        if problem:
            v.add("webhook.url", problem)
        check_secret(v, webhook.secret, "webhook.secret")
        seen: set[str] = set()
        for index, event_type in enumerate(webhook.event_types):
            if event_type not in EVENT_TYPES:
                v.add(
                    f"webhook.event_types[{index}]",
                    f"unknown event type {event_type[:64]!r}; known: {', '.join(EVENT_TYPES)}",
                )
            elif event_type in seen:
                v.add(f"webhook.event_types[{index}]", "is a duplicate")
            seen.add(event_type)
        check_label(v, webhook.description, MAX_DESCRIPTION, "webhook.description")
        v.raise_if_any()
        count = 0
        try:
            async for _ in self._persistence.list_sessions(kind=KIND, page_size=100):
                count += 1
        except sdk.CallistoError as error:
            raise relayed(error) from None
        if count >= MAX_WEBHOOKS:
            raise ResourceExhausted(
                f"a tenant may register at most {MAX_WEBHOOKS} webhooks; delete one first"
            )
        webhook_id = webhook_id or uuid.uuid4().hex
        created = pb.Webhook(
            name=f"webhooks/{webhook_id}",
            url=webhook.url,
            event_types=list(webhook.event_types),
            description=webhook.description,
        )
        created.create_time.GetCurrentTime()
        state = _struct(
            {"webhook": _json(created), "secret": webhook.secret, "uid": uuid.uuid4().hex[:16]}
        )
        try:
            await self._persistence.create_session(
                persistence_pb2.Session(kind=KIND, state=state, ttl=KEEP_FOREVER),
                session_id=_session_id(webhook_id),
            )
        except sdk.CallistoError as error:
            raise relayed(error) from None
        return created

    async def get(self, name: str, field: str = "name") -> pb.Webhook:
        return (await self.stored(name, field)).webhook

    async def stored(self, name: str, field: str = "name") -> StoredWebhook:
        """The webhook with its secret; NotFound for another tenant's or a missing one."""
        webhook_id = parse_webhook_name(name, field)
        found = await self._load(webhook_id)
        if found is None:
            raise _not_found(f"webhooks/{webhook_id}")
        return found

    async def list_webhooks(self, page_size: int, page_token: str) -> tuple[list[pb.Webhook], str]:
        v = Violations()
        page_size = check_page_size(v, page_size, default=50, maximum=100)
        v.raise_if_any()
        sessions, token = await session_page(
            self._persistence, KIND, page_size, page_token, "webhooks"
        )
        return [_read_webhook(s).webhook for s in sessions], token

    async def all_stored(self) -> list[StoredWebhook]:
        """Every webhook of the tenant, with secrets (at most MAX_WEBHOOKS and a few)."""
        return [_read_webhook(s) for s in await all_sessions(self._persistence, KIND)]

    async def delete(self, name: str) -> StoredWebhook:
        """Removes the webhook, then (best effort) its deliveries; its pending deliveries stop
        because their attempts no longer find it."""
        stored = await self.stored(name)
        try:
            await self._persistence.delete_session(_session_id(stored.webhook_id))
        except sdk.NotFound:
            raise _not_found(stored.webhook.name) from None
        except sdk.CallistoError as error:
            raise relayed(error) from None
        try:
            async for session in self._persistence.list_sessions(
                kind=DELIVERY_KIND + stored.uid, page_size=200
            ):
                with contextlib.suppress(sdk.NotFound):
                    await self._persistence.delete_session(session.name)
        except sdk.CallistoError as error:
            log.warning("could not remove a deleted webhook's deliveries", exc_info=error)
        return stored

    async def list_deliveries(
        self, parent: str, page_size: int, page_token: str
    ) -> tuple[list[pb.WebhookDelivery], str]:
        v = Violations()
        page_size = check_page_size(v, page_size, default=50, maximum=100)
        v.raise_if_any()
        stored = await self.stored(parent, "parent")
        sessions, token = await session_page(
            self._persistence,
            DELIVERY_KIND + stored.uid,
            page_size,
            page_token,
            stored.webhook.name,
        )
        return [_read_delivery(s).delivery for s in sessions], token

    async def _load(self, webhook_id: str) -> StoredWebhook | None:
        try:
            session = await self._persistence.get_session(_session_id(webhook_id))
        except sdk.NotFound:
            return None
        except sdk.CallistoError as error:
            raise relayed(error) from None
        if session.kind != KIND:
            return None
        return _read_webhook(session)


@dataclass
class _Delivery:
    """A delivery record: the resource and what sending it needs."""

    delivery: pb.WebhookDelivery
    webhook_id: str
    uid: str
    next_ms: int
    etag: str
    session_id: str

    @property
    def pending(self) -> bool:
        return self.delivery.state == pb.DELIVERY_STATE_PENDING


class WebhookDispatcher:
    """Records and sends deliveries (one per process; `start`/`stop` from server.build)."""

    def __init__(
        self,
        store: WebhookStore,
        persistence: PersistenceClient,
        redis: Redis,
        outbound: OutboundClient,
        settings: OrchestrationSettings,
    ) -> None:
        self.store = store
        self._persistence = persistence
        self._redis = redis
        self._outbound = outbound
        self._max_attempts = max(1, settings.webhook_max_attempts)
        self._retry_base_s = max(0.0, settings.webhook_retry_base_s)
        self._lease_ms = int((outbound.timeout_s + LEASE_MARGIN_S) * 1000)
        self.owner = uuid.uuid4().hex
        self._driving: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def longest_delivery_s(self) -> float:
        """An upper bound of `deliver`'s time: every attempt and every wait between them."""
        waits = sum(self._retry_base_s * (1.5 * 2.0**n) for n in range(self._max_attempts - 1))
        return float(self._max_attempts * self._outbound.timeout_s + waits + 5.0)

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        tasks = [t for t in (self._sweeper, *self._driving.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._driving.clear()
        await self._outbound.aclose()

    # What runs call

    async def publish(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str,
        conversation: str = "",
    ) -> None:
        """Records a delivery of the event to every webhook of the bound tenant subscribed to
        `event_type` and sends them in the background; publishing the same key again adds
        nothing. Returns once every record is written."""
        _check_event(event_type, idempotency_key)
        tenant = current_tenant()
        for stored in await self.store.all_stored():
            if event_type in stored.webhook.event_types:
                record = await self._record(
                    tenant, stored, event_type, payload, idempotency_key, conversation
                )
                if record.pending:
                    self._drive(tenant, record.session_id)

    async def deliver(
        self,
        webhook_name: str,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str,
        conversation: str = "",
    ) -> pb.WebhookDelivery:
        """Sends the event to one webhook of the bound tenant now (with the retries) and
        returns the recorded delivery; the same key again returns the record of the first
        without sending once more if it already ended. ValueError for an event type the
        webhook does not take; NotFound for an unknown webhook."""
        _check_event(event_type, idempotency_key)
        stored = await self.store.stored(webhook_name, "webhook")
        if event_type != ACTION_EVENT and event_type not in stored.webhook.event_types:
            allowed = ", ".join([*stored.webhook.event_types, ACTION_EVENT])
            raise ValueError(f"{stored.webhook.name} takes only {allowed}, not {event_type!r}")
        tenant = current_tenant()
        record = await self._record(
            tenant, stored, event_type, payload, idempotency_key, conversation
        )
        while record.pending:
            outcome = await self._attempt(tenant, record.session_id)
            loaded = await self._load(record.session_id)
            if loaded is None:
                raise _not_found(webhook_name)
            record = loaded
            if record.pending:
                wait = record.next_ms / 1000 - time.time()
                await asyncio.sleep(max(wait, POLL_S if outcome == "busy" else 0.0))
        return record.delivery

    # Records

    async def _record(
        self,
        tenant: str,
        stored: StoredWebhook,
        event_type: str,
        payload: Mapping[str, Any],
        key: str,
        conversation: str,
    ) -> _Delivery:
        digest = hashlib.sha256(f"{stored.uid}\n{key}".encode()).hexdigest()[:40]
        session_id = f"whd-{digest}"
        existing = await self._load(session_id)
        if existing is not None:
            return existing
        created = timestamp_pb2.Timestamp()
        created.GetCurrentTime()
        body = json.dumps(
            {
                "id": digest,
                "type": event_type,
                "created": created.ToJsonString(),
                "conversation": conversation,
                "data": payload,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )
        if len(body.encode()) > MAX_BODY_BYTES:
            raise ValueError(f"a delivery's body must be at most {MAX_BODY_BYTES} bytes")
        delivery = pb.WebhookDelivery(
            name=f"{stored.webhook.name}/deliveries/{digest}",
            event_type=event_type,
            idempotency_key=key,
            state=pb.DELIVERY_STATE_PENDING,
            conversation=conversation,
            create_time=created,
            body=body,
        )
        now_ms = int(time.time() * 1000)
        # Indexed first: a crash before the record exists leaves only an entry to drop.
        await self._schedule(tenant, session_id, now_ms, only_new=True)
        state = _delivery_state(delivery, stored.webhook_id, stored.uid, now_ms)
        try:
            session = await self._persistence.create_session(
                persistence_pb2.Session(
                    kind=DELIVERY_KIND + stored.uid,
                    state=state,
                    ttl=duration_pb2.Duration(seconds=DELIVERY_TTL_S),
                ),
                session_id=session_id,
            )
        except sdk.AlreadyExists:
            # Published concurrently by another caller: theirs is the record.
            found = await self._load(session_id)
            if found is None:
                raise NotFound("the delivery vanished while it was recorded") from None
            return found
        except sdk.CallistoError as error:
            raise relayed(error) from None
        return _read_delivery(session)

    async def _load(self, session_id: str) -> _Delivery | None:
        try:
            session = await self._persistence.get_session(session_id)
        except sdk.NotFound:
            return None
        except sdk.CallistoError as error:
            raise relayed(error) from None
        if not session.kind.startswith(DELIVERY_KIND):
            return None
        return _read_delivery(session)

    # Sending

    def _drive(self, tenant: str, session_id: str) -> None:
        member = _member(tenant, session_id)
        if member in self._driving:
            return
        task = asyncio.create_task(self._drive_one(tenant, session_id))
        self._driving[member] = task
        task.add_done_callback(lambda _: self._driving.pop(member, None))

    async def _drive_one(self, tenant: str, session_id: str) -> None:
        token = bind_tenant(tenant)
        try:
            while True:
                outcome = await self._attempt(tenant, session_id)
                if outcome != "later":
                    return
                record = await self._load(session_id)
                if record is None or not record.pending:
                    return
                await asyncio.sleep(max(0.0, record.next_ms / 1000 - time.time()))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # The sweeper tries again: the delivery is still in the due index.
            log.warning("a webhook delivery could not be driven", exc_info=error)
        finally:
            reset_tenant(token)

    async def _attempt(self, tenant: str, session_id: str) -> str:
        """One attempt if the delivery is due and nobody else is at it: "done" (ended or
        gone), "later" (pending, rescheduled) or "busy" (leased elsewhere, or not due)."""
        lease = f"{PREFIX}:lease:{tenant}:{session_id}"
        if not await self._redis.set(lease, self.owner, nx=True, px=self._lease_ms):
            return "busy"
        token = bind_tenant(tenant)
        try:
            return await self._attempt_leased(tenant, session_id)
        finally:
            reset_tenant(token)
            with contextlib.suppress(RedisError, OSError):
                await self._redis.eval(_RELEASE, 1, lease, self.owner)

    async def _attempt_leased(self, tenant: str, session_id: str) -> str:
        member = _member(tenant, session_id)
        record = await self._load(session_id)
        if record is None or not record.pending:
            await self._redis.zrem(DUE, member)
            return "done"
        now_ms = int(time.time() * 1000)
        if record.next_ms > now_ms:
            await self._schedule(tenant, session_id, record.next_ms)
            return "busy"
        stored = await self.store._load(record.webhook_id)
        if stored is None or stored.uid != record.uid:
            # The webhook was deleted: its deliveries stop.
            await self._redis.zrem(DUE, member)
            with contextlib.suppress(sdk.CallistoError):
                await self._persistence.delete_session(session_id)
            return "done"
        attempt, refused = await self._send(stored, record)
        delivery = record.delivery
        delivery.attempts.append(attempt)
        if 200 <= attempt.status_code < 300 and not attempt.error:
            delivery.state = pb.DELIVERY_STATE_SUCCEEDED
        elif refused or len(delivery.attempts) >= self._max_attempts:
            delivery.state = pb.DELIVERY_STATE_FAILED
        else:
            record.next_ms = int(
                time.time() * 1000 + self._backoff_s(len(delivery.attempts)) * 1000
            )
        try:
            await self._persistence.update_session(
                persistence_pb2.Session(
                    name=f"sessions/{session_id}",
                    state=_delivery_state(delivery, record.webhook_id, record.uid, record.next_ms),
                    etag=record.etag,
                ),
                update_mask=["state"],
                retry=True,
            )
        except sdk.NotFound:
            await self._redis.zrem(DUE, member)
            return "done"
        if delivery.state != pb.DELIVERY_STATE_PENDING:
            await self._redis.zrem(DUE, member)
            return "done"
        await self._schedule(tenant, session_id, record.next_ms)
        return "later"

    async def _send(
        self, stored: StoredWebhook, record: _Delivery
    ) -> tuple[pb.DeliveryAttempt, bool]:
        """One POST of the delivery's body; the attempt and whether it was refused."""
        delivery = record.delivery
        body = delivery.body.encode()
        headers = signed_headers(
            stored.secret,
            body,
            idempotency_key=delivery.idempotency_key,
            event_type=delivery.event_type,
        )
        attempt = pb.DeliveryAttempt()
        attempt.time.GetCurrentTime()
        started = time.perf_counter()
        refused = False
        try:
            response = await self._outbound.post(stored.webhook.url, body, headers)
        except OutboundRefused as error:
            attempt.error, refused = str(error), True
        except OutboundError as error:
            attempt.error = str(error)
        else:
            attempt.status_code = response.status_code
            if not response.ok:
                attempt.error = f"answered HTTP {response.status_code}"
        attempt.latency.FromNanoseconds(int((time.perf_counter() - started) * 1e9))
        return attempt, refused

    def _backoff_s(self, failed: int) -> float:
        base = self._retry_base_s
        return float(base * 2 ** (failed - 1) + random.uniform(0, base / 2))

    async def _schedule(
        self, tenant: str, session_id: str, due_ms: int, *, only_new: bool = False
    ) -> None:
        await self._redis.zadd(DUE, {_member(tenant, session_id): due_ms}, nx=only_new)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("webhook sweep failed", exc_info=error)
            await asyncio.sleep(SWEEP_INTERVAL_S)

    async def sweep(self) -> int:
        """Starts driving every due delivery this process is not already driving; returns
        how many it started (the lease decides who actually sends)."""
        now_ms = int(time.time() * 1000)
        members = await self._redis.zrangebyscore(DUE, "-inf", now_ms, start=0, num=SWEEP_BATCH)
        started = 0
        for raw in members:
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            tenant, sep, session_id = text.rpartition("|")
            if not sep or not tenant or text in self._driving:
                continue
            self._drive(tenant, session_id)
            started += 1
        return started


# Validation shared with HTTP tools


def check_secret(v: Violations, secret: str, field: str) -> None:
    size = len(secret.encode())
    if not secret:
        v.add(field, "is required")
    elif not MIN_SECRET_BYTES <= size <= MAX_SECRET_BYTES:
        v.add(field, f"must be {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes")


def check_label(v: Violations, value: str, limit: int, field: str) -> None:
    if len(value) > limit:
        v.add(field, f"must be at most {limit} characters")
    elif any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in value):
        v.add(field, "must not contain control characters")


def parse_webhook_name(name: str, field: str) -> str:
    match = WEBHOOK_NAME.match(name)
    if match is None:
        raise InvalidArgument.field(
            field, "is required" if not name else "must look like webhooks/{webhook}"
        )
    return match.group(1)


def _check_event(event_type: str, key: str) -> None:
    if event_type not in (*EVENT_TYPES, ACTION_EVENT):
        raise ValueError(f"unknown event type {event_type!r}")
    if not key or len(key) > MAX_KEY_CHARS or not key.isascii() or not key.isprintable():
        raise ValueError(f"an idempotency key is 1-{MAX_KEY_CHARS} printable ASCII characters")


def _member(tenant: str, session_id: str) -> str:
    return f"{tenant}|{session_id}"


def _session_id(webhook_id: str) -> str:
    return f"webhook-{webhook_id}"


def _not_found(name: str) -> NotFound:
    return NotFound(f"webhook {name!r} not found")


def _json(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(message)
    return result


def _struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    state = struct_pb2.Struct()
    state.update(data)
    return state


def _read_webhook(session: persistence_pb2.Session) -> StoredWebhook:
    document = json_format.MessageToDict(session.state)
    webhook = json_format.ParseDict(document.get("webhook", {}), pb.Webhook())
    return StoredWebhook(
        webhook=webhook, secret=str(document.get("secret", "")), uid=str(document.get("uid", ""))
    )


def _delivery_state(
    delivery: pb.WebhookDelivery, webhook_id: str, uid: str, next_ms: int
) -> struct_pb2.Struct:
    document = _json(delivery)
    # Kept as a string: a Struct number is a double, and state names read better as text.
    document["state"] = pb.DeliveryState.Name(delivery.state).removeprefix("DELIVERY_STATE_")
    return _struct(
        {"delivery": document, "webhook": webhook_id, "uid": uid, "next_ms": str(next_ms)}
    )


def _read_delivery(session: persistence_pb2.Session) -> _Delivery:
    document = json_format.MessageToDict(session.state)
    raw = dict(document.get("delivery", {}))
    state = _STATES.get(str(raw.pop("state", "")), pb.DELIVERY_STATE_UNSPECIFIED)
    delivery = json_format.ParseDict(raw, pb.WebhookDelivery(), ignore_unknown_fields=True)
    delivery.state = state
    return _Delivery(
        delivery=delivery,
        webhook_id=str(document.get("webhook", "")),
        uid=str(document.get("uid", "")),
        next_ms=int(str(document.get("next_ms", "0")) or 0),
        etag=session.etag,
        session_id=session.name.removeprefix("sessions/"),
    )


def known_event_types() -> Iterable[str]:
    """Every event type a delivery may carry (the webhooks' own and `workflow.action`)."""
    return (*EVENT_TYPES, ACTION_EVENT)
