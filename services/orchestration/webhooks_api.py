"""CreateWebhook, GetWebhook, ListWebhooks, DeleteWebhook, ListWebhookDeliveries."""

from __future__ import annotations

from typing import Any

import grpc

from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.services.common.errors import InvalidArgument
from callisto.services.orchestration.webhooks import WebhookStore

Context = grpc.aio.ServicerContext[Any, Any]


class WebhooksRpc(pb_grpc.OrchestrationServiceServicer):
    def __init__(self, webhooks: WebhookStore) -> None:
        self._webhooks = webhooks

    async def CreateWebhook(
        self, request: pb.CreateWebhookRequest, context: Context
    ) -> pb.CreateWebhookResponse:
        if not request.HasField("webhook"):
            raise InvalidArgument.field("webhook", "is required")
        created = await self._webhooks.create(request.webhook, request.webhook_id)
        return pb.CreateWebhookResponse(webhook=created)

    async def GetWebhook(
        self, request: pb.GetWebhookRequest, context: Context
    ) -> pb.GetWebhookResponse:
        return pb.GetWebhookResponse(webhook=await self._webhooks.get(request.name))

    async def ListWebhooks(
        self, request: pb.ListWebhooksRequest, context: Context
    ) -> pb.ListWebhooksResponse:
        webhooks, token = await self._webhooks.list_webhooks(request.page_size, request.page_token)
        return pb.ListWebhooksResponse(webhooks=webhooks, next_page_token=token)

    async def DeleteWebhook(
        self, request: pb.DeleteWebhookRequest, context: Context
    ) -> pb.DeleteWebhookResponse:
        await self._webhooks.delete(request.name)
        return pb.DeleteWebhookResponse()

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: Context
    ) -> pb.ListWebhookDeliveriesResponse:
        deliveries, token = await self._webhooks.list_deliveries(
            request.parent, request.page_size, request.page_token
        )
        return pb.ListWebhookDeliveriesResponse(deliveries=deliveries, next_page_token=token)
