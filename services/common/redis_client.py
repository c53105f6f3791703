"""Redis connections, made in one place for every process.

CALLISTO_REDIS_URL names either one Redis (`redis://host:port/db`, anything redis-py's
`from_url` takes) or a primary watched by Sentinels
(`redis+sentinel://host:port[,host:port…]/primary-name[/db]`). Through Sentinel every new
connection asks the Sentinels for the current primary, so a failover is followed: connections
to a dead primary fail and are replaced, and a demoted one's READONLY answer drops the
connection (redis-py's SentinelManagedConnection raises it as a ConnectionError).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

SENTINEL_SCHEME = "redis+sentinel"
_DIRECT_SCHEMES = ("redis", "rediss", "unix")
# Asking a Sentinel is one short command; a dead one is skipped for the next at once.
_SENTINEL_OPTIONS: dict[str, Any] = {
    "socket_timeout": 1.0,
    "socket_connect_timeout": 1.0,
    "retry": Retry(NoBackoff(), 0),
}


class RedisUrlError(ValueError):
    """CALLISTO_REDIS_URL is not one of its documented forms."""


@dataclass(frozen=True)
class RedisTarget:
    """Where CALLISTO_REDIS_URL points: one Redis (`url`), or a primary named `primary_name`
    that the `sentinels` know."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    primary_name: str = ""
    db: int = 0

    @property
    def through_sentinel(self) -> bool:
        return bool(self.sentinels)


def parse_redis_url(url: str) -> RedisTarget:
    """The target `url` names; RedisUrlError (a ValueError) says what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise RedisUrlError(f"Redis URL {url!r} has no scheme: {_FORMS}")
    if scheme == SENTINEL_SCHEME:
        return _parse_sentinel(url, rest)
    if scheme not in _DIRECT_SCHEMES:
        raise RedisUrlError(f"Redis URL {url!r} has an unknown scheme {scheme!r}: {_FORMS}")
    try:
        parse_url(url)
    except ValueError as error:
        raise RedisUrlError(f"Redis URL {url!r}: {error} ({_FORMS})") from None
    # redis-py ignores a path that is not a database number; a typo must not pick db 0.
    path = urlsplit(url).path.strip("/")
    if scheme != "unix" and path and not path.isdigit():
        raise RedisUrlError(f"Redis URL {url!r}: {path!r} is not a database number ({_FORMS})")
    return RedisTarget(url)


_FORMS = (
    "expected redis://host:port/db or "
    f"{SENTINEL_SCHEME}://host:port[,host:port...]/primary-name[/db]"
)


def _parse_sentinel(url: str, rest: str) -> RedisTarget:
    def refuse(why: str) -> RedisUrlError:
        return RedisUrlError(f"Redis URL {url!r}: {why} ({_FORMS})")

    if "?" in rest or "#" in rest:
        raise refuse("a Sentinel URL takes no options")
    hosts, _, path = rest.partition("/")
    if "@" in hosts:
        raise refuse("a Sentinel URL takes no credentials")
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise refuse(f"{item!r} is not a Sentinel's host:port")
        sentinels.append((host.strip("[]"), int(port)))
    parts = path.split("/") if path else []
    if not parts or not parts[0]:
        raise refuse("the primary's name is missing")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise refuse(f"{'/'.join(parts[1:])!r} is not a database number")
    db = int(parts[1]) if len(parts) == 2 else 0
    return RedisTarget(url, tuple(sentinels), parts[0], db)


class PoolExhausted(Exception):
    """Every connection of a pool stayed busy for the whole wait; nothing was sent to Redis."""


class QueuedPoolMixin:
    """Makes a redis-py pool bounded with callers that wait their turn for a connection.

    redis-py's default pool refuses a caller outright once `max_connections` are in use, with
    a ConnectionError that reads like a lost Redis. Here a caller queues (first come, first
    served) for one of `max_connections` slots; one that waited `wait_seconds` in vain gets
    PoolExhausted, which says the command was never sent. Taking a free slot costs nothing
    (redis-py's BlockingConnectionPool takes a condition lock and a timer on every call).
    """

    max_connections: int

    def __init__(self, *args: Any, wait_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wait_seconds = wait_seconds
        self._slots = asyncio.Semaphore(self.max_connections)
        # Connections handed out under a slot (the base pool releases a connection it failed
        # to connect before handing it out, and that one's slot is given back below).
        self._slotted: set[AbstractConnection] = set()

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        if self._slots.locked():
            try:
                async with asyncio.timeout(self.wait_seconds):
                    await self._slots.acquire()
            except TimeoutError as error:
                raise PoolExhausted(
                    f"all {self.max_connections} Redis connections stayed busy for "
                    f"{self.wait_seconds:g} s"
                ) from error
        else:
            await self._slots.acquire()  # free: returns at once
        try:
            connection: AbstractConnection = await super().get_connection(  # type: ignore[misc]
                *args, **kwargs
            )
        except BaseException:
            self._slots.release()
            raise
        self._slotted.add(connection)
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        try:
            await super().release(connection)  # type: ignore[misc]
        finally:
            if connection in self._slotted:
                self._slotted.discard(connection)
                self._slots.release()


class QueuedPool(QueuedPoolMixin, ConnectionPool):
    """A queued pool of connections to one Redis."""


class QueuedSentinelPool(QueuedPoolMixin, SentinelConnectionPool):
    """A queued pool of connections to whichever Redis the Sentinels name the primary."""


class _FollowingConnection(SentinelManagedConnection):
    """A connection to the primary that asks the Sentinels where it is on every reconnect.

    redis-py 8.1 reconnects a dropped connection inside `send_packed_command` without the
    Sentinel lookup its `connect()` makes, so a command retried after a demoted primary's
    READONLY went to that same replica again."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect()  # type: ignore[no-untyped-call]
        await super().send_packed_command(command, check_health)


class _SentinelClient(Redis):
    """A client of the primary that also closes the Sentinel clients it asks."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


def _primary_client(
    target: RedisTarget, pool_class: type[SentinelConnectionPool], **options: Any
) -> Redis:
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels), sentinel_kwargs=dict(_SENTINEL_OPTIONS)
    )
    client = sentinel.master_for(
        target.primary_name,
        redis_class=_SentinelClient,
        connection_pool_class=pool_class,
        connection_class=_FollowingConnection,
        db=target.db,
        **options,
    )
    assert isinstance(client, _SentinelClient)
    client.sentinels = sentinel
    return client


def connect_redis(url: str) -> Redis:
    """A Redis client that survives a Redis restart or failover: a command that finds its
    pooled connection closed is retried once on a fresh one (through Sentinel, to the primary
    it names now; safe for the idempotent reads and heartbeats this is used for)."""
    target = parse_redis_url(url)
    options: dict[str, Any] = {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0,
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 10,
    }
    if target.through_sentinel:
        return _primary_client(target, SentinelConnectionPool, **options)
    return Redis.from_url(url, **options)


def queued_client(url: str, *, max_connections: int, wait_seconds: float, **options: Any) -> Redis:
    """A client over a QueuedPool (or, through Sentinel, a QueuedSentinelPool) of at most
    `max_connections`; `options` are redis-py connection options."""
    target = parse_redis_url(url)
    if target.through_sentinel:
        return _primary_client(
            target,
            QueuedSentinelPool,
            max_connections=max_connections,
            wait_seconds=wait_seconds,
            **options,
        )
    return Redis.from_pool(
        QueuedPool.from_url(
            url, max_connections=max_connections, wait_seconds=wait_seconds, **options
        )
    )
