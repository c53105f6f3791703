"""Envoy fed by the control plane: real Redis, two real control planes, a real Envoy and real
persistence replicas that register themselves; plus the xDS bootstrap and the retry policies
as rendered."""

from __future__ import annotations

import asyncio
import re
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio

from callisto.api.persistence.v1 import persistence_pb2, persistence_pb2_grpc
from callisto.client import bearer
from callisto.gateway.config import XDS_CLUSTER, GatewaySpec, cluster_name, render_config
from callisto.gateway.descriptors import all_service_names, find_service
from callisto.gateway.process import validate, write_gateway_files
from callisto.gateway.retries import IDEMPOTENT_RETRY_ON, NEVER_SENT_RETRY_ON
from callisto.mesh.gateway import ControlPlaneProcess, EnvoyGateway
from callisto.mesh.processes import ManagedProcess, RedisServer, ServiceProcess, free_port
from callisto.services.common.auth import create_api_key
from callisto.services.common.redis_client import connect_redis
from callisto.services.common.registry import Registration, Replica

PERSISTENCE = "callisto.persistence.v1.PersistenceService"
CLUSTER = cluster_name(PERSISTENCE)
TTL_S = 1.0
JOIN_BOUND_S = 2.0


def xds_spec(directory: Path, control_planes: tuple[tuple[str, int], ...]) -> GatewaySpec:
    return GatewaySpec(
        services=(PERSISTENCE,),
        control_planes=control_planes,
        descriptor_path=(directory / "callisto_descriptors.pb").absolute(),
        listen_port=free_port(),
        admin_port=free_port(),
    )


# The rendered configuration.


def test_xds_bootstrap_passes_envoy_validation_with_names_and_ips(tmp_path: Path) -> None:
    spec = GatewaySpec(
        services=tuple(all_service_names()),
        control_planes=(("127.0.0.1", 18000), ("control-plane", 18000)),
        descriptor_path=tmp_path / "d.pb",
    )
    validate(write_gateway_files(spec, tmp_path))
    config = render_config(spec)
    assert config["dynamic_resources"]["cds_config"]["ads"] == {}
    [xds] = config["static_resources"]["clusters"]
    assert xds["name"] == XDS_CLUSTER and xds["type"] == "STRICT_DNS"
    assert len(xds["load_assignment"]["endpoints"][0]["lb_endpoints"]) == 2
    assert config["node"]["cluster"] == "callisto-gateway" and config["node"]["id"]


def test_a_spec_takes_either_upstreams_or_services_with_control_planes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="either"):
        GatewaySpec(
            upstreams={PERSISTENCE: ("127.0.0.1", 1)},
            services=(PERSISTENCE,),
            control_planes=(("127.0.0.1", 2),),
            descriptor_path=tmp_path,
        )
    with pytest.raises(ValueError, match="control plane"):
        GatewaySpec(services=(PERSISTENCE,), descriptor_path=tmp_path)
    spec = GatewaySpec(
        services=(PERSISTENCE,), control_planes=(("127.0.0.1", 2),), descriptor_path=tmp_path
    )
    assert spec.routed_services == (PERSISTENCE,) and spec.reflection_upstream == PERSISTENCE


