"""Per-tenant daily token budgets: one Redis counter per tenant and UTC day, charged by every
model call of the tenant's runs, checked before a new run starts (RESOURCE_EXHAUSTED once the
day's tokens are spent). A run already going finishes on its own budget: stopping it midway
would lose work the tenant already paid for."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from callisto.services.common.errors import ResourceExhausted

_PREFIX = "callisto:budget:tokens"
# Counters outlive their day a little, so a check just after midnight still reads yesterday's.
_KEEP_S = 2 * 86400


def _day(now: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(now))


def _key(tenant: str, now: float) -> str:
    return f"{_PREFIX}:{_day(now)}:{tenant}"


def parse_overrides(raw: str) -> dict[str, int]:
    """`{"tenant": tokens}` from the setting; ValueError for anything else."""
    if not raw.strip():
        return {}
    data = json.loads(raw)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in data.items()
    ):
        raise ValueError('CALLISTO_TENANT_DAILY_TOKEN_OVERRIDES must be {"tenant": tokens >= 0}')
    return dict(data)


@dataclass(frozen=True)
class DailyUsage:
    tenant: str
    spent: int
    # 0 is no limit.
    limit: int

    @property
    def exhausted(self) -> bool:
        return self.limit > 0 and self.spent >= self.limit


class TenantBudgets:
    """The daily token budgets of every tenant."""

    def __init__(self, redis: Redis, default_limit: int, overrides: dict[str, int]) -> None:
        self._redis = redis
        self._default = max(0, default_limit)
        self._overrides = overrides

    def limit_of(self, tenant: str) -> int:
        return self._overrides.get(tenant, self._default)

    async def usage(self, tenant: str) -> DailyUsage:
        raw = await self._redis.get(_key(tenant, time.time()))
        return DailyUsage(tenant, int(raw or 0), self.limit_of(tenant))

    async def check(self, tenant: str) -> None:
        """RESOURCE_EXHAUSTED when the tenant spent today's tokens."""
        if not self.limit_of(tenant):
            return
        used = await self.usage(tenant)
        if used.exhausted:
            now = time.time()
            until = 86400 - now % 86400
            raise ResourceExhausted(
                f"tenant {tenant!r} spent its daily budget of {used.limit} tokens "
                f"({used.spent} today); new runs start again at 00:00 UTC, in {until / 3600:.1f} h"
            )

    async def charge(self, tenant: str, tokens: int) -> None:
        """Adds a model call's tokens to the tenant's count for today."""
        if tokens <= 0:
            return
        key = _key(tenant, time.time())
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incrby(key, tokens)
            pipe.expire(key, _KEEP_S)
            await pipe.execute()
