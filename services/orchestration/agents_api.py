"""The agent, tool and feedback RPCs of OrchestrationService."""

from __future__ import annotations

import re
from typing import Any

import grpc

from callisto import errors as sdk
from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.api.persistence.v1 import persistence_pb2
from callisto.services.common.errors import FailedPrecondition, InvalidArgument
from callisto.services.common.tenancy import current_tenant
from callisto.services.common.validation import Violations
from callisto.services.orchestration.agents import AgentStore
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.model_extras import model_extras
from callisto.services.orchestration.relay import relayed
from callisto.services.orchestration.suggest import AgentSuggester
from callisto.services.orchestration.tools.registry import ToolRegistry

Context = grpc.aio.ServicerContext[Any, Any]
MESSAGE_NAME = re.compile(r"^conversations/[a-z0-9][a-z0-9-]{0,62}/messages/([0-9]{1,18})$")
RATINGS = (persistence_pb2.FEEDBACK_RATING_UP, persistence_pb2.FEEDBACK_RATING_DOWN)
MAX_FEEDBACK_COMMENT = 4096

SUGGEST_DEADLINE_MARGIN_S = 2.0
"""What SuggestAgents keeps of its caller's deadline for the template and the reply."""


class AgentsRpc(pb_grpc.OrchestrationServiceServicer):
    """CreateAgent, GetAgent, ListAgents, UpdateAgent, ListAgentRevisions, DeleteAgent,
    ListTools, SubmitFeedback."""

    def __init__(
        self,
        agents: AgentStore,
        tools: ToolRegistry,
        backends: Backends,
        suggester: AgentSuggester,
    ) -> None:
        self._agents = agents
        self._tools = tools
        self._backends = backends
        self._suggester = suggester

    async def CreateAgent(
        self, request: pb.CreateAgentRequest, context: Context
    ) -> pb.CreateAgentResponse:
        if not request.HasField("agent"):
            raise InvalidArgument.field("agent", "is required")
        created = await self._agents.create(request.agent, request.agent_id)
        return pb.CreateAgentResponse(agent=created)

    async def GetAgent(self, request: pb.GetAgentRequest, context: Context) -> pb.GetAgentResponse:
        return pb.GetAgentResponse(agent=await self._agents.get(request.name))

    async def ListAgents(
        self, request: pb.ListAgentsRequest, context: Context
    ) -> pb.ListAgentsResponse:
        agents, token = await self._agents.list_agents(request.page_size, request.page_token)
        return pb.ListAgentsResponse(agents=agents, next_page_token=token)

    async def UpdateAgent(
        self, request: pb.UpdateAgentRequest, context: Context
    ) -> pb.UpdateAgentResponse:
        if not request.HasField("agent"):
            raise InvalidArgument.field("agent", "is required")
        updated = await self._agents.update(request.agent, list(request.update_mask.paths))
        return pb.UpdateAgentResponse(agent=updated)

    async def ListAgentRevisions(
        self, request: pb.ListAgentRevisionsRequest, context: Context
    ) -> pb.ListAgentRevisionsResponse:
        agents, token = await self._agents.list_revisions(
            request.name, request.page_size, request.page_token
        )
        return pb.ListAgentRevisionsResponse(agents=agents, next_page_token=token)

    async def DeleteAgent(
        self, request: pb.DeleteAgentRequest, context: Context
    ) -> pb.DeleteAgentResponse:
        await self._agents.delete(request.name)
        return pb.DeleteAgentResponse()

    async def SuggestAgents(
        self, request: pb.SuggestAgentsRequest, context: Context
    ) -> pb.SuggestAgentsResponse:
        suggester = self._suggester
        extras = model_extras(context, suggester.settings.forward_model_extras)
        within = suggester.settings.suggest_timeout_s
        remaining = context.time_remaining()
        if remaining is not None:
            # Room for the template and the reply before the caller gives up.
            within = min(within, remaining - SUGGEST_DEADLINE_MARGIN_S)
        return await suggester.suggest(
            request, tenant=current_tenant(), model_extras=extras, within_s=within
        )

    async def ListTools(
        self, request: pb.ListToolsRequest, context: Context
    ) -> pb.ListToolsResponse:
        # The built-ins and the caller's HTTP tools: what its agents may name.
        tools = await self._agents.tools()
        return pb.ListToolsResponse(tools=[spec.proto() for spec in tools.specs()])

    async def SubmitFeedback(
        self, request: pb.SubmitFeedbackRequest, context: Context
    ) -> pb.SubmitFeedbackResponse:
        v = Violations()
        match = MESSAGE_NAME.match(request.name)
        if not request.name:
            v.add("name", "is required")
        elif match is None or int(match.group(1)) < 1:
            v.add("name", "must look like conversations/{conversation}/messages/{position}")
        if request.rating == persistence_pb2.FEEDBACK_RATING_UNSPECIFIED:
            v.add("rating", "is required: FEEDBACK_RATING_UP or FEEDBACK_RATING_DOWN")
        elif request.rating not in RATINGS:
            v.add("rating", f"unknown value {request.rating}")
        v.check(
            len(request.comment) <= MAX_FEEDBACK_COMMENT,
            "comment",
            f"must be at most {MAX_FEEDBACK_COMMENT} characters",
        )
        v.raise_if_any()
        persistence = self._backends.persistence
        try:
            # As the caller's tenant (bound for this request): another tenant's message is
            # NOT_FOUND there. Only answers are rated (a message's role never changes).
            found = await persistence.get_message(request.name)
        except sdk.CallistoError as error:
            raise relayed(error) from None
        if found.role != common_pb2.ROLE_ASSISTANT:
            raise FailedPrecondition(
                f"{request.name} is not an answer of the assistant; only answers are rated"
            )
        try:
            message = await persistence.update_message_feedback(
                request.name, request.rating, request.comment
            )
        except sdk.CallistoError as error:
            raise relayed(error) from None
        return pb.SubmitFeedbackResponse(message=message)
