"""OrchestrationService: the agent RPCs (`agents_api`), the run RPCs (`runs_api`), the
conversation read-outs (`exports_api`), plan checks (`plans_api`), approvals
(`approvals_api`), artifacts (`artifacts_api`), webhooks (`webhooks_api`) and HTTP tools
(`http_tools_api`) over one set of backends, tools and runs."""

from __future__ import annotations

import functools

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.services.common.health import DependencyCheck
from callisto.services.common.server import Runtime, ServiceDefinition
from callisto.services.orchestration.agents import AgentStore
from callisto.services.orchestration.agents_api import AgentsRpc
from callisto.services.orchestration.approvals_api import ApprovalsRpc
from callisto.services.orchestration.artifacts_api import ArtifactsRpc
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.exports_api import ExportsRpc
from callisto.services.orchestration.http_tools import HttpTools
from callisto.services.orchestration.http_tools_api import HttpToolsRpc
from callisto.services.orchestration.outbound import client_from
from callisto.services.orchestration.plans_api import PlansRpc
from callisto.services.orchestration.runs import RunManager
from callisto.services.orchestration.runs_api import RunsRpc
from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.suggest import AgentSuggester
from callisto.services.orchestration.tools.builtin import build_registry
from callisto.services.orchestration.tools.registry import ToolRegistry
from callisto.services.orchestration.tools.webhook_tool import narrowed_parameters
from callisto.services.orchestration.webhooks import WebhookDispatcher, WebhookStore
from callisto.services.orchestration.webhooks_api import WebhooksRpc

SERVICE_NAME = "callisto.orchestration.v1.OrchestrationService"


class OrchestrationServicer(
    AgentsRpc,
    RunsRpc,
    ExportsRpc,
    PlansRpc,
    ApprovalsRpc,
    ArtifactsRpc,
    WebhooksRpc,
    HttpToolsRpc,
):
    """The parts of the service in one servicer (each implements its own RPCs and keeps its
    own attributes)."""

    def __init__(
        self,
        agents: AgentStore,
        tools: ToolRegistry,
        backends: Backends,
        runs: RunManager,
        suggester: AgentSuggester,
        webhooks: WebhookDispatcher,
        http_tools: HttpTools,
    ) -> None:
        AgentsRpc.__init__(self, agents, tools, backends, suggester)
        RunsRpc.__init__(self, runs)
        ExportsRpc.__init__(self, backends)
        PlansRpc.__init__(self, agents, tools, runs.settings.max_prompt_chars)
        ApprovalsRpc.__init__(self, runs.approvals)
        ArtifactsRpc.__init__(self, backends, runs.settings)
        WebhooksRpc.__init__(self, webhooks.store)
        HttpToolsRpc.__init__(self, http_tools)


async def build(runtime: Runtime[OrchestrationSettings]) -> ServiceDefinition:
    settings = runtime.settings
    backends = await Backends.connect(settings, await runtime.service_key())
    outbound = client_from(settings)
    webhooks = WebhookDispatcher(
        WebhookStore(backends.persistence, outbound),
        backends.persistence,
        runtime.auth_redis,
        outbound,
        settings,
    )
    tools = build_registry(settings, webhooks=webhooks)
    http_tools = HttpTools(backends.persistence, outbound, tools)
    agents = AgentStore(backends.persistence, tools, settings.default_model)
    # Agents may name the tenant's HTTP tools as well as the built-ins.
    agents.use_tools(http_tools.registry_for)
    runs = RunManager(
        runtime,
        backends,
        agents,
        tools,
        toolbox=http_tools.registry_for,
        publisher=webhooks,
        narrow=functools.partial(narrowed_parameters, webhooks.store),
    )
    suggester = AgentSuggester(settings, backends.generation, agents.check, tools.names)
    servicer = OrchestrationServicer(agents, tools, backends, runs, suggester, webhooks, http_tools)
    await runs.start()
    await webhooks.start()

    async def persistence_ready() -> bool:
        return await _serving(backends.clients[0].channel)

    async def close() -> None:
        await runs.stop()
        await webhooks.stop()
        await backends.close()

    return ServiceDefinition(
        service_names=[SERVICE_NAME],
        register=lambda server: pb_grpc.add_OrchestrationServiceServicer_to_server(
            servicer, server
        ),
        checks=[DependencyCheck("persistence", persistence_ready)],
        on_stop=[close],
    )


async def _serving(channel: grpc.aio.Channel) -> bool:
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=1.0
        )
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
