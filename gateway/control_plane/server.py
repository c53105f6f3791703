"""The control plane process: the ADS server, grpc.health and reflection on one grpc.aio
server, and the loop that keeps the snapshot in step with the endpoint source.

It holds no state of its own (everything is read again from the source), so any number may
run side by side; it is not behind Envoy, so it neither registers in the registry nor asks
for an API key.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from callisto.gateway.clusters import ClusterPolicy
from callisto.gateway.control_plane.ads import ADS_SERVICE, AggregatedDiscoveryService
from callisto.gateway.control_plane.resources import SnapshotStore, build_snapshot
from callisto.gateway.control_plane.settings import ControlPlaneSettings
from callisto.gateway.control_plane.sources import (
    DnsSource,
    EndpointSource,
    RegistrySource,
    SourceError,
)
from callisto.services.common.config import SettingsError
from callisto.services.common.health import DependencyCheck, HealthMonitor
from callisto.services.common.redis_client import connect_redis
from callisto.services.common.server import message_size_options, until_stopped
from callisto.services.common.telemetry import configure_logging, start_metrics_server

log = logging.getLogger("callisto.control_plane")

NAME = "control-plane"
# ADS streams never end on their own: at shutdown they get this long, then Envoy reconnects
# to another control plane.
STOP_GRACE_S = 1.0


def make_source(settings: ControlPlaneSettings) -> EndpointSource:
    if settings.source == "dns":
        return DnsSource(settings.dns_target_list(), zone=settings.zone)
    return RegistrySource(connect_redis(settings.redis_url))


class Refresher:
    """Reads the source whenever it may have changed (and at least every poll) and puts the
    resulting snapshot in the store; a source that cannot be read leaves the last one."""

    def __init__(
        self,
        source: EndpointSource,
        store: SnapshotStore,
        policy: ClusterPolicy,
        poll_s: float,
    ) -> None:
        self._source = source
        self._store = store
        self._policy = policy
        self._poll_s = poll_s
        self._last_success = 0.0
        self._failing = False

    @property
    def fresh(self) -> bool:
        """Whether the source answered within the last few polls."""
        return time.monotonic() - self._last_success < max(3 * self._poll_s, 2.0)

    async def refresh_once(self) -> None:
        try:
            endpoints = await self._source.endpoints()
        except SourceError as error:
            if not self._failing:
                log.warning(
                    "endpoint source unreadable; the last endpoints stay",
                    extra={"fields": {"error": str(error)}},
                )
            self._failing = True
            return
        if self._failing:
            log.info("endpoint source readable again")
        self._failing = False
        self._last_success = time.monotonic()
        if self._store.update(build_snapshot(self._policy, endpoints)):
            log.info(
                "endpoints changed",
                extra={
                    "fields": {
                        "replicas": {s: len(e) for s, e in sorted(endpoints.items()) if e},
                    }
                },
            )

    async def run(self) -> None:
        while True:
            try:
                await self.refresh_once()
            except Exception:  # the loop must outlive any one round
                log.exception("refresh failed")
            await self._source.wait_for_change(self._poll_s)


async def serve(settings: ControlPlaneSettings, *, stop: asyncio.Event | None = None) -> None:
    """Runs the control plane until `stop` is set (or SIGTERM/SIGINT when it is not given)."""
    source = make_source(settings)
    store = SnapshotStore()
    policy = ClusterPolicy(health_check_interval_s=settings.health_check_seconds)
    refresher = Refresher(source, store, policy, settings.poll_seconds)
    identifier = f"callisto-control-plane/{socket.gethostname()}"

    async def source_fresh() -> bool:
        return refresher.fresh

    server = grpc.aio.server(options=message_size_options(settings.max_message_bytes))
    server.add_generic_rpc_handlers([AggregatedDiscoveryService(store, identifier).handler()])
    # SERVING once the source answered (and while it keeps answering).
    monitor = HealthMonitor(
        [ADS_SERVICE],
        [DependencyCheck("endpoint source", source_fresh)],
        settings.health_interval_seconds,
    )
    health_pb2_grpc.add_HealthServicer_to_server(monitor.servicer, server)
    # ADS's descriptors are not in the protobuf pool (betterproto has none): reflection lists it
    # and describes health and itself.
    reflection.enable_server_reflection(
        [ADS_SERVICE, "grpc.health.v1.Health", reflection.SERVICE_NAME], server
    )
    address = f"{settings.host}:{settings.control_plane_port}"
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"cannot bind {address}")
    metrics_port = start_metrics_server(settings.host, settings.metrics_port)
    await refresher.refresh_once()
    refreshing = asyncio.create_task(refresher.run(), name="refresh")
    await server.start()
    await monitor.start()
    log.info(
        "serving",
        extra={
            "fields": {"address": address, "source": settings.source, "metrics_port": metrics_port}
        },
    )

    await until_stopped(stop)

    log.info("shutting down")
    await monitor.drain()
    refreshing.cancel()
    await asyncio.gather(refreshing, return_exceptions=True)
    await server.stop(STOP_GRACE_S)
    await monitor.stop()
    await source.close()
    log.info("stopped")


def main() -> None:
    try:
        settings = ControlPlaneSettings.from_env()
    except SettingsError as error:
        raise SystemExit(f"control plane: {error}") from error
    configure_logging(NAME, settings.log_level, settings.log_format)
    asyncio.run(serve(settings))
