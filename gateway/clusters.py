"""The upstream cluster of each Callisto service, built once for both ways Envoy learns it.

A static bootstrap embeds the cluster with its endpoints (`static_cluster_config`); the xDS
control plane sends the same cluster over CDS with its endpoints over EDS (`service_cluster`
without endpoints, then `load_assignment`). Both come from `service_cluster`, so what a
cluster carries (HTTP/2 upstream, circuit breakers and a retry budget, an active gRPC health
check, outlier detection, timeouts, buffer limits) is written in one place, in Envoy's own
types (`envoy-data-plane`).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import betterproto2
from envoy_data_plane.envoy.config.cluster.v3 import (
    CircuitBreakers,
    CircuitBreakersThresholds,
    CircuitBreakersThresholdsRetryBudget,
    Cluster,
    ClusterCommonLbConfig,
    ClusterDiscoveryType,
    ClusterEdsClusterConfig,
    OutlierDetection,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    AggregatedConfigSource,
    ApiVersion,
    ConfigSource,
    HealthCheck,
    HealthCheckGrpcHealthCheck,
    Http2ProtocolOptions,
    Locality,
    RoutingPriority,
    SocketAddress,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.v3 import Percent
from envoy_data_plane.google.protobuf import Any as AnyMessage

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def cluster_name(service: str) -> str:
    """`callisto.generation.v1.GenerationService` -> `callisto_generation_v1_generation_service`."""
    package, _, short = service.rpartition(".")
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in short).lstrip("_")
    return f"{package.replace('.', '_')}_{snake}"


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, kw_only=True)
class ClusterPolicy:
    """How Envoy treats the replicas of one service (durations in seconds)."""

    connect_timeout_s: float = 2.0
    # Also the largest HTTP/JSON request body the gateway buffers.
    buffer_limit_bytes: int = 4 * 1024 * 1024
    # How often each replica's grpc.health.v1 status is checked.
    health_check_interval_s: float = 5.0
    health_check_timeout_s: float = 1.0
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 4096
    # Retries in flight may add at most this share of the active requests (at least
    # `min_retry_concurrency`), so a failing service is not hit by a retry storm. The floor is
    # what lets every call that met a replica's death at once retry on another: a `kill -9`
    # fails every call in flight to it within milliseconds (Envoy's default, 3, failed most).
    retry_budget_percent: float = 25.0
    min_retry_concurrency: int = 64
    # At most this share of a service's replicas is ejected for failing (one of two; Envoy's
    # default, 10 %, ejects none of a handful).
    max_ejection_percent: int = 50


@dataclass(frozen=True)
class EndpointAddress:
    """One replica as Envoy sees it: an IP (EDS takes no names), its zone and weight."""

    ip: str
    port: int
    zone: str = "local"
    weight: int = 1


def _seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)


def service_cluster(
    service: str,
    policy: ClusterPolicy,
    *,
    static_endpoint: tuple[str, int] | None = None,
) -> Cluster:
    """The cluster of `service`: endpoints over EDS (ADS) by default, or the one `static_endpoint`
    (an IP, or a name Envoy resolves itself)."""
    name = cluster_name(service)
    if static_endpoint is None:
        discovery: dict[str, Any] = {
            "type": ClusterDiscoveryType.EDS,
            "eds_cluster_config": ClusterEdsClusterConfig(
                eds_config=ConfigSource(
                    ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3
                )
            ),
        }
    else:
        host, port = static_endpoint
        discovery = {
            "type": ClusterDiscoveryType.STATIC if is_ip(host) else ClusterDiscoveryType.STRICT_DNS,
            "load_assignment": ClusterLoadAssignment(
                cluster_name=name,
                endpoints=[
                    LocalityLbEndpoints(
                        lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=_address(host, port)))]
                    )
                ],
            ),
        }
    interval = _seconds(policy.health_check_interval_s)
    return Cluster(
        name=name,
        connect_timeout=_seconds(policy.connect_timeout_s),
        per_connection_buffer_limit_bytes=policy.buffer_limit_bytes,
        typed_extension_protocol_options={
            # gRPC needs HTTP/2 to the upstream whatever the client spoke.
            HTTP_PROTOCOL_OPTIONS: AnyMessage.pack(
                HttpProtocolOptions(
                    explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                        http2_protocol_options=Http2ProtocolOptions()
                    )
                )
            )
        },
        circuit_breakers=CircuitBreakers(
            thresholds=[
                CircuitBreakersThresholds(
                    priority=RoutingPriority.DEFAULT,
                    max_connections=policy.max_connections,
                    max_pending_requests=policy.max_pending_requests,
                    max_requests=policy.max_requests,
                    # With a budget, Envoy ignores max_retries.
                    retry_budget=CircuitBreakersThresholdsRetryBudget(
                        budget_percent=Percent(value=policy.retry_budget_percent),
                        min_retry_concurrency=policy.min_retry_concurrency,
                    ),
                )
            ]
        ),
        # Active grpc.health.v1 checks of the whole server (service ""): a replica that says
        # NOT_SERVING (dependencies not ready, draining) takes no traffic while another can. A
        # new replica is checked as soon as it appears; the no-traffic interval is the same, so
        # a service nobody called yet still notices a replica going away.
        health_checks=[
            HealthCheck(
                timeout=_seconds(policy.health_check_timeout_s),
                interval=interval,
                no_traffic_interval=interval,
                unhealthy_threshold=2,
                healthy_threshold=1,
                grpc_health_check=HealthCheckGrpcHealthCheck(),
            )
        ],
        # Health and weight changes reach the workers at once, not merged over Envoy's default
        # one-second window: a new replica takes traffic as soon as its first check passes.
        common_lb_config=ClusterCommonLbConfig(update_merge_window=_seconds(0)),
        # A replica the control plane no longer sends (deregistered, expired) goes at once;
        # otherwise Envoy would keep it until its own health checks failed.
        ignore_health_on_host_removal=True,
        # Eject a replica that keeps failing (Envoy's default of 5 consecutive 5xx, and as many
        # gateway failures: resets, refused connections); with one replica the panic threshold
        # still routes to it, so the caller sees the service's own error.
        outlier_detection=OutlierDetection(
            consecutive_gateway_failure=5,
            enforcing_consecutive_gateway_failure=100,
            interval=_seconds(5),
            base_ejection_time=_seconds(10),
            max_ejection_percent=policy.max_ejection_percent,
        ),
        **discovery,
    )


def _address(host: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def load_assignment(service: str, endpoints: Iterable[EndpointAddress]) -> ClusterLoadAssignment:
    """The EDS resource of `service`: its endpoints grouped by zone, each with its weight."""
    by_zone: dict[str, list[EndpointAddress]] = {}
    for endpoint in sorted(endpoints, key=lambda e: (e.zone, e.ip, e.port)):
        by_zone.setdefault(endpoint.zone, []).append(endpoint)
    return ClusterLoadAssignment(
        cluster_name=cluster_name(service),
        endpoints=[
            LocalityLbEndpoints(
                locality=Locality(zone=zone),
                lb_endpoints=[
                    LbEndpoint(
                        endpoint=Endpoint(address=_address(member.ip, member.port)),
                        load_balancing_weight=member.weight,
                    )
                    for member in members
                ],
            )
            for zone, members in by_zone.items()
        ],
    )


def as_config(message: betterproto2.Message) -> dict[str, Any]:
    """A message as the plain data of Envoy's YAML (proto3 JSON with the proto field names).

    betterproto's snake casing splits digits from letters (`consecutive_5xx` would become
    `consecutive_5_xx`), so messages rendered this way must avoid such fields; Envoy's
    validation of the written bootstrap catches one that slips in.
    """
    return message.to_dict(casing=betterproto2.Casing.SNAKE)


def static_cluster_config(
    service: str, policy: ClusterPolicy, host: str, port: int
) -> dict[str, Any]:
    """The bootstrap (static) form of `service_cluster` with one endpoint."""
    return as_config(service_cluster(service, policy, static_endpoint=(host, port)))
