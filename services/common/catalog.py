"""Every Callisto gRPC service, from the generated modules (for mesh-wide reflection)."""

from __future__ import annotations

import importlib

from callisto.api import MODULES


def service_names() -> list[str]:
    return [
        service.full_name
        for name in MODULES
        for service in importlib.import_module(name).DESCRIPTOR.services_by_name.values()
    ]
