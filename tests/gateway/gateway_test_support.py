"""Gateways for the tests: free ports, and every service routed (generation to the backend).

Kept out of conftest.py so test modules can import it by a name no other test folder uses.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from gateway_test_backend import SERVICE

from callisto.gateway.config import GatewaySpec
from callisto.gateway.descriptors import all_service_names
from callisto.mesh.gateway import EnvoyGateway


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# The service the health-only backend answers for, with a status no other upstream reports.
HEALTH_ONLY_SERVICE = "callisto.retrieval.v1.RetrievalService"
# A browser origin the test gateways allow besides their own.
ALLOWED_ORIGIN = "https://app.example"


def gateway_for(
    backend_port: int,
    directory: Path,
    *,
    upstream_ports: dict[str, int] | None = None,
    **overrides: Any,
) -> EnvoyGateway:
    """Generation routed to the backend, the services in `upstream_ports` to theirs; the other
    services to a closed port (never called)."""
    unused = free_port()
    upstreams = {name: ("127.0.0.1", unused) for name in all_service_names()}
    upstreams[SERVICE] = ("127.0.0.1", backend_port)
    for name, port in (upstream_ports or {}).items():
        upstreams[name] = ("127.0.0.1", port)
    overrides.setdefault("cors_allowed_origins", (ALLOWED_ORIGIN,))
    spec = GatewaySpec(
        upstreams=upstreams,
        descriptor_path=(directory / "callisto_descriptors.pb").absolute(),
        listen_port=free_port(),
        admin_port=free_port(),
        reflection_service=SERVICE,
        **overrides,
    )
    return EnvoyGateway(spec, directory, log_flush_interval_ms=100)
