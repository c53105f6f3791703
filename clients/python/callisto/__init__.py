"""Callisto's Python client: the SDK (`callisto.Client`, `callisto.SyncClient`), its errors
(`callisto.errors`), the generated stubs (`callisto.api`) and the client CLI (`callisto.cli`).

Importing `callisto` loads the SDK lazily, so `callisto.api...` stays cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callisto import errors
    from callisto.client import Client
    from callisto.retry import RetryPolicy
    from callisto.sync import SyncClient

__all__ = ["Client", "RetryPolicy", "SyncClient", "errors"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from callisto.client import Client

        return Client
    if name == "SyncClient":
        from callisto.sync import SyncClient

        return SyncClient
    if name == "RetryPolicy":
        from callisto.retry import RetryPolicy

        return RetryPolicy
    if name == "errors":
        from callisto import errors

        return errors
    raise AttributeError(f"module 'callisto' has no attribute {name!r}")
