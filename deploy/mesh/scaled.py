"""Replicas of the services over one Redis, behind Envoy fed by the control plane: the shape of
a scaled deployment as local processes, for the scale-out tests and `bench/scale_bench.py`.

Each replica registers itself in the Redis (the services do that on their own); the control
plane turns the registrations into Envoy's clusters and endpoints. The caller brings Triton
(its URL in the generation and retrieval environments) and decides how many replicas of what.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callisto.gateway.config import GatewaySpec
from callisto.mesh.gateway import ControlPlaneProcess, EnvoyGateway
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port

PERSISTENCE_SERVICE = "callisto.persistence.v1.PersistenceService"
GENERATION_SERVICE = "callisto.generation.v1.GenerationService"
RETRIEVAL_SERVICE = "callisto.retrieval.v1.RetrievalService"
ORCHESTRATION_SERVICE = "callisto.orchestration.v1.OrchestrationService"
SERVICES = {
    "persistence": PERSISTENCE_SERVICE,
    "generation": GENERATION_SERVICE,
    "retrieval": RETRIEVAL_SERVICE,
    "orchestration": ORCHESTRATION_SERVICE,
}


@dataclass
class ScaledMesh:
    """Its Redis, control plane and Envoy; replicas come with `add`."""

    home: Path
    redis: RedisServer
    control_plane: ControlPlaneProcess
    gateway: EnvoyGateway
    # Per service name (`persistence`...), the environment its replicas start with.
    envs: dict[str, dict[str, str]] = field(default_factory=dict)
    replicas: dict[str, list[ServiceProcess]] = field(default_factory=dict)

    @classmethod
    def create(
        cls, home: Path, services: tuple[str, ...] = tuple(SERVICES), **spec_fields: Any
    ) -> ScaledMesh:
        """Not started: `start` starts Redis and the control plane, `start_gateway` Envoy
        (`spec_fields` go to its GatewaySpec, e.g. a higher rate limit)."""
        redis = RedisServer(home / "redis")
        control_plane = ControlPlaneProcess(
            free_port(), redis_url=redis.url, log_path=home / "control-plane.log"
        )
        host, _, port = control_plane.address.rpartition(":")
        spec = GatewaySpec(
            upstreams={},
            services=tuple(SERVICES[name] for name in services),
            control_planes=((host, int(port)),),
            descriptor_path=home / "gateway" / "callisto.binpb",
            listen_port=free_port(),
            admin_port=free_port(),
            reflection_service=PERSISTENCE_SERVICE,
            **spec_fields,
        )
        gateway = EnvoyGateway(spec, home / "gateway", log_flush_interval_ms=100)
        return cls(home=home, redis=redis, control_plane=control_plane, gateway=gateway)

    def start(self) -> None:
        self.redis.start()
        self.control_plane.start()
        self.control_plane.wait_healthy()

    def start_gateway(self) -> None:
        self.gateway.start()

    def add(self, name: str, timeout: float = 60.0) -> ServiceProcess:
        """One more replica of `name`, returned once it is SERVING."""
        index = len(self.replicas.setdefault(name, []))
        replica = ServiceProcess(
            name,
            free_port(),
            env={"CALLISTO_REDIS_URL": self.redis.url, **self.envs.get(name, {})},
            log_path=self.home / f"{name}-{index}.log",
        )
        replica.start()
        try:
            replica.wait_healthy(timeout)
        except BaseException:
            replica.stop()
            raise
        self.replicas[name].append(replica)
        return replica

    def remove(self, replica: ServiceProcess) -> None:
        """Stops a replica gracefully (it deregisters first) and forgets it."""
        replica.stop()
        self.replicas[replica.service].remove(replica)

    def targets(self, name: str) -> str:
        """Every replica of `name` as one gRPC target (the SDK balances over them)."""
        return "ipv4:" + ",".join(replica.address for replica in self.replicas[name])

    def requests_per_host(self) -> dict[str, int]:
        """`host:port` -> requests Envoy sent it, for every upstream host it knows now."""
        url = f"{self.gateway.admin_url}/clusters?format=json"
        with urllib.request.urlopen(url, timeout=2) as answer:
            clusters = json.load(answer)
        counts: dict[str, int] = {}
        for cluster in clusters.get("cluster_statuses", []):
            for host in cluster.get("host_statuses", []):
                socket = host.get("address", {}).get("socket_address", {})
                if "port_value" not in socket:
                    continue
                stats = {s["name"]: int(s.get("value", 0)) for s in host.get("stats", [])}
                counts[f"{socket['address']}:{socket['port_value']}"] = stats.get("rq_total", 0)
        return counts

    def stop(self) -> None:
        """Everything, in reverse order, by PID."""
        self.gateway.stop()
        for replicas in reversed(list(self.replicas.values())):
            for replica in replicas:
                replica.stop()
        self.control_plane.stop()
        self.redis.stop()
