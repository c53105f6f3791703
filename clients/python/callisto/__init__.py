"""Callisto's Python client: the SDK (`callisto.Client`, `callisto.SyncClient`), its errors
(`callisto.errors`), the generated stubs (`callisto.api`) and the client CLI (`callisto.cli`).

Importing `callisto` loads the SDK lazily, so `callisto.api...` stays cheap to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from callisto import errors
    from callisto.client import Client
    from callisto.retry import RetryPolicy
    from callisto.sync import SyncClient

__all__ = ["Client", "RetryPolicy", "SyncClient", "errors"]

# Public name -> the module that defines it (None: the name is that module itself).
_LAZY = {
    "Client": "callisto.client",
    "SyncClient": "callisto.sync",
    "RetryPolicy": "callisto.retry",
    "errors": None,
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'callisto' has no attribute {name!r}")
    module_name = _LAZY[name]
    # import_module, not `from callisto import ...`, which would call this function again.
    if module_name is None:
        return importlib.import_module(f"callisto.{name}")
    return getattr(importlib.import_module(module_name), name)
