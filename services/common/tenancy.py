"""The tenant of the current call, set by the auth interceptor from the caller's API key.

Handlers read it with `current_tenant()`; it never comes from a request body.
"""

from __future__ import annotations

import contextvars
import re

TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "callisto_tenant", default=None
)


def current_tenant() -> str:
    tenant = _tenant.get()
    if tenant is None:
        # Only reachable if a handler runs outside the auth interceptor: a programming error.
        raise RuntimeError("no authenticated tenant in this context")
    return tenant


def bound_tenant() -> str | None:
    """The current call's tenant, or None outside an authenticated call."""
    return _tenant.get()


def bind_tenant(tenant: str) -> contextvars.Token[str | None]:
    return _tenant.set(tenant)


def reset_tenant(token: contextvars.Token[str | None]) -> None:
    _tenant.reset(token)
