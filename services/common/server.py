"""Server bootstrap shared by every service: a service's `__main__` is `run(build, Settings)`.

It wires the grpc.aio server (message size limits, interceptors), health that follows the
service's dependencies, reflection, metrics, logging and tracing, and a graceful shutdown:
on SIGTERM health turns NOT_SERVING, streams are told to end with a clean terminal message, and
in-flight calls get `CALLISTO_SHUTDOWN_GRACE_SECONDS` to finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from callisto.services.common import catalog
from callisto.services.common.auth import ApiKeyStore
from callisto.services.common.config import CommonSettings
from callisto.services.common.health import DependencyCheck, HealthMonitor
from callisto.services.common.interceptors import ServerInterceptor
from callisto.services.common.pagination import page_tokens
from callisto.services.common.redis_client import connect_redis
from callisto.services.common.registry import (
    MAX_WEIGHT,
    Registration,
    Replica,
    advertised_host,
    new_replica_id,
)
from callisto.services.common.telemetry import (
    configure_logging,
    configure_tracing,
    start_metrics_server,
)

log = logging.getLogger("callisto.server")

S = TypeVar("S", bound=CommonSettings)


@dataclass
class ServiceDefinition:
    """What a service contributes to the shared bootstrap."""

    # Full names of the gRPC services it serves (for health and reflection).
    service_names: Sequence[str]
    # Adds the servicers to the server.
    register: Callable[[grpc.aio.Server], None]
    # Probes of the dependencies that must answer before the service reports SERVING.
    checks: Sequence[DependencyCheck] = ()
    # Called after the server stopped, to close backends.
    on_stop: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)


class Runtime(Generic[S]):
    """Process-wide resources a service builds on."""

    def __init__(self, name: str, settings: S) -> None:
        self.name = name
        self.settings = settings
        self.auth_redis: Redis = connect_redis(settings.redis_url)
        self.keys = ApiKeyStore(self.auth_redis, cache_seconds=settings.auth_cache_seconds)
        page_tokens.configure(secret=settings.page_token_secret, redis=self.auth_redis)
        # Set when the process begins to shut down: long streams end cleanly when they see it.
        self.stopping = asyncio.Event()
        self._service_key = settings.service_api_key or None
        self._minted_key = False

    async def service_key(self) -> str:
        """This process's service credential, for calls to other services on a tenant's
        behalf: `CALLISTO_SERVICE_API_KEY`, or a key of the service principal `name` created
        in the auth Redis at first use and revoked at shutdown."""
        if self._service_key is None:
            self._service_key = await self.keys.create_service(self.name)
            self._minted_key = True
        return self._service_key

    async def close(self) -> None:
        if self._minted_key and self._service_key is not None:
            try:
                await self.keys.revoke_service(self._service_key)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                log.warning("could not revoke the service key at shutdown")
        await self.auth_redis.aclose()


_MAX_CONNECTION_AGE_MS = 5 * 60 * 1000


def message_size_options(limit: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
    ]


async def serve(
    name: str,
    default_port: int,
    build: Callable[[Runtime[S]], Awaitable[ServiceDefinition]],
    settings: S,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Runs one service until `stop` is set (or SIGTERM/SIGINT when `stop` is not given)."""
    configure_tracing(name, settings.otel_exporter)
    runtime = Runtime(name, settings)
    definition = await build(runtime)
    tracing = settings.otel_exporter != "none"
    # Ours is outermost: it writes every response itself, so an abandoned stream always
    # finishes; OpenTelemetry's wraps streams in async generators and so runs inside it (its
    # span covers the handler). Ours attaches the caller's trace context in either case, so
    # the access log carries the trace id.
    interceptors: list[grpc.aio.ServerInterceptor] = [  # type: ignore[type-arg]
        ServerInterceptor(runtime.keys, propagate_trace_context=True)
    ]
    if tracing:
        interceptors.append(aio_server_interceptor())  # type: ignore[no-untyped-call]
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            *message_size_options(settings.max_message_bytes),
            # Clients connect again now and then (streams under way keep their connection), so
            # a channel over a DNS name with one record per replica finds replicas added since.
            ("grpc.max_connection_age_ms", _MAX_CONNECTION_AGE_MS),
        ],
    )
    definition.register(server)
    monitor = HealthMonitor(
        definition.service_names, definition.checks, settings.health_interval_seconds
    )
    health_pb2_grpc.add_HealthServicer_to_server(monitor.servicer, server)
    reflected = catalog.service_names() if settings.reflect_mesh else list(definition.service_names)
    reflection.enable_server_reflection(
        [*reflected, "grpc.health.v1.Health", reflection.SERVICE_NAME], server
    )
    port = settings.port or default_port
    bound = server.add_insecure_port(f"{settings.host}:{port}")
    if bound == 0:
        raise SystemExit(f"cannot bind {settings.host}:{port}")
    metrics_port = start_metrics_server(settings.host, settings.metrics_port)
    await server.start()
    await monitor.start()
    registration = await _register(runtime, definition, bound, monitor)
    log.info(
        "serving",
        extra={"fields": {"address": f"{settings.host}:{bound}", "metrics_port": metrics_port}},
    )

    await until_stopped(stop)

    log.info("shutting down", extra={"fields": {"grace_seconds": settings.shutdown_grace_seconds}})
    await monitor.drain()
    if registration is not None:
        # Out of the control plane's endpoints first, so Envoy sends no new calls here.
        await registration.stop()
    # Calls already routed here still arrive for a moment; a stopping server would cancel them.
    await asyncio.sleep(settings.drain_seconds)
    runtime.stopping.set()
    await server.stop(settings.shutdown_grace_seconds)
    await monitor.stop()
    for close in definition.on_stop:
        await close()
    await runtime.close()
    log.info("stopped")


async def until_stopped(stop: asyncio.Event | None) -> None:
    """Returns when `stop` is set, or (without one) on SIGTERM or SIGINT."""
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _register(
    runtime: Runtime[Any], definition: ServiceDefinition, port: int, monitor: HealthMonitor
) -> Registration | None:
    """This replica in the registry, under every service it serves, following its health."""
    settings = runtime.settings
    if not settings.register:
        return None
    if not 1 <= settings.weight <= MAX_WEIGHT:
        raise SystemExit(f"CALLISTO_WEIGHT must be between 1 and {MAX_WEIGHT}")
    host = await advertised_host(settings.host, settings.advertise_host)
    replica_id = new_replica_id()
    registration = Registration(
        runtime.auth_redis,
        [
            Replica(
                service=service,
                replica_id=replica_id,
                host=host,
                port=port,
                zone=settings.zone,
                weight=settings.weight,
            )
            for service in definition.service_names
        ],
        settings.registry_ttl_seconds,
    )
    await registration.start(monitor.healthy)
    monitor.on_change(registration.set_serving)
    log.info(
        "registered",
        extra={"fields": {"replica": replica_id, "address": f"{host}:{port}"}},
    )
    return registration


def run(
    name: str,
    default_port: int,
    build: Callable[[Runtime[S]], Awaitable[ServiceDefinition]],
    settings_type: type[S],
) -> None:
    """Entry point of a service process."""
    settings = settings_type.from_env()
    configure_logging(name, settings.log_level, settings.log_format)
    asyncio.run(serve(name, default_port, build, settings))