@pytest.mark.parametrize("xds", [False, True])
def test_unary_retry_policies_follow_the_contracts_idempotency_level(
    tmp_path: Path, xds: bool
) -> None:
    if xds:
        spec = xds_spec(tmp_path, (("127.0.0.1", 18000),))
    else:
        spec = GatewaySpec(upstreams={PERSISTENCE: ("127.0.0.1", 1)}, descriptor_path=tmp_path)
    hcm = render_config(spec)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    by_path = {r["match"].get("path") or r["match"].get("prefix"): r for r in routes}

    def policy(method: str) -> dict[str, Any] | None:
        route = by_path.get(f"/{PERSISTENCE}/{method}", by_path[f"/{PERSISTENCE}/"])
        result: dict[str, Any] | None = route["route"].get("retry_policy")
        return result

    service = find_service(PERSISTENCE)
    assert service.methods_by_name["GetConversation"].GetOptions().idempotency_level
    read = policy("GetConversation")
    assert read is not None and read["retry_on"] == IDEMPOTENT_RETRY_ON
    assert "unavailable" in read["retry_on"] and "reset" in read["retry_on"]
    assert 2 <= read["num_retries"] <= 3
    assert float(read["per_try_timeout"].rstrip("s")) < spec.unary_timeout_s
    assert read["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    assert read["host_selection_retry_max_attempts"] >= 3
    write = policy("CreateEvent")
    assert write is not None and write["retry_on"] == NEVER_SENT_RETRY_ON
    assert "per_try_timeout" not in write
    for method in service.methods:
        if method.server_streaming or method.client_streaming:
            assert by_path[f"/{PERSISTENCE}/{method.name}"]["route"].get("retry_policy") is None
    if not xds:
        [cluster] = render_config(spec)["static_resources"]["clusters"]
        budget = cluster["circuit_breakers"]["thresholds"][0]["retry_budget"]
        assert budget["budget_percent"]["value"] > 0


# The live mesh.


@dataclass
class XdsMesh:
    home: Path
    redis: RedisServer
    control_planes: list[ControlPlaneProcess]
    gateway: EnvoyGateway
    api_key: str
    replicas: list[ServiceProcess] = field(default_factory=list)

    def replica(self, *, register: bool = True) -> ServiceProcess:
        index = len(self.replicas)
        env = {
            "CALLISTO_REDIS_URL": self.redis.url,
            "CALLISTO_AUTH_CACHE_SECONDS": "0",
            "CALLISTO_HEALTH_INTERVAL_SECONDS": "0.2",
            "CALLISTO_SHUTDOWN_GRACE_SECONDS": "1",
            "CALLISTO_REGISTRY_TTL_SECONDS": str(TTL_S),
            "CALLISTO_REGISTER": "true" if register else "false",
        }
        process = ServiceProcess(
            "persistence", free_port(), env=env, log_path=self.home / f"persistence-{index}.log"
        )
        self.replicas.append(process)
        process.start()
        return process

    def host_requests(self) -> dict[str, int]:
        """Requests per persistence host Envoy has now ("127.0.0.1:port" -> count)."""
        with urllib.request.urlopen(f"{self.gateway.admin_url}/clusters", timeout=2) as reply:
            text = reply.read().decode()
        return {
            match.group(1): int(match.group(2))
            for match in re.finditer(rf"^{CLUSTER}::([\d.]+:\d+)::rq_total::(\d+)$", text, re.M)
        }


@pytest.fixture(scope="module")
def xds_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XdsMesh]:
    home = Path(tmp_path_factory.mktemp("xds"))
    redis = RedisServer(home / "redis")
    redis.start()
    control_planes = [
        ControlPlaneProcess(
            free_port(),
            redis_url=redis.url,
            log_path=home / f"control-plane-{i}.log",
            env={"CALLISTO_CONTROL_PLANE_POLL_SECONDS": "0.2"},
        )
        for i in range(2)
    ]
    gateway = EnvoyGateway(
        xds_spec(home / "gateway", tuple((c.host, c.port) for c in control_planes)),
        home / "gateway",
        log_flush_interval_ms=100,
    )
    mesh = XdsMesh(
        home,
        redis,
        control_planes,
        gateway,
        asyncio.run(create_api_key(redis.url, "acme", label="tests")),
    )
    try:
        for process in control_planes:
            process.start()
        for process in control_planes:
            process.wait_healthy()
        gateway.start()
        yield mesh
    finally:
        gateway.stop()
        for replica in mesh.replicas:
            replica.stop(2)
        for process in control_planes:
            process.stop()
        redis.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stub(xds_mesh: XdsMesh) -> AsyncIterator[persistence_pb2_grpc.PersistenceServiceStub]:
    async with grpc.aio.insecure_channel(xds_mesh.gateway.grpc_target) as channel:
        yield persistence_pb2_grpc.PersistenceServiceStub(channel)


async def list_conversations(
    stub: persistence_pb2_grpc.PersistenceServiceStub, mesh: XdsMesh
) -> None:
    await stub.ListConversations(
        persistence_pb2.ListConversationsRequest(page_size=1),
        metadata=(("authorization", bearer(mesh.api_key)),),
        timeout=5,
    )


async def first_request_reaches(
    stub: persistence_pb2_grpc.PersistenceServiceStub,
    mesh: XdsMesh,
    replica: ServiceProcess,
    within: float,
) -> float:
    """Calls until Envoy has sent `replica` a request; the seconds that took. A service's first
    replica is not routed until Envoy's first check of it passed (milliseconds after it
    joins): a call in between is UNAVAILABLE, as the SDK retries it."""
    started = time.monotonic()
    while mesh.host_requests().get(replica.address, 0) == 0:
        assert time.monotonic() - started < within, f"{replica.address} got no request"
        try:
            await list_conversations(stub, mesh)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
    return time.monotonic() - started


async def test_a_registered_replica_receives_traffic_within_two_seconds(
    xds_mesh: XdsMesh, stub: persistence_pb2_grpc.PersistenceServiceStub
) -> None:
    first = xds_mesh.replica()
    await asyncio.to_thread(first.wait_healthy)
    await first_request_reaches(stub, xds_mesh, first, JOIN_BOUND_S)
    second = xds_mesh.replica()
    await asyncio.to_thread(second.wait_healthy)
    joined_s = await first_request_reaches(stub, xds_mesh, second, JOIN_BOUND_S)
    print(f"join: SERVING -> first request through Envoy in {joined_s * 1000:.0f} ms")
    before = xds_mesh.host_requests()
    for _ in range(20):
        await list_conversations(stub, xds_mesh)
    after = xds_mesh.host_requests()
    assert all(after[r.address] > before[r.address] for r in (first, second))


