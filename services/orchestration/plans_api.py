"""ValidatePlan: a workflow plan checked as a workflow start would check it, without running."""

from __future__ import annotations

from typing import Any

import grpc

from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.services.orchestration.agents import AgentStore
from callisto.services.orchestration.plans import validate_plan
from callisto.services.orchestration.tools.registry import ToolRegistry

Context = grpc.aio.ServicerContext[Any, Any]


class PlansRpc(pb_grpc.OrchestrationServiceServicer):
    def __init__(self, agents: AgentStore, tools: ToolRegistry, max_prompt_chars: int) -> None:
        self._plan_agents = agents
        self._plan_tools = tools
        self._plan_limit = max_prompt_chars

    async def ValidatePlan(
        self, request: pb.ValidatePlanRequest, context: Context
    ) -> pb.ValidatePlanResponse:
        stages = await validate_plan(
            request.plan,
            "plan",
            limit=self._plan_limit,
            known_tools=self._plan_tools.names(),
            get_agent=self._plan_agents.get,
        )
        return pb.ValidatePlanResponse(stages=stages)
