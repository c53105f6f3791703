"""Scale-out with real processes: two replicas each of persistence, generation and
orchestration register themselves in their own Redis; the control plane feeds Envoy their
endpoints. Under a load loop a `kill -9` of one replica of each costs no failed unary call
(Envoy retries what the contracts mark idempotent, on another host); a run whose replica dies
is taken over by the other and its stream resumed by the SDK with no gap or duplicate; a replica
started mid-load receives traffic within 2 s, and one that drains leaves without a failed call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from orchestration_test_support import generation_env, orchestration_env
from redis import Redis
from runs_test_support import assert_consecutive, create_agent, kinds, slow, start

import callisto
from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2, generation_pb2_grpc
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.api.persistence.v1 import persistence_pb2, persistence_pb2_grpc
from callisto.client import auth_metadata
from callisto.mesh.processes import ServiceProcess
from callisto.mesh.scaled import ScaledMesh
from callisto.mesh.triton import TritonServer
from callisto.services.common.auth import create_api_key
from callisto.services.orchestration.leases import RunKey

pytestmark = pytest.mark.asyncio(loop_scope="session")

SERVICES = ("persistence", "generation", "orchestration")
TENANT = "scale-out"


@pytest.fixture(scope="module")
def scaled(
    orch_triton: TritonServer,
    orch_retrieval: ServiceProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ScaledMesh]:
    mesh = ScaledMesh.create(tmp_path_factory.mktemp("scale-out"), tuple(SERVICES))
    base = {
        "CALLISTO_AUTH_CACHE_SECONDS": "0",
        "CALLISTO_HEALTH_INTERVAL_SECONDS": "0.2",
        "CALLISTO_SHUTDOWN_GRACE_SECONDS": "2",
        "CALLISTO_REGISTRY_TTL_SECONDS": "1.5",
        "CALLISTO_DRAIN_SECONDS": "1",
    }
    mesh.envs = {
        "persistence": {**base, "CALLISTO_REFLECT_MESH": "true"},
        "generation": generation_env(base, orch_triton.grpc_url),
    }
    try:
        mesh.start()
        for name in ("persistence", "generation"):
            mesh.add(name)
            mesh.add(name)
        mesh.envs["orchestration"] = {
            **orchestration_env(
                {**base, "CALLISTO_REDIS_URL": mesh.redis.url},
                mesh.targets("persistence"),
                mesh.targets("generation"),
                orch_retrieval.address,
            ),
            # A dead owner's run is taken over within a few seconds.
            "CALLISTO_ORCHESTRATION_RUN_LEASE_S": "1.5",
            "CALLISTO_ORCHESTRATION_RUN_TAKEOVER_INTERVAL_S": "0.5",
        }
        mesh.add("orchestration")
        mesh.add("orchestration")
        mesh.start_gateway()
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture(scope="module")
def scale_key(scaled: ScaledMesh) -> str:
    return asyncio.run(create_api_key(scaled.redis.url, TENANT, label="scale-out"))


async def _wait_until_routed(mesh: ScaledMesh, replicas: list[ServiceProcess]) -> None:
    """Until Envoy knows every one of `replicas` (the control plane sent them)."""
    deadline = time.monotonic() + 15
    wanted = {replica.address for replica in replicas}
    while not wanted <= set(await asyncio.to_thread(mesh.requests_per_host)):
        assert time.monotonic() < deadline, "Envoy never received the replicas' endpoints"
        await asyncio.sleep(0.1)


@dataclass
class Load:
    """Unary calls through Envoy, from raw stubs (no SDK retries: what succeeds is Envoy's)."""

    calls: int = 0
    failures: list[str] = field(default_factory=list)


async def _load_loop(
    mesh: ScaledMesh,
    key: str,
    conversation: str,
    stop: asyncio.Event,
    load: Load,
    workers: int = 6,
) -> None:
    async with grpc.aio.insecure_channel(mesh.gateway.grpc_target) as channel:
        persistence = persistence_pb2_grpc.PersistenceServiceStub(channel)
        generation = generation_pb2_grpc.GenerationServiceStub(channel)
        orchestration = pb_grpc.OrchestrationServiceStub(channel)
        metadata = auth_metadata(key)
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: persistence.GetConversation(
                persistence_pb2.GetConversationRequest(name=conversation),
                metadata=metadata,
                timeout=10,
            ),
            lambda: persistence.ListMessages(
                persistence_pb2.ListMessagesRequest(parent=conversation),
                metadata=metadata,
                timeout=10,
            ),
            lambda: generation.ListModels(
                generation_pb2.ListModelsRequest(), metadata=metadata, timeout=10
            ),
            lambda: orchestration.ListAgents(
                pb.ListAgentsRequest(page_size=5), metadata=metadata, timeout=10
            ),
        ]

        async def worker(offset: int) -> None:
            turn = offset
            while not stop.is_set():
                call = calls[turn % len(calls)]
                turn += 1
                try:
                    await call()
                except grpc.aio.AioRpcError as error:
                    load.failures.append(f"{error.code().name}: {error.details()}")
                load.calls += 1

        await asyncio.gather(*(worker(i) for i in range(workers)))


