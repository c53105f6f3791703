"""The xDS control plane: the ADS protocol against its servicer on a real grpc.aio server, its
endpoint sources, and two real control-plane processes over one Redis registry."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
from envoy_data_plane.envoy.config.endpoint.v3 import ClusterLoadAssignment
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from envoy_data_plane.google.rpc import Status

from callisto.gateway.clusters import ClusterPolicy, EndpointAddress, cluster_name
from callisto.gateway.control_plane.ads import ADS_METHOD, ADS_SERVICE, AggregatedDiscoveryService
from callisto.gateway.control_plane.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    Resources,
    SnapshotStore,
    build_snapshot,
)
from callisto.gateway.control_plane.sources import DnsSource
from callisto.mesh.gateway import ControlPlaneProcess
from callisto.mesh.processes import RedisServer, free_port
from callisto.services.common import catalog
from callisto.services.common.redis_client import connect_redis
from callisto.services.common.registry import Registration, RegistryReader, Replica

PERSISTENCE = "callisto.persistence.v1.PersistenceService"
PERSISTENCE_CLUSTER = cluster_name(PERSISTENCE)
POLICY = ClusterPolicy()


class AdsClient:
    """One ADS stream, spoken the way Envoy speaks it."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        method = channel.stream_stream(
            f"/{ADS_SERVICE}/{ADS_METHOD}",
            request_serializer=bytes,
            response_deserializer=DiscoveryResponse.parse,
        )
        self.requests: asyncio.Queue[DiscoveryRequest | None] = asyncio.Queue()
        self.responses: asyncio.Queue[DiscoveryResponse] = asyncio.Queue()
        self.call = method(self._requests())
        # Read apart from the waits: a timed-out read would cancel the whole call.
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            assert isinstance(response, DiscoveryResponse), response
            self.responses.put_nowait(response)

    async def _requests(self) -> AsyncIterator[DiscoveryRequest]:
        while (request := await self.requests.get()) is not None:
            yield request

    def send(self, type_url: str, *, names: tuple[str, ...] = (), version: str = "",
             nonce: str = "", error: str = "") -> None:  # fmt: skip
        self.requests.put_nowait(
            DiscoveryRequest(
                type_url=type_url,
                resource_names=list(names),
                version_info=version,
                response_nonce=nonce,
                error_detail=Status(code=3, message=error) if error else None,
            )
        )

    async def receive(self, within: float = 2.0) -> DiscoveryResponse:
        async with asyncio.timeout(within):
            return await self.responses.get()

    async def nothing_within(self, seconds: float) -> bool:
        try:
            await self.receive(seconds)
        except TimeoutError:
            return True
        return False

    def ack(self, response: DiscoveryResponse, names: tuple[str, ...] = ()) -> None:
        self.send(
            response.type_url, names=names, version=response.version_info, nonce=response.nonce
        )

    def close(self) -> None:
        self.requests.put_nowait(None)
        self.call.cancel()


def snapshot_with(*ports: int) -> dict[str, Resources]:
    return build_snapshot(POLICY, {PERSISTENCE: [EndpointAddress("127.0.0.1", p) for p in ports]})


