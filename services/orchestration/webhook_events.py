"""The event types webhooks are registered for (what runs publish), and the one a workflow
step posts through `send_webhook`."""

from __future__ import annotations

DELIVERED_EVENTS = (
    "run.done",
    "run.failed",
    "approval.requested",
    "approval.decided",
    "step.failed",
)
ACTION_EVENT = "workflow.action"
