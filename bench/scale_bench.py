"""Scale-out benchmark: 1 against 2 replicas of each service behind Envoy fed by the control
plane, and how soon a new replica takes traffic.

Same run, same machine, same load for both sizes (the 1-replica figures are the baseline):

  (a) persistence reads: GetConversation through Envoy, `--callers` concurrent, `--seconds` long;
  (b) persistence writes: CreateMessage (each with a request id) the same way;
  (c) generation: Generate streams of toy_llm (`--tokens` each), `--callers` at a time;
  (d) orchestration: assistant runs of a toolless agent on toy_llm, `--runs-at-once` at a time;
  (e) joining: under (a)'s load, a new persistence replica's start -> SERVING -> first request
      through Envoy, `--joins` times.

On 2 cores every replica, Envoy, Redis, Triton and this load generator share the same two CPUs,
so a second replica mostly adds contention: expect ratios near 1 here. The figures say what
the routing costs and that the replicas share the load; the capacity section of the README says
how they extrapolate to machines with cores to spare.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path

import grpc

import callisto
from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2
from callisto.api.persistence.v1 import persistence_pb2, persistence_pb2_grpc
from callisto.client import auth_metadata
from callisto.mesh.processes import ServiceProcess
from callisto.mesh.scaled import ScaledMesh
from callisto.mesh.triton import TritonServer, default_model_repository, ensure_triton_environment
from callisto.services.common.auth import create_api_key

SERVICES = ("persistence", "generation", "orchestration")
TENANT = "scale-bench"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def _envs(mesh: ScaledMesh, triton: TritonServer) -> None:
    quiet = {
        "CALLISTO_LOG_LEVEL": "WARNING",
        "CALLISTO_AUTH_CACHE_SECONDS": "60",
        "CALLISTO_HEALTH_INTERVAL_SECONDS": "0.2",
        "CALLISTO_REGISTRY_TTL_SECONDS": "1.5",
    }
    mesh.envs = {
        "persistence": {**quiet, "CALLISTO_REFLECT_MESH": "true"},
        "generation": {
            **quiet,
            "CALLISTO_TRITON_URL": triton.grpc_url,
            "CALLISTO_GENERATION_DEFAULT_MODEL": "models/toy_llm",
            "CALLISTO_GENERATION_MAX_CONCURRENT": "1024",
        },
    }


def start_mesh(home: Path, triton: TritonServer, replicas: int, stack: ExitStack) -> ScaledMesh:
    mesh = ScaledMesh.create(home, SERVICES, rate_limit_tokens=10_000_000)
    stack.callback(mesh.stop)
    _envs(mesh, triton)
    mesh.start()
    for name in ("persistence", "generation"):
        for _ in range(replicas):
            mesh.add(name)
    mesh.envs["orchestration"] = {
        **mesh.envs["persistence"],
        "CALLISTO_REFLECT_MESH": "false",
        "CALLISTO_PERSISTENCE_TARGET": mesh.targets("persistence"),
        "CALLISTO_GENERATION_TARGET": mesh.targets("generation"),
        # Not called by a toolless agent; a target is required all the same.
        "CALLISTO_RETRIEVAL_TARGET": mesh.targets("persistence"),
        "CALLISTO_ORCHESTRATION_DEFAULT_MODEL": "models/toy_llm",
    }
    for _ in range(replicas):
        mesh.add("orchestration")
    mesh.start_gateway()
    return mesh


async def _wait_routed(mesh: ScaledMesh) -> None:
    wanted = {r.address for replicas in mesh.replicas.values() for r in replicas}
    deadline = time.monotonic() + 30
    while not wanted <= set(await asyncio.to_thread(mesh.requests_per_host)):
        if time.monotonic() > deadline:
            raise RuntimeError("Envoy never received every replica's endpoint")
        await asyncio.sleep(0.1)


async def _first_request(mesh: ScaledMesh, replica: ServiceProcess) -> None:
    """Returns once Envoy has sent `replica` a request (its per-host counter moved)."""
    while True:
        counts = await asyncio.to_thread(mesh.requests_per_host)
        if counts.get(replica.address, 0) > 0:
            return
        await asyncio.sleep(0.01)


async def closed_loop(
    call: Callable[[int], Awaitable[int]], callers: int, seconds: float
) -> tuple[float, list[float]]:
    """(units per second, per-call latencies in ms) of `callers` calling back to back."""
    latencies: list[float] = []
    units = 0
    stop_at = time.perf_counter() + seconds

    async def caller(index: int) -> None:
        nonlocal units
        turn = index * 1_000_000
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            done = await call(turn)  # not `units += await …`: that reads `units` before
            units += done  # the await and loses every other caller's count meanwhile
            latencies.append((time.perf_counter() - started) * 1000)
            turn += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    return units / (time.perf_counter() - started), latencies


async def measure(mesh: ScaledMesh, key: str, args: argparse.Namespace) -> dict[str, str]:
    await _wait_routed(mesh)
    metadata = auth_metadata(key)
    results: dict[str, str] = {}
    async with await callisto.Client.connect(mesh.gateway.grpc_target, api_key=key) as client:
        conversation = (await client.persistence.create_conversation(title="bench")).name
        agent = await client.orchestration.create_agent(
            agent_id=f"bench-{uuid.uuid4().hex[:6]}",
            display_name="Bench",
            system_prompt="Be brief.",
        )
        async with grpc.aio.insecure_channel(mesh.gateway.grpc_target) as channel:
            persistence = persistence_pb2_grpc.PersistenceServiceStub(channel)

            async def read(_: int) -> int:
                await persistence.GetConversation(
                    persistence_pb2.GetConversationRequest(name=conversation),
                    metadata=metadata,
                    timeout=10,
                )
                return 1

            async def write(turn: int) -> int:
                await persistence.CreateMessage(
                    persistence_pb2.CreateMessageRequest(
                        parent=conversation,
                        message=persistence_pb2.Message(role=common_pb2.ROLE_USER, text=f"m{turn}"),
                        request_id=uuid.uuid4().hex,
                    ),
                    metadata=metadata,
                    timeout=10,
                )
                return 1

            async def stream(turn: int) -> int:
                tokens = 0
                async for item in client.generation.generate(
                    f"words for stream {turn}", model="models/toy_llm", max_tokens=args.tokens
                ):
                    if isinstance(item, generation_pb2.TokenDelta):
                        tokens += item.token_count
                return tokens

            async def run(turn: int) -> int:
                stream = client.orchestration.run(
                    callisto.orchestration.assistant_start(agent.name, f"question {turn}")
                )
                await stream.complete()
                return 1

            for label, call, callers in (
                ("reads", read, args.callers),
                ("writes", write, args.callers),
                ("tokens", stream, args.callers),
                ("runs", run, args.runs_at_once),
            ):
                await closed_loop(call, callers, 1.0)  # warm every connection
                rate, latencies = await closed_loop(call, callers, args.seconds)
                results[label] = (
                    f"{rate:,.0f}/s (p50 {statistics.median(latencies):.1f} / "
                    f"p99 {percentile(latencies, 99):.1f} ms per call)"
                )
                results[f"{label}_rate"] = f"{rate}"
    return results


async def joins(mesh: ScaledMesh, key: str, count: int) -> tuple[list[float], list[float]]:
    """(start -> SERVING, SERVING -> first request via Envoy) in ms, per joining replica."""
    metadata = auth_metadata(key)
    to_serving: list[float] = []
    to_traffic: list[float] = []
    async with await callisto.Client.connect(mesh.gateway.grpc_target, api_key=key) as client:
        conversation = (await client.persistence.create_conversation(title="joins")).name
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(mesh.gateway.grpc_target) as channel:
        persistence = persistence_pb2_grpc.PersistenceServiceStub(channel)

        async def load() -> None:
            while not stop.is_set():
                await persistence.GetConversation(
                    persistence_pb2.GetConversationRequest(name=conversation),
                    metadata=metadata,
                    timeout=10,
                )

        loaders = [asyncio.create_task(load()) for _ in range(8)]
        for _ in range(count):
            started = time.perf_counter()
            replica: ServiceProcess = await asyncio.to_thread(mesh.add, "persistence")
            serving = time.perf_counter()
            await _first_request(mesh, replica)
            to_serving.append((serving - started) * 1000)
            to_traffic.append((time.perf_counter() - serving) * 1000)
            await asyncio.to_thread(mesh.remove, replica)
        stop.set()
        await asyncio.gather(*loaders)
    return to_serving, to_traffic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--runs-at-once", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--joins", type=int, default=5)
    args = parser.parse_args()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        home = Path(tmp)
        environment = ensure_triton_environment(with_llm=False, with_embedder=False)
        triton = TritonServer(environment, log_path=home / "tritonserver.log")
        triton.start(default_model_repository(), ["toy_llm"], {"OMP_WAIT_POLICY": "PASSIVE"})
        stack.callback(triton.stop)
        figures: dict[int, dict[str, str]] = {}
        join_figures: tuple[list[float], list[float]] = ([], [])
        for replicas in (1, 2):
            with ExitStack() as mesh_stack:
                mesh = start_mesh(home / f"mesh-{replicas}", triton, replicas, mesh_stack)
                key = asyncio.run(create_api_key(mesh.redis.url, TENANT, label="scale bench"))
                figures[replicas] = asyncio.run(measure(mesh, key, args))
                if replicas == 2:
                    join_figures = asyncio.run(joins(mesh, key, args.joins))
    print(
        f"\nScale-out: 1 vs 2 replicas of persistence, generation and orchestration behind Envoy "
        f"(xDS), {args.callers} callers, {args.seconds:g} s each, same run\n"
    )
    print("| load | 1 replica each (baseline) | 2 replicas each | ratio |")
    print("|---|---|---|---|")
    names = {
        "reads": "(a) GetConversation",
        "writes": "(b) CreateMessage",
        "tokens": f"(c) toy_llm tokens, Generate of {args.tokens}",
        "runs": f"(d) assistant runs, {args.runs_at_once} at once",
    }
    for label, name in names.items():
        one, two = figures[1], figures[2]
        ratio = float(two[f"{label}_rate"]) / float(one[f"{label}_rate"])
        print(f"| {name} | {one[label]} | {two[label]} | {ratio:.2f}x |")
    to_serving, to_traffic = join_figures
    print(
        f"\n(e) a joining persistence replica, {len(to_serving)} joins under load: start -> "
        f"SERVING p50 {statistics.median(to_serving):.0f} ms (max {max(to_serving):.0f}); "
        f"SERVING -> first request through Envoy p50 {statistics.median(to_traffic):.0f} ms "
        f"(max {max(to_traffic):.0f}; target < 2000)"
    )


if __name__ == "__main__":
    main()
