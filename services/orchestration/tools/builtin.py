"""The built-in tools: search_documents, search_entities, calculator, current_time,
get_conversation, create_report, and send_webhook when the process has a webhook
dispatcher."""

from __future__ import annotations

from typing import TYPE_CHECKING

from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.tools import (
    calculator,
    clock,
    conversation,
    report,
    search,
    webhook_tool,
)
from callisto.services.orchestration.tools.registry import ToolPolicy, ToolRegistry, ToolSpec

if TYPE_CHECKING:
    from callisto.services.orchestration.webhooks import WebhookDispatcher

BUILTIN_TOOLS: tuple[ToolSpec, ...] = (
    search.SEARCH_DOCUMENTS,
    search.SEARCH_ENTITIES,
    calculator.SPEC,
    clock.SPEC,
    conversation.SPEC,
    report.SPEC,
)


def policy(settings: OrchestrationSettings) -> ToolPolicy:
    """The registry's call policy from the settings' tools section."""
    return ToolPolicy(
        attempts=settings.tool_attempts,
        retry_base_s=settings.tool_retry_base_s,
        breaker_failures=settings.tool_breaker_failures,
        breaker_cooldown_s=settings.tool_breaker_cooldown_s,
        cache_entries=settings.tool_cache_entries,
        max_argument_bytes=settings.tool_max_argument_bytes,
        max_argument_depth=settings.tool_max_argument_depth,
    )


def build_registry(
    settings: OrchestrationSettings, *, webhooks: WebhookDispatcher | None = None
) -> ToolRegistry:
    """A registry holding every built-in tool (their schemas checked as they register), with
    `send_webhook` delivering through `webhooks` when given."""
    registry = ToolRegistry(policy(settings))
    for spec in BUILTIN_TOOLS:
        registry.register(spec)
    if webhooks is not None:
        registry.register(webhook_tool.spec(webhooks, timeout_s=webhooks.longest_delivery_s))
    return registry
