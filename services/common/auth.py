"""API keys: created and revoked by the CLI, stored in Redis only as hashes, verified per call.

A key reads `cal_<key id>_<secret>`. Redis keeps, per key id, the tenant and SHA-256 of the
whole key; the secret itself is shown once at creation and never stored.

Two kinds of principal hold keys. A tenant key speaks for its tenant and nothing else. A service
key (one per service process, see `Runtime.service_key`) belongs to no tenant: a call made with
it names the tenant it acts for in `x-callisto-on-behalf-of`, which only a service principal may
do. Background work (a run resumed after a restart, with no client connected) calls other
services this way; a user's key never travels beyond the first service.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from callisto.services.common.redis_client import connect_redis
from callisto.services.common.tenancy import TENANT_PATTERN

KEY_PATTERN = re.compile(r"^cal_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
SERVICE_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_PREFIX = "callisto:auth"


@dataclass(frozen=True)
class Principal:
    """Who a verified key belongs to: a tenant, or a service (`service` set, `tenant` empty)."""

    tenant: str = ""
    service: str = ""

    @property
    def is_service(self) -> bool:
        return bool(self.service)


@dataclass(frozen=True)
class ApiKeyInfo:
    """What is stored about a key (never the key itself)."""

    key_id: str
    tenant: str
    label: str
    created_time: float


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyStore:
    """Creates, verifies and revokes API keys in Redis."""

    def __init__(self, redis: Redis, *, cache_seconds: float = 0.0) -> None:
        self._redis = redis
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def create(self, tenant: str, label: str = "") -> tuple[str, ApiKeyInfo]:
        """Returns the new key (shown once) and what was stored about it."""
        if not TENANT_PATTERN.match(tenant):
            raise ValueError(f"tenant {tenant!r} must match {TENANT_PATTERN.pattern}")
        key_id = secrets.token_hex(8)
        key = f"cal_{key_id}_{secrets.token_urlsafe(32)}"
        info = ApiKeyInfo(key_id=key_id, tenant=tenant, label=label, created_time=time.time())
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                f"{_PREFIX}:key:{key_id}",
                mapping={
                    "tenant": tenant,
                    "sha256": _digest(key),
                    "label": label,
                    "created_time": repr(info.created_time),
                },
            )
            pipe.sadd(f"{_PREFIX}:tenant:{tenant}", key_id)
            await pipe.execute()
        return key, info

    async def create_service(self, service: str) -> str:
        """A new key of the service principal `service` (one per process; revoke it on exit)."""
        if not SERVICE_PATTERN.match(service):
            raise ValueError(f"service {service!r} must match {SERVICE_PATTERN.pattern}")
        key_id = secrets.token_hex(8)
        key = f"cal_{key_id}_{secrets.token_urlsafe(32)}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                f"{_PREFIX}:key:{key_id}",
                mapping={
                    "service": service,
                    "sha256": _digest(key),
                    "label": f"service {service}",
                    "created_time": repr(time.time()),
                },
            )
            pipe.sadd(f"{_PREFIX}:services", key_id)
            await pipe.execute()
        return key

    async def revoke_service(self, key: str) -> None:
        """Deletes a service key (at process exit)."""
        match = KEY_PATTERN.match(key)
        if match is None:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(f"{_PREFIX}:key:{match.group(1)}")
            pipe.srem(f"{_PREFIX}:services", match.group(1))
            await pipe.execute()

    async def verify(self, key: str) -> str | None:
        """The tenant a tenant key belongs to; None for a service key or an unknown, malformed
        or revoked key."""
        principal = await self.verify_principal(key)
        return principal.tenant if principal is not None and principal.tenant else None

    async def verify_principal(self, key: str) -> Principal | None:
        """Whose key it is, or None for an unknown, malformed or revoked key."""
        match = KEY_PATTERN.match(key)
        if match is None:
            return None
        key_id = match.group(1)
        digest = _digest(key)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        stored = await self._redis.hmget(f"{_PREFIX}:key:{key_id}", ["tenant", "service", "sha256"])
        tenant_raw, service_raw, digest_raw = stored
        if (tenant_raw is None and service_raw is None) or digest_raw is None:
            self._cache.pop(digest, None)
            return None
        if not hmac.compare_digest(_text(digest_raw), digest):
            return None
        if service_raw is not None:
            principal = Principal(service=_text(service_raw))
        else:
            assert tenant_raw is not None
            principal = Principal(tenant=_text(tenant_raw))
        if self._cache_seconds > 0:
            self._cache[digest] = (principal, now + self._cache_seconds)
        return principal

    async def revoke(self, key_id: str) -> bool:
        """Deletes a key; False when no such key exists."""
        tenant = await self._redis.hget(f"{_PREFIX}:key:{key_id}", "tenant")
        if tenant is None:
            return False
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(f"{_PREFIX}:key:{key_id}")
            pipe.srem(f"{_PREFIX}:tenant:{_text(tenant)}", key_id)
            await pipe.execute()
        return True

    async def list(self, tenant: str | None = None) -> list[ApiKeyInfo]:
        """Keys of one tenant, or of every tenant."""
        if tenant is not None:
            key_ids = [_text(k) for k in await self._redis.smembers(f"{_PREFIX}:tenant:{tenant}")]
        else:
            key_ids = [
                _text(k).rsplit(":", 1)[1]
                async for k in self._redis.scan_iter(match=f"{_PREFIX}:key:*")
            ]
        infos = []
        for key_id in sorted(key_ids):
            fields = await self._redis.hgetall(f"{_PREFIX}:key:{key_id}")
            if not fields:
                continue
            values = {_text(k): _text(v) for k, v in fields.items()}
            if "tenant" not in values:
                continue  # a service principal's key: not a tenant's
            infos.append(
                ApiKeyInfo(
                    key_id=key_id,
                    tenant=values["tenant"],
                    label=values.get("label", ""),
                    created_time=float(values.get("created_time", "0")),
                )
            )
        return infos


async def create_api_key(redis_url: str, tenant: str, label: str = "") -> str:
    """Creates a key for `tenant` in the Redis at `redis_url` and returns it (shown once)."""
    redis = connect_redis(redis_url)
    try:
        key, _ = await ApiKeyStore(redis).create(tenant, label)
        return key
    finally:
        await redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def bearer_key(authorization: str) -> str | None:
    """The key of an `authorization: Bearer <key>` header value."""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()
