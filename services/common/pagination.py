"""Page tokens (AIP-158): opaque to clients, bound to the query that issued them, and signed.

A token reads `<payload>.<mac>`, both unpadded base64url. The payload is the JSON cursor and a
digest of the request's filter fields; the MAC is HMAC-SHA256, under the deployment's page-token
key, of the payload and the caller's tenant. A token changed in any byte, made up by a client,
issued to another tenant or by another deployment fails verification before its cursor is read
(INVALID_ARGUMENT on `page_token`), so no forged offset or id reaches a backend; a genuine token
sent with different filters is refused as well.

The key is `CALLISTO_PAGE_TOKEN_SECRET` when set (then every replica of every service must
share it). Otherwise it is a random 256-bit key created once per deployment in the Redis that
holds the API keys (`SET NX`), so every process of the mesh agrees on it without configuration.
Changing the key (or flushing that Redis) invalidates outstanding tokens: clients restart from
the first page.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from callisto.services.common.errors import InvalidArgument, Unavailable
from callisto.services.common.tenancy import bound_tenant

KEY_NAME = "callisto:page-token-key"
MAX_TOKEN_CHARS = 4096
_NOT_ISSUED = "is not a token this service issued"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode())


def _digest(query: dict[str, Any]) -> str:
    raw = json.dumps(query, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def derive_key(secret: str) -> bytes:
    """The MAC key of a configured secret (a passphrase of any length becomes 32 bytes)."""
    return hmac.new(secret.encode(), b"callisto page tokens v1", hashlib.sha256).digest()


class PageTokenCodec:
    """Issues and verifies page tokens; one per process (`page_tokens`), keyed at start-up."""

    def __init__(self) -> None:
        self._secret = ""
        self._redis: Redis | None = None
        self._key: bytes | None = None
        self._lock: asyncio.Lock | None = None

    def configure(self, *, secret: str = "", redis: Redis | None = None) -> None:
        """A configured secret, else the deployment's key in `redis`; with neither, a key of
        this process only (its tokens die with it)."""
        self._secret, self._redis, self._key = secret, redis, None

    async def encode(self, cursor: dict[str, Any], query: dict[str, Any]) -> str:
        body = json.dumps({"c": cursor, "q": _digest(query)}, separators=(",", ":"))
        payload = _b64(body.encode())
        return f"{payload}.{_b64(await self._mac(payload))}"

    async def decode(self, token: str, query: dict[str, Any]) -> dict[str, Any] | None:
        """The cursor of a token this deployment issued to this tenant for this query; None for
        no token; INVALID_ARGUMENT on `page_token` for anything else."""
        if not token:
            return None
        payload, dot, mac = token.partition(".")
        if not dot or len(token) > MAX_TOKEN_CHARS:
            raise InvalidArgument.field("page_token", _NOT_ISSUED)
        # Compared as text: base64 has several spellings of the same bytes, a token has one.
        expected = _b64(await self._mac(payload))
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            raise InvalidArgument.field("page_token", _NOT_ISSUED)
        try:
            body = json.loads(_unb64(payload))
            cursor, digest = body["c"], body["q"]
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidArgument.field("page_token", _NOT_ISSUED) from error
        if digest != _digest(query) or not isinstance(cursor, dict):
            raise InvalidArgument.field(
                "page_token", "belongs to a request with different parameters"
            )
        return cursor

    async def _mac(self, payload: str) -> bytes:
        tenant = bound_tenant() or ""
        message = f"{tenant}\n{payload}".encode()
        return hmac.new(await self._signing_key(), message, hashlib.sha256).digest()

    async def _signing_key(self) -> bytes:
        if self._key is not None:
            return self._key
        if self._secret:
            self._key = derive_key(self._secret)
        elif self._redis is None:
            self._key = secrets.token_bytes(32)
        else:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._key is None:
                    self._key = await self._deployment_key(self._redis)
        return self._key

    @staticmethod
    async def _deployment_key(redis: Redis) -> bytes:
        try:
            # The first process of the deployment creates it; every later one reads that one.
            await redis.set(KEY_NAME, secrets.token_hex(32), nx=True)
            stored = await redis.get(KEY_NAME)
        except (RedisError, OSError) as error:
            raise Unavailable(
                "cannot read the page-token key right now", retry_after=1.0
            ) from error
        if stored is None:
            raise Unavailable("the page-token key vanished; retry", retry_after=1.0)
        text = stored.decode() if isinstance(stored, bytes) else str(stored)
        return bytes.fromhex(text)


# The process's codec: services call `await page_tokens.encode(...)` / `.decode(...)`; the
# server bootstrap configures its key from the settings.
page_tokens = PageTokenCodec()
