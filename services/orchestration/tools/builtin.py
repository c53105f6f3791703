"""The built-in tools: search_documents, search_entities, calculator, current_time,
get_conversation."""

from __future__ import annotations

from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.tools.registry import ToolRegistry


def build_registry(settings: OrchestrationSettings) -> ToolRegistry:
    """A registry holding every built-in tool."""
    raise NotImplementedError