@pytest_asyncio.fixture(loop_scope="session")
async def ads() -> AsyncIterator[tuple[SnapshotStore, grpc.aio.Channel]]:
    store = SnapshotStore()
    store.update(build_snapshot(POLICY, {PERSISTENCE: [EndpointAddress("127.0.0.1", 7001)]}))
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([AggregatedDiscoveryService(store, "test").handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield store, channel
    await server.stop(0)


async def subscribed(channel: grpc.aio.Channel) -> tuple[AdsClient, DiscoveryResponse]:
    """A stream that received and ACKed the clusters and the persistence endpoints."""
    client = AdsClient(channel)
    client.send(CLUSTER_TYPE)
    clusters = await client.receive()
    client.ack(clusters)
    client.send(ENDPOINT_TYPE, names=(PERSISTENCE_CLUSTER,))
    endpoints = await client.receive()
    client.ack(endpoints, (PERSISTENCE_CLUSTER,))
    return client, endpoints


def endpoint_ports(response: DiscoveryResponse) -> list[int]:
    ports = []
    for resource in response.resources:
        assignment = resource.unpack()
        assert isinstance(assignment, ClusterLoadAssignment)
        for locality in assignment.endpoints:
            for member in locality.lb_endpoints:
                assert member.endpoint is not None and member.endpoint.address is not None
                socket_address = member.endpoint.address.socket_address
                assert socket_address is not None
                ports.append(socket_address.port_value)
    return ports


async def test_clusters_cover_every_service_as_eds_over_ads_then_endpoints_follow(
    ads: tuple[SnapshotStore, grpc.aio.Channel],
) -> None:
    _, channel = ads
    client = AdsClient(channel)
    client.send(CLUSTER_TYPE)
    clusters = await client.receive()
    assert clusters.type_url == CLUSTER_TYPE and clusters.version_info and clusters.nonce
    unpacked = [resource.unpack() for resource in clusters.resources]
    assert all(isinstance(cluster, Cluster) for cluster in unpacked)
    assert sorted(c.name for c in unpacked if isinstance(c, Cluster)) == sorted(
        cluster_name(s) for s in catalog.service_names()
    )
    assert all(c.type == ClusterDiscoveryType.EDS for c in unpacked if isinstance(c, Cluster))
    client.ack(clusters)
    empty = cluster_name("callisto.generation.v1.GenerationService")
    client.send(ENDPOINT_TYPE, names=(PERSISTENCE_CLUSTER, empty))
    endpoints = await client.receive()
    # Every requested cluster gets its assignment, an empty one too (else it stays warming).
    assert len(endpoints.resources) == 2
    assert endpoint_ports(endpoints) == [7001]
    client.close()


async def test_an_ack_gets_no_answer_and_a_change_is_pushed_as_a_new_version(
    ads: tuple[SnapshotStore, grpc.aio.Channel],
) -> None:
    store, channel = ads
    client, first = await subscribed(channel)
    assert await client.nothing_within(0.3)
    assert store.update(snapshot_with(7001)) is False  # same resources: nothing to push
    assert await client.nothing_within(0.3)
    store.update(snapshot_with(7001, 7002))
    pushed = await client.receive()
    assert pushed.type_url == ENDPOINT_TYPE  # the clusters did not change
    assert pushed.version_info != first.version_info and pushed.nonce != first.nonce
    assert sorted(endpoint_ports(pushed)) == [7001, 7002]
    client.close()


async def test_a_nack_is_logged_and_the_rejected_version_is_not_sent_again(
    ads: tuple[SnapshotStore, grpc.aio.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    store, channel = ads
    caplog.set_level(logging.WARNING, logger="callisto.gateway.control_plane.ads")
    client, good = await subscribed(channel)
    store.update(snapshot_with(7003))
    bad = await client.receive()
    client.send(
        ENDPOINT_TYPE,
        names=(PERSISTENCE_CLUSTER,),
        version=good.version_info,  # what Envoy keeps
        nonce=bad.nonce,
        error="endpoint rejected",
    )
    assert await client.nothing_within(0.5)
    [record] = [r for r in caplog.records if "rejected" in r.getMessage()]
    fields = getattr(record, "fields", {})
    assert fields["rejected_version"] == bad.version_info
    assert fields["kept_version"] == good.version_info
    assert fields["error"] == "endpoint rejected"
    # The next change is a new version, and it is sent.
    store.update(snapshot_with(7004))
    assert endpoint_ports(await client.receive()) == [7004]
    client.close()


async def test_a_request_answering_an_older_nonce_is_ignored(
    ads: tuple[SnapshotStore, grpc.aio.Channel],
) -> None:
    store, channel = ads
    client, first = await subscribed(channel)
    store.update(snapshot_with(7005))
    await client.receive()
    client.send(
        ENDPOINT_TYPE, names=(PERSISTENCE_CLUSTER,), version=first.version_info, nonce=first.nonce
    )
    assert await client.nothing_within(0.3)
    client.close()


async def test_a_changed_subscription_is_answered_even_under_the_current_nonce(
    ads: tuple[SnapshotStore, grpc.aio.Channel],
) -> None:
    _, channel = ads
    client, endpoints = await subscribed(channel)
    other = cluster_name("callisto.generation.v1.GenerationService")
    client.send(
        ENDPOINT_TYPE,
        names=(PERSISTENCE_CLUSTER, other),
        version=endpoints.version_info,
        nonce=endpoints.nonce,
    )
    answer = await client.receive()
    assert len(answer.resources) == 2
    client.close()


def test_load_assignment_groups_by_zone_with_each_weight() -> None:
    from callisto.gateway.clusters import load_assignment

    assignment = load_assignment(
        PERSISTENCE,
        [EndpointAddress("10.0.0.2", 1, "b", 3), EndpointAddress("10.0.0.1", 1, "a", 1)],
    )
    zones = {
        locality.locality.zone: [m.load_balancing_weight for m in locality.lb_endpoints]
        for locality in assignment.endpoints
        if locality.locality is not None
    }
    assert zones == {"a": [1], "b": [3]}


async def test_dns_source_lists_every_address_and_none_for_an_unknown_name() -> None:
    source = DnsSource(
        [
            (PERSISTENCE, "localhost", 50051),
            ("callisto.generation.v1.GenerationService", "no-such-host.invalid", 50052),
        ],
        zone="z1",
    )
    found = await source.endpoints()
    assert EndpointAddress("127.0.0.1", 50051, "z1", 1) in found[PERSISTENCE]
    assert found["callisto.generation.v1.GenerationService"] == []


# Two real control planes over one registry.


@pytest.fixture(scope="module")
def registry_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("control-plane-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def control_planes(
    registry_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ControlPlaneProcess]]:
    logs = tmp_path_factory.mktemp("control-planes")
    started = [
        ControlPlaneProcess(
            free_port(),
            redis_url=registry_redis.url,
            log_path=Path(logs) / f"control-plane-{i}.log",
            env={"CALLISTO_CONTROL_PLANE_POLL_SECONDS": "0.2"},
        )
        for i in range(2)
    ]
    for process in started:
        process.start()
    try:
        for process in started:
            process.wait_healthy()
        yield started
    finally:
        for process in started:
            process.stop()


async def test_two_control_planes_send_the_same_serving_endpoints_at_the_same_version(
    registry_redis: RedisServer, control_planes: list[ControlPlaneProcess]
) -> None:
    redis = connect_redis(registry_redis.url)
    # A name, not an IP: the control plane resolves it (EDS takes IPs only).
    serving = Registration(
        redis, [Replica(PERSISTENCE, "serving-1", "localhost", 7101, "z1", 2)], ttl_s=5
    )
    not_serving = Registration(redis, [Replica(PERSISTENCE, "starting-1", "127.0.0.1", 7102)], 5)
    await serving.start(serving=True)
    await not_serving.start(serving=False)
    try:
        answers = []
        for process in control_planes:
            async with grpc.aio.insecure_channel(process.address) as channel:
                for _ in range(20):
                    client, endpoints = await subscribed(channel)
                    client.close()
                    if endpoint_ports(endpoints):
                        break
                    await asyncio.sleep(0.1)
                answers.append(endpoints)
        assert [endpoint_ports(a) for a in answers] == [[7101], [7101]]
        assignment = answers[0].resources[0].unpack()
        assert isinstance(assignment, ClusterLoadAssignment)
        [locality] = assignment.endpoints
        assert locality.locality is not None and locality.locality.zone == "z1"
        [member] = locality.lb_endpoints
        assert member.load_balancing_weight == 2
        assert member.endpoint is not None and member.endpoint.address is not None
        assert member.endpoint.address.socket_address is not None
        assert member.endpoint.address.socket_address.address == "127.0.0.1"
        assert answers[0].version_info == answers[1].version_info
        assert bytes(answers[0].resources[0]) == bytes(answers[1].resources[0])
        # Neither control plane registered itself.
        assert await RegistryReader(redis).services() == [PERSISTENCE]
    finally:
        await serving.stop()
        await not_serving.stop()
        await redis.aclose()


async def test_undecodable_and_oversized_requests_end_only_their_own_stream(
    control_planes: list[ControlPlaneProcess],
) -> None:
    process = control_planes[0]
    method = f"/{ADS_SERVICE}/{ADS_METHOD}"
    async with grpc.aio.insecure_channel(
        process.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        raw = channel.stream_stream(method)  # bytes in, bytes out: no (de)serialization
        for junk in (b"\xff\xff\xff\xff\x0f", b"\x0a\xff\xff\xff\xff\x0f", b"\x00" * (8 << 20)):
            call = raw(iter([junk]), timeout=10)
            try:
                # Nothing a stranger sends is answered with configuration.
                assert [answer async for answer in call] == []
            except grpc.aio.AioRpcError as refused:
                assert refused.code() in (
                    grpc.StatusCode.INTERNAL,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                ), refused
        # The process still serves: health, and a well-formed subscription.
        assert process.serving_now()
        client, endpoints = await subscribed(channel)
        client.close()
        assert endpoints.type_url.endswith("ClusterLoadAssignment")
