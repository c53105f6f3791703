"""Helpers shared by the SDK tests (a unique module name: test dirs are not packages)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import callisto
from callisto.mesh.processes import RedisServer, ServiceProcess

# Reconnects that outlast a service restart on a busy machine.
PATIENT = callisto.RetryPolicy(max_attempts=40, initial_backoff=0.1, max_backoff=0.5)


@dataclass
class Restartable:
    """A persistence service on its own Redis, both of which a test may stop and start again
    on the same ports."""

    redis: RedisServer
    service: ServiceProcess
    api_key: str

    def kill_service(self) -> None:
        self.service.kill()

    def start_service(self) -> None:
        self.service.start()
        self.service.wait_healthy()

    async def restart_service_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(self.start_service)

    async def restart_redis_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(self.redis.start)
