"""How a tool handler says why it failed: worth retrying, or the caller's fault."""

from __future__ import annotations


class TransientToolError(Exception):
    """A failure that may pass on retry (a dependency UNAVAILABLE, a timeout)."""


class ToolInputError(Exception):
    """The arguments passed the schema but cannot be served (division by zero, an unknown time
    zone): the call fails at once, is not retried and does not count against the breaker."""