async def _conversation(mesh: ScaledMesh, key: str) -> str:
    async with await callisto.Client.connect(mesh.gateway.grpc_target, api_key=key) as client:
        conversation = await client.persistence.create_conversation(title="scale-out")
        await client.persistence.create_message(
            conversation.name, persistence_pb2.Message(role=common_pb2.ROLE_USER, text="hello")
        )
        return str(conversation.name)


async def test_a_killed_replica_of_each_service_costs_no_failed_unary_call(
    scaled: ScaledMesh, scale_key: str
) -> None:
    every = [replica for replicas in scaled.replicas.values() for replica in replicas]
    await _wait_until_routed(scaled, every)
    conversation = await _conversation(scaled, scale_key)
    stop, load = asyncio.Event(), Load()
    loop = asyncio.create_task(_load_loop(scaled, scale_key, conversation, stop, load))
    await asyncio.sleep(1.5)
    before = await asyncio.to_thread(scaled.requests_per_host)
    victims = [scaled.replicas[name][0] for name in SERVICES]
    for victim in victims:
        victim.kill()
    await asyncio.sleep(4)  # past the registrations' TTL: the control plane dropped them
    stop.set()
    await loop
    assert load.failures == [], load.failures[:5]
    assert load.calls > 100
    # Both replicas of every service took calls before the kill.
    assert all(before.get(replica.address, 0) > 0 for replica in every), before
    for victim in victims:
        victim.start()
        victim.wait_healthy(60)
    await _wait_until_routed(scaled, every)


async def test_a_run_whose_replica_dies_is_finished_by_the_other_and_its_stream_resumed(
    scaled: ScaledMesh, scale_key: str
) -> None:
    redis = Redis.from_url(scaled.redis.url)
    async with await callisto.Client.connect(
        scaled.gateway.grpc_target, api_key=scale_key
    ) as client:
        agent = await create_agent(client, "scale-out")
        stream = client.orchestration.run(start(agent, "a long answer, please"), metadata=slow(60))
        events: list[pb.ConversationEvent] = []
        owner: ServiceProcess | None = None
        async for event in stream:
            events.append(event)
            if owner is None and event.WhichOneof("kind") == "token":
                # The replica holding the run's lease is the one to kill.
                holder = redis.get(RunKey(TENANT, stream.conversation).lease())
                assert holder is not None
                pid = int(holder.decode().split(":")[1])
                [owner] = [r for r in scaled.replicas["orchestration"] if r.pid == pid]
                owner.kill()
        redis.close()
        assert owner is not None
        assert stream.resumes >= 1
        assert kinds(events)[-1] == "done", kinds(events)
        assert_consecutive(events, events[0].event_id - 1)
        # What the SDK showed is exactly the stored log.
        replayed = await client.orchestration.stream(stream.conversation).complete()
        assert replayed.text == stream.text
    owner.start()
    owner.wait_healthy(60)


async def test_a_replica_started_mid_load_takes_traffic_within_two_seconds_and_drains_cleanly(
    scaled: ScaledMesh, scale_key: str
) -> None:
    conversation = await _conversation(scaled, scale_key)
    stop, load = asyncio.Event(), Load()
    loop = asyncio.create_task(_load_loop(scaled, scale_key, conversation, stop, load, workers=4))
    await asyncio.sleep(0.5)
    third = await asyncio.to_thread(scaled.add, "persistence")
    serving_at = time.monotonic()
    first_request_s = None
    while time.monotonic() - serving_at < 5:
        if (await asyncio.to_thread(scaled.requests_per_host)).get(third.address, 0) > 0:
            first_request_s = time.monotonic() - serving_at
            break
        await asyncio.sleep(0.05)
    # A graceful stop deregisters first: Envoy stops sending before the process goes.
    await asyncio.to_thread(scaled.remove, third)
    await asyncio.sleep(1)
    stop.set()
    await loop
    assert first_request_s is not None and first_request_s < 2.0, first_request_s
    assert load.failures == [], load.failures[:5]
