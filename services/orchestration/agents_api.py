"""The agent, tool and feedback RPCs of OrchestrationService."""

from __future__ import annotations

from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.services.orchestration.agents import AgentStore
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.tools.registry import ToolRegistry


class AgentsRpc(pb_grpc.OrchestrationServiceServicer):
    """CreateAgent, GetAgent, ListAgents, UpdateAgent, ListAgentRevisions, DeleteAgent,
    ListTools, SubmitFeedback."""

    def __init__(self, agents: AgentStore, tools: ToolRegistry, backends: Backends) -> None:
        self._agents = agents
        self._tools = tools
        self._backends = backends
