"""Agents, stored through the persistence service with every revision kept (AIP-162)."""

from __future__ import annotations

from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.persistence import PersistenceClient
from callisto.services.orchestration.tools.registry import ToolRegistry


def revision_name(agent: pb.Agent) -> str:
    """`agents/{agent}@{revision}` of an agent as `AgentStore` returns it."""
    return f"{agent.name}@{agent.revision_id}"


class AgentStore:
    """Create, read, update (a new revision each time), list and delete agents of the tenant
    bound to the current context."""

    def __init__(self, persistence: PersistenceClient, tools: ToolRegistry, default_model: str):
        self._persistence = persistence
        self._tools = tools
        self._default_model = default_model

    async def get(self, name: str) -> pb.Agent:
        """`agents/{agent}` at its latest revision or `agents/{agent}@{revision}`; the returned
        agent's `name` is `agents/{agent}` with `revision_id` set. NotFound otherwise (another
        tenant's agents included)."""
        raise NotImplementedError
