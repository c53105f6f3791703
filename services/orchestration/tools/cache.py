"""Results of read-only tools, reused per tenant, scope and arguments for the tool's TTL
(cachetools' `TTLCache`, bounded in entries; when full, the least recently used goes first)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from cachetools import TTLCache

from callisto.services.orchestration.tools.validation import canonical_json

# (tenant, scope within the tenant, canonical JSON of the arguments).
_Key = tuple[str, str, str]
T = TypeVar("T")


class ResultCache(Generic[T]):
    """One tool's cache."""

    def __init__(
        self, ttl_s: float, max_entries: int, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: TTLCache[_Key, T] = TTLCache(maxsize=max_entries, ttl=ttl_s, timer=timer)

    @staticmethod
    def key(tenant: str, scope: str, arguments: dict[str, object]) -> _Key:
        return (tenant, scope, canonical_json(arguments))

    def get(self, key: _Key) -> T | None:
        found = self._entries.get(key)
        # A copy: callers number citations (`marker`) on what they get.
        return copy.deepcopy(found) if found is not None else None

    def put(self, key: _Key, value: T) -> None:
        self._entries[key] = copy.deepcopy(value)

    def __len__(self) -> int:
        return len(self._entries)
