"""Runs: checkpointed state machines whose events go to the conversation's event log."""

from __future__ import annotations

from callisto.services.common.server import Runtime
from callisto.services.orchestration.agents import AgentStore
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.tools.registry import ToolRegistry


class RunManager:
    """Starts, watches, cancels and resumes the runs of this process."""

    def __init__(
        self,
        runtime: Runtime[OrchestrationSettings],
        backends: Backends,
        agents: AgentStore,
        tools: ToolRegistry,
    ) -> None:
        self._runtime = runtime
        self._backends = backends
        self._agents = agents
        self._tools = tools

    async def start(self) -> None:
        """Takes over the unfinished runs whose owner is gone (after a restart)."""

    async def stop(self) -> None:
        """Releases this process's runs at shutdown (they resume elsewhere or on restart)."""