async def test_http_json_is_transcoded_to_the_replicas_the_control_plane_sent(
    xds_mesh: XdsMesh,
) -> None:
    async with httpx.AsyncClient(base_url=xds_mesh.gateway.http_url, timeout=5) as client:
        response = await client.get(
            "/v1/conversations",
            params={"pageSize": 1},
            headers={"authorization": bearer(xds_mesh.api_key)},
        )
    assert response.status_code == 200, response.text
    assert "conversations" in response.json()


async def test_a_replica_gets_no_traffic_while_not_serving_nor_once_deregistered(
    xds_mesh: XdsMesh, stub: persistence_pb2_grpc.PersistenceServiceStub
) -> None:
    # An unregistered replica, registered here by hand so its serving flag is ours to set.
    replica = xds_mesh.replica(register=False)
    await asyncio.to_thread(replica.wait_healthy)
    redis = connect_redis(xds_mesh.redis.url)
    registration = Registration(
        redis, [Replica(PERSISTENCE, "by-hand", replica.host, replica.port)], ttl_s=5
    )
    try:
        await registration.start(serving=False)
        await asyncio.sleep(0.8)  # several control-plane polls
        assert replica.address not in xds_mesh.host_requests()
        await registration.set_serving(True)
        await first_request_reaches(stub, xds_mesh, replica, JOIN_BOUND_S)
        await registration.stop()
        started = time.monotonic()
        while replica.address in xds_mesh.host_requests():
            assert time.monotonic() - started < JOIN_BOUND_S, "still routed after deregistering"
            await asyncio.sleep(0.05)
        for _ in range(10):
            await list_conversations(stub, xds_mesh)
    finally:
        await registration.stop()
        await redis.aclose()
        replica.stop(2)
        xds_mesh.replicas.remove(replica)


async def test_kill_9_of_a_replica_fails_no_idempotent_call_and_removes_it(
    xds_mesh: XdsMesh, stub: persistence_pb2_grpc.PersistenceServiceStub
) -> None:
    victim = xds_mesh.replicas[-1]
    assert len(xds_mesh.replicas) >= 2 and victim.address in xds_mesh.host_requests()
    failures: list[grpc.RpcError] = []
    calls = 0
    victim.kill()
    killed = time.monotonic()
    removed_s: float | None = None
    while time.monotonic() - killed < TTL_S + 1.5:
        try:
            await list_conversations(stub, xds_mesh)
        except grpc.RpcError as error:
            failures.append(error)
        calls += 1
        if removed_s is None and victim.address not in xds_mesh.host_requests():
            removed_s = time.monotonic() - killed
    xds_mesh.replicas.remove(victim)
    print(f"kill -9: removed from Envoy after {removed_s} s; {calls} calls, {len(failures)} failed")
    assert failures == []
    assert removed_s is not None and removed_s < TTL_S + 1.0


async def test_the_envoy_entry_point_becomes_envoy_fed_by_control_planes_named_by_dns(
    xds_mesh: XdsMesh,
) -> None:
    listen, admin = free_port(), free_port()
    control_plane = xds_mesh.control_planes[1]
    process = ManagedProcess(
        "envoy-entry",
        [
            sys.executable, "-m", "callisto.gateway.envoy",
            "--control-plane", f"localhost:{control_plane.port}",
            "--listen", f"127.0.0.1:{listen}",
            "--admin-port", str(admin),
            "--dir", str(xds_mesh.home / "entry"),
        ],
        log_path=xds_mesh.home / "entry.log",
    )  # fmt: skip
    process.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin}", timeout=2) as client:
            deadline = time.monotonic() + 20
            while True:
                process.check_alive()
                try:
                    if (await client.get("/ready")).text.strip() == "LIVE":
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, process.log_tail()
                await asyncio.sleep(0.1)
            # The process started is Envoy now (exec), routing to the registered replicas.
            assert (await client.get("/server_info")).json()["state"] == "LIVE"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{listen}") as channel:
            await list_conversations(persistence_pb2_grpc.PersistenceServiceStub(channel), xds_mesh)
    finally:
        process.stop(5)


async def test_envoy_moves_to_the_other_control_plane_and_serves_on_without_any(
    xds_mesh: XdsMesh, stub: persistence_pb2_grpc.PersistenceServiceStub
) -> None:
    first, second = xds_mesh.control_planes
    first.kill()
    # The surviving control plane now feeds Envoy: a new replica still joins in time.
    newcomer = xds_mesh.replica()
    await asyncio.to_thread(newcomer.wait_healthy)
    await first_request_reaches(stub, xds_mesh, newcomer, JOIN_BOUND_S)
    second.kill()
    await asyncio.sleep(1.0)
    # No control plane left: Envoy keeps its last configuration.
    for _ in range(20):
        await list_conversations(stub, xds_mesh)
    assert newcomer.address in xds_mesh.host_requests()
