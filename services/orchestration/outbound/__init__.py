"""Outbound HTTP of webhooks and tenant HTTP tools: the SSRF guard (`guard`) and the client
that connects only to vetted addresses (`client`)."""

from __future__ import annotations

from callisto.services.orchestration.outbound.client import (
    OutboundClient,
    OutboundError,
    OutboundRefused,
    OutboundResponse,
    OutboundTimeout,
)
from callisto.services.orchestration.outbound.guard import (
    OutboundGuard,
    RefusedAddress,
    RefusedUrl,
    UnresolvedHost,
)
from callisto.services.orchestration.settings import OrchestrationSettings

__all__ = [
    "OutboundClient",
    "OutboundError",
    "OutboundGuard",
    "OutboundRefused",
    "OutboundResponse",
    "OutboundTimeout",
    "RefusedAddress",
    "RefusedUrl",
    "UnresolvedHost",
    "check_url",
    "client_from",
]


def client_from(settings: OrchestrationSettings) -> OutboundClient:
    """The process's outbound client, as the settings' outbound section says."""
    return OutboundClient(
        OutboundGuard(settings.outbound_allowed_networks),
        timeout_s=settings.outbound_timeout_s,
        max_redirects=settings.outbound_max_redirects,
        max_bytes=settings.outbound_max_response_bytes,
    )


async def check_url(guard: OutboundGuard, url: str) -> str:
    """Why `url` may not be registered ("" when it may): a bad URL, a refused address, or a
    host that resolves to nothing acceptable."""
    try:
        await guard.resolve(url)
    except (RefusedUrl, RefusedAddress, UnresolvedHost) as error:
        return str(error)
    return ""
