"""`send_webhook`: a step acts through one of the tenant's registered webhooks.

The delivery's idempotency key is the call's `ToolContext.idempotency_key` (run, step and
attempt), so a step resumed after a restart finds the delivery it already made instead of
sending again; a call without one (a chat turn) gets a fresh key. The dispatcher sends it now,
with its retries, and the tool answers with the delivery's outcome; a delivery that failed
fails the call (not retried by the registry: the dispatcher already retried it).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import grpc

from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.services.common.errors import CallistoError
from callisto.services.orchestration.tools.errors import ToolInputError
from callisto.services.orchestration.tools.registry import ToolContext, ToolResult, ToolSpec
from callisto.services.orchestration.webhook_events import ACTION_EVENT, DELIVERED_EVENTS

NAME = "send_webhook"
# What a step may post: a workflow action, or one of the event types a webhook takes.
EVENT_TYPES = (ACTION_EVENT, *DELIVERED_EVENTS)

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "webhook": {
            "type": "string",
            "description": "The registered webhook to post to: webhooks/{webhook}.",
            "pattern": "^webhooks/[a-z0-9][a-z0-9-]{0,62}$",
            "maxLength": 72,
        },
        "event_type": {
            "type": "string",
            "description": (
                "The event posted: workflow.action, or one of the event types the webhook "
                "is registered for."
            ),
            "enum": list(EVENT_TYPES),
        },
        "payload": {
            "type": "object",
            "description": "What the receiver is told (the `data` of the delivery's body).",
        },
    },
    "required": ["webhook", "payload"],
    "additionalProperties": False,
}


class Deliverer(Protocol):
    """What the tool needs of the dispatcher (webhooks.WebhookDispatcher)."""

    async def deliver(
        self,
        webhook_name: str,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        idempotency_key: str,
        conversation: str = "",
    ) -> pb.WebhookDelivery: ...


def spec(dispatcher: Deliverer, *, timeout_s: float) -> ToolSpec:
    """The tool, delivering through `dispatcher`; `timeout_s` covers every attempt of one
    delivery and the waits between them."""

    async def send(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
        key = context.idempotency_key or f"call-{uuid.uuid4().hex}"
        event_type = str(arguments.get("event_type") or "workflow.action")
        try:
            delivery = await dispatcher.deliver(
                str(arguments["webhook"]),
                event_type,
                dict(arguments.get("payload") or {}),
                idempotency_key=key,
                conversation=context.conversation,
            )
        except ValueError as error:
            raise ToolInputError(str(error)) from None
        except CallistoError as error:
            if error.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise ToolInputError(error.message) from None
            raise
        state = pb.DeliveryState.Name(delivery.state).removeprefix("DELIVERY_STATE_").lower()
        last = delivery.attempts[-1] if delivery.attempts else None
        data = {
            "delivery": delivery.name,
            "state": state,
            "attempts": len(delivery.attempts),
            "status_code": last.status_code if last is not None else 0,
        }
        if delivery.state != pb.DELIVERY_STATE_SUCCEEDED:
            reason = last.error if last is not None and last.error else state
            raise RuntimeError(
                f"delivery {delivery.name} {state} after {len(delivery.attempts)} "
                f"attempt(s): {reason}"
            )
        return ToolResult(
            data=data,
            summary=(
                f"{delivery.name}: {state} (HTTP {data['status_code']}, "
                f"{len(delivery.attempts)} attempt(s))"
            ),
        )

    return ToolSpec(
        name=NAME,
        description=(
            "Posts an event to one of the tenant's registered webhooks (signed, retried, "
            "delivered once per step). Use it to notify or act in an outside system."
        ),
        parameters=PARAMETERS,
        handler=send,
        timeout_s=timeout_s,
        side_effects=True,
    )


class Webhooks(Protocol):
    """What narrowing needs of the webhook store (webhooks.WebhookStore)."""

    async def all_stored(self) -> Sequence[Any]: ...


async def narrowed_parameters(
    store: Webhooks, tool: str, parameters: dict[str, Any]
) -> dict[str, Any] | None:
    """The tool's schema for a workflow step of the bound tenant: `webhook` one of the
    tenant's webhooks and the payload a summary, so even a small model names a real endpoint
    and says something; None for other tools or a tenant without webhooks."""
    if tool != NAME:
        return None
    names = [stored.webhook.name for stored in await store.all_stored()]
    if not names:
        return None
    narrowed = copy.deepcopy(parameters)
    properties = narrowed.setdefault("properties", {})
    properties["webhook"] = {"type": "string", "enum": names}
    properties["event_type"] = {"type": "string", "enum": [EVENT_TYPES[0]]}
    properties["payload"] = {
        "type": "object",
        "properties": {"summary": {"type": "string", "minLength": 1, "maxLength": 256}},
        "required": ["summary"],
    }
    narrowed["required"] = ["webhook", "event_type", "payload"]
    return narrowed
