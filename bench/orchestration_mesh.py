"""The mesh the orchestration and simulation benchmarks run against, started on free ports.

Real Redis, one tritonserver (toy_llm and the embedder, plus the real `llm` and the `sentiment`
model when asked), the persistence, generation and retrieval services, two orchestration
processes and two Envoy gateways:

- `orchestration` calls the generation service directly; Envoy `gateway` fronts it with the
  other three services (the deployed shape).
- `tapped` calls generation through the benchmark's timing tap (`orchestration_tap`); Envoy
  `tapped_gateway` fronts it and routes GenerationService to the tap too, so a direct
  generation stream through Envoy is timed at the same point as the orchestration's.

Persistence, generation and retrieval export Prometheus metrics; `ServiceMetrics` reads the
time they spent serving (`callisto_rpc_duration_seconds`): for generation and retrieval the
benchmark's measure of "time inside generation and retrieval", for persistence where a part
of the overhead goes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import urllib.request
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.mesh.samples import CONFERENCE_TENANT, ingest_samples
from callisto.mesh.triton import TritonServer, default_model_repository, ensure_triton_environment
from callisto.services.common.auth import create_api_key

PERSISTENCE_SERVICE = "callisto.persistence.v1.PersistenceService"
GENERATION_SERVICE = "callisto.generation.v1.GenerationService"
RETRIEVAL_SERVICE = "callisto.retrieval.v1.RetrievalService"
ORCHESTRATION_SERVICE = "callisto.orchestration.v1.OrchestrationService"

# As `callisto up` runs the models: no spinning OpenMP threads, one embedder thread, and the
# llm at its configured two threads.
MODEL_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "CALLISTO_EMBEDDER_THREADS": "1"}


@dataclass(frozen=True)
class Served:
    """Seconds spent serving and calls served by one service, per method (a metrics reading)."""

    seconds: Mapping[str, float]
    calls: Mapping[str, float]
    in_flight: float

    def minus(self, before: Served) -> Served:
        return Served(
            {k: v - before.seconds.get(k, 0.0) for k, v in self.seconds.items()},
            {k: v - before.calls.get(k, 0.0) for k, v in self.calls.items()},
            self.in_flight,
        )

    @property
    def total_ms(self) -> float:
        return 1000 * sum(self.seconds.values())

    def count(self, method: str) -> int:
        return round(sum(v for k, v in self.calls.items() if k.endswith(f"/{method}")))

    def seconds_of(self, method: str) -> float:
        return sum(v for k, v in self.seconds.items() if k.endswith(f"/{method}"))


class ServiceMetrics:
    """Reads one service's `/metrics` (its RPC time, health checks left out)."""

    def __init__(self, port: int, service: str, leave_out: tuple[str, ...] = ()) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.service = service
        # Methods not counted (long streams whose time is recorded only when they end).
        self.leave_out = leave_out

    def _read(self) -> Served:
        with urllib.request.urlopen(self.url, timeout=5) as response:
            text = response.read().decode()
        seconds: dict[str, float] = {}
        calls: dict[str, float] = {}
        in_flight = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                method = sample.labels.get("method", "")
                if self.service not in method or method.endswith(self.leave_out):
                    continue
                if sample.name == "callisto_rpc_duration_seconds_sum":
                    seconds[method] = sample.value
                elif sample.name == "callisto_rpc_duration_seconds_count":
                    calls[method] = sample.value
                elif sample.name == "callisto_rpc_in_flight":
                    in_flight += sample.value
        return Served(seconds, calls, in_flight)

    def _codes(self) -> dict[tuple[str, str], float]:
        with urllib.request.urlopen(self.url, timeout=5) as response:
            text = response.read().decode()
        codes: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "callisto_rpc_requests_total":
                    method = sample.labels.get("method", "")
                    if self.service in method:
                        codes[(method, sample.labels.get("code", ""))] = sample.value
        return codes

    async def codes(self) -> dict[tuple[str, str], float]:
        """Calls answered so far, by (method, status code)."""
        return await asyncio.to_thread(self._codes)

    async def read(self, settled: bool = False) -> Served:
        """A reading; with `settled`, once no call of the service is in flight (a stream's time
        is recorded when its status is sent, just after its last message)."""
        reading = await asyncio.to_thread(self._read)
        for _ in range(50):
            if not settled or reading.in_flight == 0:
                break
            await asyncio.sleep(0.01)
            reading = await asyncio.to_thread(self._read)
        return reading


