"""Helpers of the tool tests: a service key, real `Backends` for a test's services, contexts
and handlers whose failures the tests script."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from callisto.api.orchestration.v1 import orchestration_pb2
from callisto.services.common.auth import ApiKeyStore
from callisto.services.common.tenancy import bound_tenant
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.tools.registry import ToolContext, ToolResult

# Schema of the tools the tests register: one string argument.
TEXT_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {"type": "string", "maxLength": 50}},
    "required": ["text"],
    "additionalProperties": False,
}


async def service_key(redis_url: str) -> str:
    """A fresh key of the `orchestration` service principal."""
    redis = Redis.from_url(redis_url)
    try:
        return await ApiKeyStore(redis).create_service("orchestration")
    finally:
        await redis.aclose()


async def connect_backends(
    key: str, *, persistence: str, generation: str, retrieval: str
) -> Backends:
    settings = OrchestrationSettings(
        persistence_target=persistence, generation_target=generation, retrieval_target=retrieval
    )
    return await Backends.connect(settings, key)


def context(
    backends: Backends,
    tenant: str,
    *,
    company: str = "",
    knowledge_tags: tuple[str, ...] = (),
    conversation: str = "",
) -> ToolContext:
    agent = orchestration_pb2.Agent(
        name="agents/tools-test",
        display_name="Tools test",
        system_prompt="Answer.",
        company=company,
        knowledge_tags=list(knowledge_tags),
    )
    return ToolContext(tenant=tenant, conversation=conversation, agent=agent, backends=backends)


class ScriptedHandler:
    """A tool handler that raises the scripted errors in turn, then answers; counts its runs."""

    def __init__(self, *errors: Exception, delay_s: float = 0.0) -> None:
        self._errors = list(errors)
        self._delay_s = delay_s
        self.runs = 0
        # The tenant the handler's backends act for (the one bound while it runs).
        self.tenants: list[str | None] = []

    async def __call__(self, arguments: dict[str, Any], _ctx: ToolContext) -> ToolResult:
        self.runs += 1
        self.tenants.append(bound_tenant())
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        if self._errors:
            raise self._errors.pop(0)
        return ToolResult(data={"echo": arguments["text"]}, summary=f"echo {arguments['text']}")


def always_failing(error: Callable[[], Exception]) -> Callable[..., Awaitable[ToolResult]]:
    async def handler(_arguments: dict[str, Any], _ctx: ToolContext) -> ToolResult:
        raise error()

    return handler
