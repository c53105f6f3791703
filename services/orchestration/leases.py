"""Who runs a run: a lease per run in the mesh's Redis that its owner renews, an index of the
unfinished runs (so a restarted process finds them) and a channel that carries cancels to the
owner of a run on another replica."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

PREFIX = "callisto:orchestration"
# Hash of the unfinished runs: `tenant|conversation` -> id of the run going on there.
INDEX = f"{PREFIX}:unfinished"
CANCELS = f"{PREFIX}:cancels"

# Renews (or releases) a lease only while this owner holds it.
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
# Forgets a run only while the index still names that run (not a newer one of the same
# conversation).
_UNINDEX = (
    "if redis.call('hget', KEYS[1], ARGV[1]) == ARGV[2] then "
    "return redis.call('hdel', KEYS[1], ARGV[1]) else return 0 end"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('del', KEYS[1]) else return 0 end"
)


@dataclass(frozen=True)
class RunKey:
    """A run: its tenant and its `conversations/{conversation}`."""

    tenant: str
    conversation: str

    def member(self) -> str:
        return f"{self.tenant}|{self.conversation}"

    @classmethod
    def parse(cls, member: str) -> RunKey | None:
        tenant, sep, conversation = member.partition("|")
        return cls(tenant, conversation) if sep else None

    def lease(self) -> str:
        return f"{PREFIX}:lease:{self.tenant}:{self.conversation}"


class Leases:
    """Leases of `owner` (this process), `ttl_s` long."""

    def __init__(self, redis: Redis, owner: str, ttl_s: float) -> None:
        self._redis = redis
        self.owner = owner
        self._ttl_ms = max(1, int(ttl_s * 1000))

    async def acquire(self, run: RunKey) -> bool:
        """Takes the run's lease if nobody holds it (or this owner already does)."""
        if await self._redis.set(run.lease(), self.owner, nx=True, px=self._ttl_ms):
            return True
        return await self.renew(run)

    async def take(self, run: RunKey) -> None:
        """Takes the lease whoever held it: for a run this owner just claimed by
        compare-and-set, whose previous holder can only be closing a finished run."""
        await self._redis.set(run.lease(), self.owner, px=self._ttl_ms)

    async def renew(self, run: RunKey) -> bool:
        return bool(await self._redis.eval(_RENEW, 1, run.lease(), self.owner, self._ttl_ms))

    async def renew_all(self, runs: Sequence[RunKey]) -> list[bool]:
        """Renews several leases in one round trip; False where the lease was lost."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for run in runs:
                pipe.eval(_RENEW, 1, run.lease(), self.owner, self._ttl_ms)
            replies = await pipe.execute()
        return [bool(reply) for reply in replies]

    async def release(self, run: RunKey) -> None:
        await self._redis.eval(_RELEASE, 1, run.lease(), self.owner)

    async def holder(self, run: RunKey) -> str | None:
        value = await self._redis.get(run.lease())
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    # The index of unfinished runs.

    async def index(self, run: RunKey, run_id: str) -> None:
        await self._redis.hset(INDEX, run.member(), run_id)

    async def unindex(self, run: RunKey, run_id: str) -> None:
        await self._redis.eval(_UNINDEX, 1, INDEX, run.member(), run_id)

    async def forget(self, run: RunKey) -> None:
        """Drops a conversation from the index whatever run it names (one with no state)."""
        await self._redis.hdel(INDEX, run.member())

    async def unfinished(self) -> list[RunKey]:
        members = await self._redis.hkeys(INDEX)
        keys = []
        for member in members:
            text = member.decode() if isinstance(member, bytes) else str(member)
            key = RunKey.parse(text)
            if key is not None:
                keys.append(key)
        return keys

    # Cancels for runs owned elsewhere.

    async def publish_cancel(self, run: RunKey, reason: str) -> int:
        """Asks the run's owner to cancel it; returns how many processes heard."""
        message = json.dumps(
            {"tenant": run.tenant, "conversation": run.conversation, "reason": reason}
        )
        return int(await self._redis.publish(CANCELS, message))


def parse_cancel(data: bytes | str) -> tuple[RunKey, str] | None:
    try:
        message = json.loads(data)
        return RunKey(str(message["tenant"]), str(message["conversation"])), str(message["reason"])
    except (ValueError, KeyError, TypeError):
        return None
