"""Generation benchmark: what the mesh adds on top of Triton, measured with toy_llm.

Starts its own Redis, tritonserver (toy_llm), generation service and Envoy on free ports, and
compares, in the same run:
  (a) time to first token through the service and through Envoy vs tritonclient straight to Triton;
  (b) tokens/s relayed for 1 and for 200 concurrent streams vs straight to Triton;
  (c) tokens the model generated after a cancel;
and a sweep of the flush interval (`CALLISTO_GENERATION_FLUSH_INTERVAL_MS`) that the default comes
from. The direct baseline uses the service's own Triton stream (`tritonclient.grpc.aio`
`stream_infer` on one client), so the difference is the mesh hop alone; the mesh paths are
called as users call them, through the SDK (`client.generation.generate`).

    .venv/bin/python bench/generation_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import callisto
from callisto.api.generation.v1 import generation_pb2
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.mesh.triton import TritonServer, default_model_repository, ensure_triton_environment
from callisto.services.common.auth import create_api_key
from callisto.services.generation.triton import ChatTurn, GenerationSpec, TritonBackend

SERVICE = "callisto.generation.v1.GenerationService"
MODEL = "models/toy_llm"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def words(prefix: str, n: int = 8) -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def spec(text: str, max_tokens: int, **extra: Any) -> GenerationSpec:
    return GenerationSpec(
        messages=[ChatTurn("user", text)], max_tokens=max_tokens, extra=extra or None
    )


class Mesh:
    """Everything the benchmark talks to, started on free ports."""

    def __init__(self, workdir: Path, stack: ExitStack) -> None:
        self.workdir = workdir
        self.stack = stack
        self.events = workdir / "toy_events.jsonl"
        self.redis = RedisServer(workdir / "redis")
        self.redis.start()
        stack.callback(self.redis.stop)
        environment = ensure_triton_environment(with_llm=False, with_embedder=False)
        self.triton = TritonServer(environment, log_path=workdir / "tritonserver.log")
        self.triton.start(
            default_model_repository(),
            ["toy_llm"],
            {"CALLISTO_TOY_LLM_EVENTS": str(self.events), "OMP_WAIT_POLICY": "PASSIVE"},
        )
        stack.callback(self.triton.stop)
        self.api_key = asyncio.run(self._create_key())

    async def _create_key(self) -> str:
        return await create_api_key(self.redis.url, "bench", label="generation bench")

    def service(self, flush_ms: float) -> ServiceProcess:
        process = ServiceProcess(
            "generation",
            free_port(),
            env={
                "CALLISTO_REDIS_URL": self.redis.url,
                "CALLISTO_AUTH_CACHE_SECONDS": "60",
                "CALLISTO_TRITON_URL": self.triton.grpc_url,
                "CALLISTO_GENERATION_DEFAULT_MODEL": "models/toy_llm",
                "CALLISTO_GENERATION_MODEL_EXTRAS": "1",
                "CALLISTO_GENERATION_FLUSH_INTERVAL_MS": str(flush_ms),
                "CALLISTO_GENERATION_MAX_CONCURRENT": "1024",
                "CALLISTO_LOG_LEVEL": "WARNING",
            },
            log_path=self.workdir / f"generation-{flush_ms}.log",
        )
        process.start()
        self.stack.callback(process.stop)
        process.wait_healthy(60)
        return process

    def gateway(self, service: ServiceProcess) -> EnvoyGateway:
        gateway = EnvoyGateway.on_free_ports(
            {SERVICE: ("127.0.0.1", service.port)},
            self.workdir / "gateway",
            rate_limit_tokens=1_000_000,
        )
        gateway.start()
        self.stack.callback(gateway.stop)
        return gateway


# --- one stream, each way -------------------------------------------------------------------


async def direct_stream(backend: TritonBackend, text: str, max_tokens: int) -> tuple[float, int]:
    """(seconds to first token, tokens) straight to Triton."""
    started = time.perf_counter()
    first, tokens = 0.0, 0
    async for event in backend.stream("toy_llm", spec(text, max_tokens), timeout=60):
        if event.text and not first:
            first = time.perf_counter() - started
        tokens = event.completion_tokens
    return first, tokens


async def mesh_stream(client: callisto.Client, text: str, max_tokens: int) -> tuple[float, int]:
    """(seconds to first token, tokens) through a generation service (directly or via Envoy),
    with the SDK (an in-stream error raises)."""
    started = time.perf_counter()
    first, tokens = 0.0, 0
    async for item in client.generation.generate(text, model=MODEL, max_tokens=max_tokens):
        if isinstance(item, generation_pb2.TokenDelta):
            if not first:
                first = time.perf_counter() - started
            tokens += item.token_count
    return first, tokens


Streamer = Callable[[str, int], Awaitable[tuple[float, int]]]


async def ttft(stream: Streamer, samples: int) -> list[float]:
    for i in range(20):  # warm up connections and caches
        await stream(words(f"warm{i}x"), 1)
    return [(await stream(words(f"t{i}x"), 1))[0] * 1000 for i in range(samples)]


async def throughput(stream: Streamer, streams: int, tokens_each: int) -> float:
    started = time.perf_counter()
    results = await asyncio.gather(*(stream(words(f"c{i}x"), tokens_each) for i in range(streams)))
    elapsed = time.perf_counter() - started
    total = sum(tokens for _, tokens in results)
    assert total == streams * tokens_each, (total, streams * tokens_each)
    return total / elapsed


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSON lines toy_llm appends per finished request."""
    if not path.exists():
        return []
    return [dict(json.loads(line)) for line in path.read_text().splitlines()]


