"""The control plane's settings (the shared ones, e.g. CALLISTO_GRPC_HOST and CALLISTO_REDIS_URL,
come from `CommonSettings`; CALLISTO_GRPC_PORT and CALLISTO_REGISTER are not read: the control
plane has a port of its own and is not behind Envoy, so it never registers)."""

from __future__ import annotations

from dataclasses import dataclass

from callisto.services.common.config import CommonSettings, SettingsError, setting

SOURCES = ("redis", "dns")


@dataclass(frozen=True)
class ControlPlaneSettings(CommonSettings):
    """Settings of `python -m callisto.gateway.control_plane`."""

    control_plane_port: int = setting(
        "CALLISTO_CONTROL_PLANE_PORT",
        18000,
        "Port the xDS control plane serves Envoy's ADS stream (and grpc.health) on.",
    )
    source: str = setting(
        "CALLISTO_CONTROL_PLANE_SOURCE",
        "redis",
        "Where the control plane finds replicas: `redis` (the replica registry) or `dns` "
        "(headless Services, `CALLISTO_CONTROL_PLANE_DNS_TARGETS`).",
    )
    dns_targets: str = setting(
        "CALLISTO_CONTROL_PLANE_DNS_TARGETS",
        "",
        "For the `dns` source: `service-full-name=host:port` pairs, comma-separated; every "
        "address the name resolves to is a replica.",
    )
    poll_seconds: float = setting(
        "CALLISTO_CONTROL_PLANE_POLL_SECONDS",
        0.5,
        "How often the source is read again besides its change notices (catches expiries).",
    )
    health_check_seconds: float = setting(
        "CALLISTO_CONTROL_PLANE_HEALTH_CHECK_SECONDS",
        5.0,
        "How often Envoy checks each replica's grpc.health (sent with every cluster).",
    )

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise SettingsError(f"CALLISTO_CONTROL_PLANE_SOURCE must be one of {SOURCES}")
        if self.source == "dns" and not self.dns_targets.strip():
            raise SettingsError("the dns source needs CALLISTO_CONTROL_PLANE_DNS_TARGETS")
        if self.poll_seconds <= 0 or self.health_check_seconds <= 0:
            raise SettingsError("the poll and health-check intervals must be positive")

    def dns_target_list(self) -> list[tuple[str, str, int]]:
        """(service, host, port) of each DNS target."""
        targets = []
        for item in self.dns_targets.split(","):
            if not item.strip():
                continue
            service, _, address = item.strip().partition("=")
            host, _, port = address.rpartition(":")
            if not service or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise SettingsError(f"DNS target {item.strip()!r} must read service=host:port")
            targets.append((service, host.strip("[]"), int(port)))
        return targets