class BenchMesh:
    """Starts everything from the main thread (children die with it) and stops it at exit."""

    def __init__(
        self,
        workdir: Path,
        stack: ExitStack,
        *,
        with_llm: bool,
        with_sentiment: bool = False,
        orchestration_env: dict[str, str] | None = None,
    ) -> None:
        """`orchestration_env` adds settings to the (untapped) orchestration process."""
        self.workdir = workdir
        self.stack = stack
        self.with_llm = with_llm
        self.redis = RedisServer(workdir / "redis")
        self.redis.start()
        stack.callback(self.redis.stop)
        environment = ensure_triton_environment(
            with_llm=with_llm, with_embedder=True, with_sentiment=with_sentiment
        )
        self.triton = TritonServer(environment, log_path=workdir / "tritonserver.log")
        self.toy_events = workdir / "toy_events.jsonl"
        models = [
            "toy_llm",
            "embedder",
            *(["sentiment"] if with_sentiment else []),
            *(["llm"] if with_llm else []),
        ]
        self.triton.start(
            default_model_repository(),
            models,
            {**MODEL_ENV, "CALLISTO_TOY_LLM_EVENTS": str(self.toy_events)},
        )
        stack.callback(self.triton.stop)
        self.env = {
            "CALLISTO_REDIS_URL": self.redis.url,
            # Keys are cached as in a deployment (60 s), not re-read per call.
            "CALLISTO_AUTH_CACHE_SECONDS": "60",
            "CALLISTO_LOG_LEVEL": "WARNING",
            "CALLISTO_SHUTDOWN_GRACE_SECONDS": "2",
        }
        persistence_metrics = free_port()
        self.persistence = self._service(
            "persistence", {"CALLISTO_METRICS_PORT": str(persistence_metrics)}
        )
        self.persistence_metrics = ServiceMetrics(
            persistence_metrics, PERSISTENCE_SERVICE, leave_out=("/SubscribeEvents",)
        )
        generation_metrics, retrieval_metrics = free_port(), free_port()
        self.generation = self._service(
            "generation",
            {
                "CALLISTO_TRITON_URL": self.triton.grpc_url,
                "CALLISTO_GENERATION_DEFAULT_MODEL": "models/toy_llm",
                "CALLISTO_GENERATION_MODEL_EXTRAS": "1",
                "CALLISTO_GENERATION_MAX_CONCURRENT": "1024",
                "CALLISTO_METRICS_PORT": str(generation_metrics),
            },
        )
        self.retrieval = self._service(
            "retrieval",
            {
                "CALLISTO_TRITON_URL": self.triton.grpc_url,
                "CALLISTO_RETRIEVAL_DATA_DIR": str(workdir / "retrieval-data"),
                "CALLISTO_METRICS_PORT": str(retrieval_metrics),
                "OMP_WAIT_POLICY": "PASSIVE",
                "OMP_NUM_THREADS": "1",
            },
            timeout=120,
        )
        self.generation_metrics = ServiceMetrics(generation_metrics, GENERATION_SERVICE)
        self.retrieval_metrics = ServiceMetrics(retrieval_metrics, RETRIEVAL_SERVICE)
        self.orchestration = self.start_orchestration(
            "orchestration", self.generation.address, orchestration_env
        )
        self.gateway = self._gateway(
            "gateway",
            {
                ORCHESTRATION_SERVICE: ("127.0.0.1", self.orchestration.port),
                PERSISTENCE_SERVICE: ("127.0.0.1", self.persistence.port),
                GENERATION_SERVICE: ("127.0.0.1", self.generation.port),
                RETRIEVAL_SERVICE: ("127.0.0.1", self.retrieval.port),
            },
        )
        self.key = asyncio.run(create_api_key(self.redis.url, CONFERENCE_TENANT, label="bench"))
        # Set by `start_tapped` once the tap (which lives on the benchmark's event loop) listens.
        self.tapped: ServiceProcess | None = None
        self.tapped_gateway: EnvoyGateway | None = None

    def _service(
        self, name: str, env: dict[str, str], timeout: float = 60, label: str = ""
    ) -> ServiceProcess:
        label = label or name
        process = ServiceProcess(
            name,
            free_port(),
            env={**self.env, **env},
            log_path=self.workdir / f"{label}.log",
        )
        process.start()
        self.stack.callback(process.stop)
        process.wait_healthy(timeout)
        return process

    def start_orchestration(
        self, label: str, generation_target: str, extra: dict[str, str] | None = None
    ) -> ServiceProcess:
        return self._service(
            "orchestration",
            {
                "CALLISTO_PERSISTENCE_TARGET": self.persistence.address,
                "CALLISTO_GENERATION_TARGET": generation_target,
                "CALLISTO_RETRIEVAL_TARGET": self.retrieval.address,
                "CALLISTO_ORCHESTRATION_DEFAULT_MODEL": "models/toy_llm",
                **(extra or {}),
            },
            label=label,
        )

    def _gateway(self, label: str, upstreams: dict[str, tuple[str, int]]) -> EnvoyGateway:
        gateway = EnvoyGateway.on_free_ports(
            upstreams, self.workdir / label, rate_limit_tokens=1_000_000
        )
        gateway.start()
        self.stack.callback(gateway.stop)
        return gateway

    def start_tapped(self, tap_port: int, extra: dict[str, str] | None = None) -> None:
        """The second orchestration process, calling generation through the tap, and its
        gateway (GenerationService routed to the tap as well); `extra` adds settings."""
        self.tapped = self.start_orchestration(
            "orchestration-tapped", f"127.0.0.1:{tap_port}", extra
        )
        self.tapped_gateway = self._gateway(
            "gateway-tapped",
            {
                ORCHESTRATION_SERVICE: ("127.0.0.1", self.tapped.port),
                GENERATION_SERVICE: ("127.0.0.1", tap_port),
            },
        )

    async def ingest_conference(self) -> int:
        """The conference sample's entities into the bench tenant (`conference-demo`)."""
        report = await ingest_samples(self.retrieval.address, {CONFERENCE_TENANT: self.key})
        return int(report.entities)


def rss_mib(pid: int) -> float:
    """Resident set size of a process, MiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far, seconds (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fill_defaults(args: argparse.Namespace, defaults: Mapping[str, Any]) -> None:
    """Sets every option the command line left out (None) to its default."""
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def workdir(stack: ExitStack, keep: Path | None, prefix: str) -> Path:
    """Where a benchmark's mesh keeps its data and logs: `keep` (kept), else a temporary
    folder removed with `stack`."""
    if keep is None:
        return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
    keep.mkdir(parents=True, exist_ok=True)
    return keep
