"""Gateways for the tests: free ports, and every service routed (generation to the backend).

Kept out of conftest.py so test modules can import it by a name no other test folder uses.
"""

from __future__ import annotations

import socket
from pathlib import Path

from gateway_test_backend import SERVICE

from callisto.gateway.config import GatewaySpec
from callisto.gateway.descriptors import all_service_names
from callisto.mesh.gateway import EnvoyGateway


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def gateway_for(backend_port: int, directory: Path, **overrides: int | float) -> EnvoyGateway:
    """Generation routed to the backend; the other services to a closed port (never called)."""
    unused = free_port()
    upstreams = {name: ("127.0.0.1", unused) for name in all_service_names()}
    upstreams[SERVICE] = ("127.0.0.1", backend_port)
    spec = GatewaySpec(
        upstreams=upstreams,
        descriptor_path=(directory / "callisto_descriptors.pb").absolute(),
        listen_port=free_port(),
        admin_port=free_port(),
        reflection_service=SERVICE,
        **overrides,  # type: ignore[arg-type]
    )
    return EnvoyGateway(spec, directory, log_flush_interval_ms=100)
