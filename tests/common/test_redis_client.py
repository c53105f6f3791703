"""CALLISTO_REDIS_URL's two forms, and clients through real Sentinels (a primary, a replica,
three redis-sentinel processes) that follow the primary when it changes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from callisto.mesh.redis_ha import RedisHA
from callisto.services.common.redis_client import (
    PoolExhausted,
    RedisTarget,
    RedisUrlError,
    connect_redis,
    parse_redis_url,
    queued_client,
)


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("redis://127.0.0.1:6379/0", RedisTarget("redis://127.0.0.1:6379/0")),
        ("redis://redis:6380", RedisTarget("redis://redis:6380")),
        (
            "rediss://:secret@cache.example:6380/2",
            RedisTarget("rediss://:secret@cache.example:6380/2"),
        ),
        (
            "redis+sentinel://s1:26379,s2:26379,10.0.0.3:26380/callisto/3",
            RedisTarget(
                "redis+sentinel://s1:26379,s2:26379,10.0.0.3:26380/callisto/3",
                (("s1", 26379), ("s2", 26379), ("10.0.0.3", 26380)),
                "callisto",
                3,
            ),
        ),
        (
            "redis+sentinel://127.0.0.1:26379/mymaster",
            RedisTarget(
                "redis+sentinel://127.0.0.1:26379/mymaster", (("127.0.0.1", 26379),), "mymaster"
            ),
        ),
    ],
)
def test_both_url_forms_are_parsed(url: str, target: RedisTarget) -> None:
    assert parse_redis_url(url) == target


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("127.0.0.1:6379", "has no scheme"),
        ("http://127.0.0.1:6379/0", "unknown scheme 'http'"),
        ("redis://127.0.0.1:6379/zero", "'zero' is not a database number"),
        ("redis+sentinel://127.0.0.1/callisto/0", "'127.0.0.1' is not a Sentinel's host:port"),
        ("redis+sentinel://a:26379,:26379/callisto", "':26379' is not a Sentinel's host:port"),
        ("redis+sentinel://a:99999/callisto", "'a:99999' is not a Sentinel's host:port"),
        ("redis+sentinel://a:26379", "the primary's name is missing"),
        ("redis+sentinel://a:26379//0", "the primary's name is missing"),
        ("redis+sentinel://a:26379/callisto/x", "'x' is not a database number"),
        ("redis+sentinel://a:26379/callisto/0/1", "'0/1' is not a database number"),
        ("redis+sentinel://a:26379/callisto/0?password=x", "takes no options"),
        ("redis+sentinel://user:pw@a:26379/callisto/0", "takes no credentials"),
    ],
)
def test_bad_urls_are_refused_saying_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(RedisUrlError) as refused:
        parse_redis_url(url)
    assert says in str(refused.value)
    assert "redis+sentinel://host:port[,host:port...]/primary-name[/db]" in str(refused.value)


def test_a_bad_url_is_refused_before_any_connection() -> None:
    with pytest.raises(ValueError, match="not a database number"):
        connect_redis("redis+sentinel://127.0.0.1:1/callisto/db")


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisHA]:
    with RedisHA(tmp_path_factory.mktemp("redis-ha")).running() as started:
        yield started


async def demote_primary(ha: RedisHA) -> None:
    """A failover that leaves the old primary running as a replica, so clients still hold
    connections to it. Sentinel would demote it on its next look (INFO every 10 s); the test
    does it at once."""
    old = ha.primary()
    with ha.sentinels[0].client() as sentinel:
        sentinel.execute_command("SENTINEL", "FAILOVER", ha.primary_name)

    def demoted() -> None:
        ha.wait_for_failover(old.port)
        with old.client() as client:
            client.replicaof("127.0.0.1", ha.primary_port())
        ha.wait_replicated()
        ha.wait_settled()

    await asyncio.to_thread(demoted)


async def test_the_shared_client_follows_a_demoted_primary_to_the_new_one(ha: RedisHA) -> None:
    redis = connect_redis(ha.sentinel_url)
    try:
        await redis.set("before", "1")
        await demote_primary(ha)
        # Its pooled connection reaches a replica now: READONLY drops it, and the one retry
        # asks the Sentinels for the new primary.
        assert await redis.set("after", "2")
        assert await redis.get("before") == b"1"
        primary = ha.primary().client()
        assert primary.get("after") == "2"
        primary.close()
    finally:
        await redis.aclose()


async def test_the_queued_client_fails_once_at_a_switch_then_writes_to_the_new_primary(
    ha: RedisHA,
) -> None:
    redis = queued_client(ha.sentinel_url, max_connections=4, wait_seconds=1.0)
    try:
        await redis.set("queued", "0")
        await demote_primary(ha)
        failures = []
        for value in ("1", "2"):
            try:
                await redis.set("queued", value)
            except RedisConnectionError as error:  # never a ResponseError (READONLY)
                failures.append(error)
        assert len(failures) <= 1
        assert await redis.get("queued") == b"2"
    finally:
        await redis.aclose()


async def test_the_queued_sentinel_pool_queues_callers_beyond_its_connections(
    ha: RedisHA,
) -> None:
    redis = queued_client(ha.sentinel_url, max_connections=2, wait_seconds=0.2)
    try:
        assert await asyncio.gather(*(redis.incr("counter") for _ in range(24)))
        assert int(await redis.get("counter") or 0) == 24
        # Both connections held by blocking pops: the next caller waits its turn, then is told
        # nothing was sent.
        holders = [asyncio.create_task(redis.blpop([f"empty-{i}"], timeout=1)) for i in range(2)]
        await asyncio.sleep(0.1)
        with pytest.raises(PoolExhausted):
            await redis.ping()
        await asyncio.gather(*holders)
        assert await redis.ping()
    finally:
        await redis.aclose()
