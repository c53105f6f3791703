"""`client.orchestration`'s webhooks and HTTP tools.

    hook = await client.orchestration.create_webhook(
        url="https://hooks.example.com/callisto", secret=secret, event_types=["run.done"]
    )
    async for delivery in client.orchestration.list_webhook_deliveries(hook.name):
        print(delivery.state, [a.status_code for a in delivery.attempts])

Receivers check each delivery with `callisto.signing.verify(secret, header, body)`.
"""

# `timeout` is a gRPC deadline (see _facade).
# ruff: noqa: ASYNC109
from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from google.protobuf import duration_pb2, struct_pb2

from callisto._facade import Facade, Metadata
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.streams import paged


def webhook_name(webhook: str) -> str:
    """`webhooks/{id}` of an id or a name."""
    return webhook if webhook.startswith("webhooks/") else f"webhooks/{webhook}"


def http_tool_name(tool: str) -> str:
    """`httpTools/{id}` of an id or a name."""
    return tool if tool.startswith("httpTools/") else f"httpTools/{tool}"


class WebhooksMixin(Facade):
    """Webhooks (with their deliveries) and tenant HTTP tools."""

    @property
    def _hooks_stub(self) -> pb_grpc.OrchestrationServiceAsyncStub:
        return pb_grpc.OrchestrationServiceStub(self._client.channel)

    # Webhooks

    async def create_webhook(
        self,
        webhook: pb.Webhook | None = None,
        *,
        webhook_id: str = "",
        url: str = "",
        secret: str = "",
        event_types: Sequence[str] = (),
        description: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.Webhook:
        """Registers a webhook (the keyword fields fill a missing `webhook`); the answer
        never carries the secret."""
        if webhook is None:
            webhook = pb.Webhook(
                url=url, secret=secret, event_types=list(event_types), description=description
            )
        response = await self._unary(
            self._hooks_stub.CreateWebhook,
            pb.CreateWebhookRequest(webhook=webhook, webhook_id=webhook_id),
            idempotent=False,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.CreateWebhookResponse,
        )
        return response.webhook

    async def get_webhook(
        self, webhook: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> pb.Webhook:
        response = await self._unary(
            self._hooks_stub.GetWebhook,
            pb.GetWebhookRequest(name=webhook_name(webhook)),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.GetWebhookResponse,
        )
        return response.webhook

    def list_webhooks(
        self,
        *,
        page_size: int = 0,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[pb.Webhook]:
        """Every webhook of the tenant, newest first."""

        async def fetch(token: str) -> pb.ListWebhooksResponse:
            return await self._unary(
                self._hooks_stub.ListWebhooks,
                pb.ListWebhooksRequest(page_size=page_size, page_token=token),
                idempotent=True,
                timeout=timeout,
                metadata=metadata,
                response_type=pb.ListWebhooksResponse,
            )

        return paged(fetch, lambda r: r.webhooks, lambda r: r.next_page_token)

    async def delete_webhook(
        self, webhook: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> None:
        """Deletes a webhook; its pending deliveries stop."""
        await self._unary(
            self._hooks_stub.DeleteWebhook,
            pb.DeleteWebhookRequest(name=webhook_name(webhook)),
            idempotent=False,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.DeleteWebhookResponse,
        )

    def list_webhook_deliveries(
        self,
        webhook: str,
        *,
        page_size: int = 0,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[pb.WebhookDelivery]:
        """A webhook's deliveries, newest first, each with every attempt."""

        async def fetch(token: str) -> pb.ListWebhookDeliveriesResponse:
            return await self._unary(
                self._hooks_stub.ListWebhookDeliveries,
                pb.ListWebhookDeliveriesRequest(
                    parent=webhook_name(webhook), page_size=page_size, page_token=token
                ),
                idempotent=True,
                timeout=timeout,
                metadata=metadata,
                response_type=pb.ListWebhookDeliveriesResponse,
            )

        return paged(fetch, lambda r: r.deliveries, lambda r: r.next_page_token)

    # HTTP tools

    async def create_http_tool(
        self,
        http_tool: pb.HttpTool | None = None,
        *,
        http_tool_id: str,
        description: str = "",
        parameters: Mapping[str, Any] | None = None,
        url: str = "",
        secret: str = "",
        timeout_s: float | None = None,
        side_effects: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.HttpTool:
        """Registers an HTTP tool named `http_tool_id` (the keyword fields fill a missing
        `http_tool`; `timeout_s` is the tool's own bound on one call, `timeout` this
        request's deadline)."""
        if http_tool is None:
            http_tool = pb.HttpTool(
                description=description, url=url, secret=secret, side_effects=side_effects
            )
            schema = struct_pb2.Struct()
            schema.update(dict(parameters or {"type": "object"}))
            http_tool.parameters.CopyFrom(schema)
            if timeout_s is not None:
                bound = duration_pb2.Duration()
                bound.FromNanoseconds(round(timeout_s * 1e9))
                http_tool.timeout.CopyFrom(bound)
        response = await self._unary(
            self._hooks_stub.CreateHttpTool,
            pb.CreateHttpToolRequest(http_tool=http_tool, http_tool_id=http_tool_id),
            idempotent=False,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.CreateHttpToolResponse,
        )
        return response.http_tool

    async def get_http_tool(
        self, http_tool: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> pb.HttpTool:
        response = await self._unary(
            self._hooks_stub.GetHttpTool,
            pb.GetHttpToolRequest(name=http_tool_name(http_tool)),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.GetHttpToolResponse,
        )
        return response.http_tool

    def list_http_tools(
        self,
        *,
        page_size: int = 0,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[pb.HttpTool]:
        """Every HTTP tool of the tenant, newest first."""

        async def fetch(token: str) -> pb.ListHttpToolsResponse:
            return await self._unary(
                self._hooks_stub.ListHttpTools,
                pb.ListHttpToolsRequest(page_size=page_size, page_token=token),
                idempotent=True,
                timeout=timeout,
                metadata=metadata,
                response_type=pb.ListHttpToolsResponse,
            )

        return paged(fetch, lambda r: r.http_tools, lambda r: r.next_page_token)

    async def delete_http_tool(
        self, http_tool: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> None:
        await self._unary(
            self._hooks_stub.DeleteHttpTool,
            pb.DeleteHttpToolRequest(name=http_tool_name(http_tool)),
            idempotent=False,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.DeleteHttpToolResponse,
        )
