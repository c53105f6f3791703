"""`client.orchestration`'s webhooks and HTTP tools."""

from __future__ import annotations

from callisto._facade import Facade


class WebhooksMixin(Facade):
    """Webhooks (with their deliveries) and tenant HTTP tools."""
