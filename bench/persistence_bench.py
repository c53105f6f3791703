"""Latency the Envoy gateway adds in front of the persistence service.

Starts its own Redis, persistence service and Envoy on free ports, then measures in one run,
interleaving the paths round by round so machine noise hits them alike:

- unary: `GetConversation` direct over gRPC (the baseline), through Envoy over gRPC, and
  through Envoy over HTTP/JSON;
- streaming: the delay from appending an event to receiving it on a live `SubscribeEvents`
  stream, direct and through Envoy (gRPC, and HTTP/JSON as NDJSON).

The gRPC paths go through the SDK (`callisto.Client`), the same on both sides of the comparison.
Prints p50/p99 per path, the difference to the baseline and the ratio. Target: Envoy adds at
most 0.3 ms at p50. Run: `.venv/bin/python bench/persistence_bench.py [--calls 2000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx

import callisto
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.launcher import PERSISTENCE_SERVICE
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.persistence import EventSubscription
from callisto.services.common.auth import create_api_key

TARGET_ADDED_P50_MS = 0.3


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def timed(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def stream_delays(
    append: Callable[[int], Awaitable[None]],
    receive: Callable[[], Awaitable[int]],
    count: int,
) -> list[float]:
    """Appends events one at a time and times each until the subscription delivers it."""
    delays = []
    for index in range(count):
        started = time.perf_counter()
        await append(index)
        await receive()
        delays.append((time.perf_counter() - started) * 1000)
    return delays


async def measure(args: argparse.Namespace, gateway: EnvoyGateway, direct: str, key: str) -> None:
    headers = {"authorization": f"Bearer {key}"}
    direct_client = await callisto.Client.connect(direct, api_key=key)
    envoy_client = await callisto.Client.connect(gateway.grpc_target, api_key=key)
    http = httpx.AsyncClient(base_url=gateway.http_url, headers=headers, timeout=10)

    created = await direct_client.persistence.create_conversation(title="bench")
    name = created.name

    async def direct_get() -> object:
        return await direct_client.persistence.get_conversation(name)

    async def envoy_get() -> object:
        return await envoy_client.persistence.get_conversation(name)

    async def http_get() -> object:
        response = await http.get(f"/v1/{name}")
        response.raise_for_status()
        return response

    unary: dict[str, list[float]] = {"direct": [], "envoy_grpc": [], "envoy_http": []}
    paths = {"direct": direct_get, "envoy_grpc": envoy_get, "envoy_http": http_get}
    for call in paths.values():
        await timed(call, 200)  # warm connections and caches
    rounds = 10
    for _ in range(rounds):
        for label, call in paths.items():
            unary[label] += await timed(call, args.calls // rounds)

    # Streaming: one subscription per path on its own conversation, the writer always direct.
    streams: dict[str, list[float]] = {}
    for label in ("direct", "envoy_grpc", "envoy_http"):
        conversation = (await direct_client.persistence.create_conversation(title=label)).name

        async def append(index: int, conversation: str = conversation) -> None:
            await direct_client.persistence.append_event(conversation, "bench.tick", {"i": index})

        if label == "envoy_http":
            # Envoy sends the response headers with the first message, so the first event is
            # appended while the request is still waiting for them.
            response_cm = http.stream("GET", f"/v1/{conversation}/events:subscribe")
            opening = asyncio.create_task(response_cm.__aenter__())
            await asyncio.sleep(0.2)
            await append(-1)
            lines = (await opening).aiter_lines()

            async def receive_http(lines: AsyncIterator[str] = lines) -> int:
                while True:
                    line = (await anext(lines)).strip()
                    if line and "event" in (message := json.loads(line)):
                        return int(message["sequence"])

            await receive_http()
            streams[label] = await stream_delays(append, receive_http, args.events)
            await response_cm.__aexit__(None, None, None)
        else:
            client = direct_client if label == "direct" else envoy_client
            subscription = client.persistence.subscribe_events(conversation)

            async def receive_grpc(
                subscription: EventSubscription = subscription,
            ) -> int:
                return int((await anext(subscription)).sequence)

            await append(-1)
            await receive_grpc()
            streams[label] = await stream_delays(append, receive_grpc, args.events)
            await subscription.aclose()

    await http.aclose()
    await direct_client.close()
    await envoy_client.close()
    report("unary GetConversation", unary)
    report("event append → delivered on SubscribeEvents", streams)


def report(title: str, results: dict[str, list[float]]) -> None:
    base = results["direct"]
    base_p50, base_p99 = percentile(base, 0.5), percentile(base, 0.99)
    print(f"\n{title} (ms; baseline = direct gRPC to the service, same run)")
    print(
        f"{'path':<12}{'n':>6}{'p50':>9}{'p99':>9}{'+p50':>9}{'+p99':>9}{'ratio p50':>11}  target"
    )
    for label, samples in results.items():
        p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
        added = p50 - base_p50
        target = "" if label == "direct" else (
            f"+{TARGET_ADDED_P50_MS} ms p50: {'met' if added <= TARGET_ADDED_P50_MS else 'MISSED'}"
        )  # fmt: skip
        print(
            f"{label:<12}{len(samples):>6}{p50:>9.3f}{p99:>9.3f}{added:>+9.3f}"
            f"{p99 - base_p99:>+9.3f}{p50 / base_p50:>11.2f}  {target}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="unary calls per path")
    parser.add_argument("--events", type=int, default=500, help="streamed events per path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        redis = RedisServer(root / "redis")
        redis.start()
        service = ServiceProcess(
            "persistence",
            free_port(),
            env={"CALLISTO_REDIS_URL": redis.url, "CALLISTO_LOG_LEVEL": "WARNING"},
            log_path=root / "persistence.log",
        )
        gateway = EnvoyGateway.on_free_ports(
            {PERSISTENCE_SERVICE: ("127.0.0.1", service.port)},
            root / "gateway",
            rate_limit_tokens=1_000_000,
        )
        try:
            service.start()
            service.wait_healthy()
            gateway.start()
            key = asyncio.run(create_api_key(redis.url, "bench", label="persistence bench"))
            asyncio.run(measure(args, gateway, service.address, key))
        finally:
            gateway.stop()
            service.stop()
            redis.stop()


if __name__ == "__main__":
    main()