async def wait_produced(events: Path, tag: str) -> int:
    """How many tokens toy_llm produced for the request tagged `tag` (it reports at the end)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        for event in await asyncio.to_thread(read_events, events):
            if event["tag"] == tag:
                return int(event["produced"])
    raise RuntimeError("toy_llm never reported the cancelled request")


async def cancel_via_service(client: callisto.Client, events: Path, tag: str) -> int:
    """Cancel a 10 ms/token Generate after 5 tokens; returns tokens produced after the cancel."""
    extras = (("x-callisto-model-extras", json.dumps({"delay_ms": 10, "tag": tag})),)
    generation = client.generation.generate(
        words("k"), model=MODEL, max_tokens=2000, metadata=extras
    )
    received = 0
    async for item in generation:
        if isinstance(item, generation_pb2.TokenDelta):
            received += item.token_count
        if received >= 5:
            break
    generation.cancel()
    return await wait_produced(events, tag) - received


async def cancel_direct(backend: TritonBackend, events: Path, tag: str) -> int:
    """The same straight to Triton: cancel the ModelStreamInfer call after 5 tokens."""
    stream = backend.stream("toy_llm", spec(words("k"), 2000, delay_ms=10, tag=tag), timeout=60)
    received = 0
    async for event in stream:
        received = event.completion_tokens
        if received >= 5:
            break
    stream.cancel()
    return await wait_produced(events, tag) - received


# --- report ---------------------------------------------------------------------------------


Row = tuple[str, ...]


def table(title: str, header: Row, rows: list[Row]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


async def measure(mesh: Mesh, args: argparse.Namespace) -> None:
    service = mesh.service(5.0)
    gateway = mesh.gateway(service)
    backend = TritonBackend(mesh.triton.grpc_url)
    samples = 100 if args.quick else 300
    long_tokens = 2000  # toy_llm's context window is 2048
    many = 200
    many_tokens = 50 if args.quick else 100
    async with (
        await callisto.Client.connect(service.address, api_key=mesh.api_key) as via_service,
        await callisto.Client.connect(gateway.grpc_target, api_key=mesh.api_key) as via_envoy,
    ):

        def direct(text: str, n: int) -> Awaitable[tuple[float, int]]:
            return direct_stream(backend, text, n)

        def service_path(text: str, n: int) -> Awaitable[tuple[float, int]]:
            return mesh_stream(via_service, text, n)

        def envoy_path(text: str, n: int) -> Awaitable[tuple[float, int]]:
            return mesh_stream(via_envoy, text, n)

        ttft_direct = await ttft(direct, samples)
        ttft_service = await ttft(service_path, samples)
        ttft_envoy = await ttft(envoy_path, samples)
        singles: dict[str, list[float]] = {"direct": [], "service": []}
        for _ in range(3):
            singles["direct"].append(await throughput(direct, 1, long_tokens))
            singles["service"].append(await throughput(service_path, 1, long_tokens))
        one_direct, one_service = (statistics.median(singles[k]) for k in ("direct", "service"))
        # Alternate the paths so drifting load from elsewhere hits all of them alike.
        rates: dict[str, list[float]] = {"direct": [], "service": [], "envoy": []}
        for _ in range(3):
            rates["direct"].append(await throughput(direct, many, many_tokens))
            rates["service"].append(await throughput(service_path, many, many_tokens))
            rates["envoy"].append(await throughput(envoy_path, many, many_tokens))
        many_direct, many_service, many_envoy = (
            statistics.median(rates[k]) for k in ("direct", "service", "envoy")
        )
        excess, excess_direct = [], []
        for run in range(10):
            tag = f"bench-cancel-{run}-{time.monotonic_ns()}"
            excess.append(await cancel_via_service(via_service, mesh.events, tag))
            excess_direct.append(await cancel_direct(backend, mesh.events, tag + "-direct"))
    await backend.close()

    def ms(values: list[float]) -> str:
        return f"p50 {statistics.median(values):.2f} / p99 {percentile(values, 99):.2f} ms"

    def added(values: list[float]) -> str:
        p50 = statistics.median(values) - statistics.median(ttft_direct)
        p99 = percentile(values, 99) - percentile(ttft_direct, 99)
        return f"+{p50:.2f} / +{p99:.2f} ms"

    def ratio(value: float, base: float) -> str:
        return f"{100 * value / base:.0f}%"

    rows: list[Row] = [
        ("(a) TTFT via service", ms(ttft_direct), ms(ttft_service), added(ttft_service),
         "<= +2 ms at p50"),
        ("(a) TTFT via Envoy -> service", ms(ttft_direct), ms(ttft_envoy), added(ttft_envoy),
         "<= +2 ms at p50"),
        (f"(b) tokens/s, 1 stream x {long_tokens} (median of 3)", f"{one_direct:,.0f}",
         f"{one_service:,.0f}", ratio(one_service, one_direct), ">= 80%"),
        (f"(b) tokens/s, {many} streams x {many_tokens} (median of 3)", f"{many_direct:,.0f}",
         f"{many_service:,.0f}", ratio(many_service, many_direct), ">= 80%"),
        (f"(b) tokens/s, {many} streams via Envoy", f"{many_direct:,.0f}", f"{many_envoy:,.0f}",
         ratio(many_envoy, many_direct), "(info)"),
        ("(c) tokens after cancel (10 runs)", f"max {max(excess_direct)}", f"max {max(excess)}, "
         f"mean {statistics.mean(excess):.1f}", f"{max(excess) - max(excess_direct):+d}", "<= 3"),
    ]  # fmt: skip
    print()
    print(
        table(
            "Generation mesh vs tritonclient straight to Triton (toy_llm, same run)",
            ("what", "baseline (direct Triton)", "value", "difference / ratio", "target"),
            rows,
        )
    )

    if args.quick:
        return
    sweep: list[Row] = []
    for flush_ms in (0.0, 1.0, 2.0, 5.0, 10.0):
        sweep_service = service if flush_ms == 5.0 else mesh.service(flush_ms)
        async with await callisto.Client.connect(
            sweep_service.address, api_key=mesh.api_key
        ) as client:
            deltas: list[int] = []

            async def counted(
                text: str, n: int, client: callisto.Client = client, deltas: list[int] = deltas
            ) -> tuple[float, int]:
                started, first, tokens, count = time.perf_counter(), 0.0, 0, 0
                async for item in client.generation.generate(text, model=MODEL, max_tokens=n):
                    if isinstance(item, generation_pb2.TokenDelta):
                        first = first or time.perf_counter() - started
                        tokens += item.token_count
                        count += 1
                deltas.append(count)
                return first, tokens

            await throughput(counted, 20, 20)  # warm up
            cells = [f"{flush_ms:g} ms"]
            for streams, tokens in ((1, long_tokens), (many, many_tokens)):
                deltas.clear()
                cpu_before = process_cpu_s(sweep_service.pid)
                rate = await throughput(counted, streams, tokens)
                cpu_ms = (process_cpu_s(sweep_service.pid) - cpu_before) * 1000
                per_stream = statistics.mean(deltas)
                cells.append(
                    f"{rate:,.0f} tok/s, {tokens / per_stream:.1f} tok/msg, "
                    f"{cpu_ms / (streams * tokens) * 1000:.0f} ms CPU/1k tok"
                )
        sweep.append(tuple(cells))
    print()
    print(
        table(
            "Flush interval sweep through the service (CPU = the generation process's own)",
            (
                "flush interval",
                f"1 stream x {long_tokens}",
                f"{many} streams x {many_tokens}",
            ),
            sweep,
        )
    )


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer samples, no flush sweep")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="generation-bench-") as tmp, ExitStack() as stack:
        started = time.monotonic()
        mesh = Mesh(Path(tmp), stack)
        print(f"mesh started in {time.monotonic() - started:.1f} s (Redis, Triton)")
        asyncio.run(measure(mesh, args))
        # Shared 2-core machines: other work skews every number; say how busy it was.
        print(f"\nload average (1, 5, 15 min) at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
