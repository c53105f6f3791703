"""The embedded mesh: every part as a local child process, started in dependency order, waited on
until healthy, and stopped by PID in reverse order.

With the models comes the local webhook receiver of the sample workflow (its JSON lines under
logs/webhooks.jsonl, its secret in webhook-receiver.secret, readable by the owner only), and
the orchestration process may reach 127.0.0.1 (CALLISTO_OUTBOUND_ALLOWED_NETWORKS): the
embedded default's choice, so the sample's deliveries arrive; the scaled deployment allows no
loopback unless configured."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType

from redis.asyncio import Redis

from callisto.cli.state import MeshState
from callisto.gateway.config import GatewaySpec, cors_origins_from_environment
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import (
    ManagedProcess,
    ProcessError,
    RedisServer,
    ServiceProcess,
    free_port,
    port_is_free,
)
from callisto.mesh.triton import TritonServer, default_model_repository, ensure_triton_environment
from callisto.services.common.auth import ApiKeyStore

log = logging.getLogger("callisto.mesh")

PERSISTENCE_SERVICE = "callisto.persistence.v1.PersistenceService"
GENERATION_SERVICE = "callisto.generation.v1.GenerationService"
RETRIEVAL_SERVICE = "callisto.retrieval.v1.RetrievalService"
ORCHESTRATION_SERVICE = "callisto.orchestration.v1.OrchestrationService"
# Models the embedded mesh serves from deploy/triton (toy_llm is for tests and benchmarks).
MESH_MODELS = ["llm", "embedder", "sentiment"]
DEMO_TENANT = "demo"
SAMPLE_TENANTS = (
    "tessaline-systems",
    "corvane-data",
    "marrowick-motors",
    "sales-simulation",
    "conference-demo",
)
# The local webhook receiver of the sample workflow: where deliveries to loopback may go.
RECEIVER_NETWORK = "127.0.0.1/32"
RECEIVER_HOST = "127.0.0.1"
RECEIVER_SECRET_FILE = "webhook-receiver.secret"
# Runs the receiver's command line with the secret read from its file, so the secret is never
# on a command line (visible to every local user) or in a log.
_RECEIVER_MAIN = (
    "import sys, pathlib; from callisto.mesh.webhook_receiver import main; "
    "port, secret, log = sys.argv[1:4]; "
    "main(['--host', '127.0.0.1', '--port', port, '--log', log, "
    "'--secret', pathlib.Path(secret).read_text(encoding='utf-8').strip()])"
)


@dataclass
class MeshConfig:
    """Where the embedded mesh keeps its data and which ports it asks for first."""

    home: Path
    host: str = "127.0.0.1"
    gateway_port: int = 8080
    admin_port: int = 9901
    redis_port: int = 6390
    persistence_port: int = 50051
    generation_port: int = 50052
    retrieval_port: int = 50053
    orchestration_port: int = 50054
    webhook_receiver_port: int = 8787
    appendfsync: str = "everysec"
    # Serve models (Triton, generation, retrieval) and the orchestration service over them; off
    # gives the persistence-only mesh.
    with_models: bool = True
    # Where the Triton environment and the compiled llama.cpp wheel are cached.
    cache_dir: Path | None = None
    # Extra environment for every service process.
    service_env: dict[str, str] = field(default_factory=dict)


def _port(preferred: int, host: str) -> int:
    """The preferred port when free, else any free one (the banner prints what was used)."""
    return preferred if preferred and port_is_free(preferred, host) else free_port(host)


class Mesh:
    """Starts and stops the embedded mesh."""

    def __init__(self, config: MeshConfig, *, say: Callable[[str], None] = print) -> None:
        self.config = config
        self.say = say
        home = config.home
        self.logs = home / "logs"
        self.redis = RedisServer(
            home / "redis",
            _port(config.redis_port, config.host),
            appendfsync=config.appendfsync,
            host=config.host,
        )
        env = {
            "CALLISTO_REDIS_URL": self.redis.url,
            "CALLISTO_LOG_FORMAT": "json",
            **config.service_env,
        }
        self.persistence = ServiceProcess(
            "persistence",
            _port(config.persistence_port, config.host),
            env={**env, "CALLISTO_REFLECT_MESH": "true"},
            log_path=self.logs / "persistence.log",
            host=config.host,
        )
        self.services: list[ServiceProcess] = [self.persistence]
        upstreams = {PERSISTENCE_SERVICE: (config.host, self.persistence.port)}
        self.triton: TritonServer | None = None
        self.generation: ServiceProcess | None = None
        self.retrieval: ServiceProcess | None = None
        self.orchestration: ServiceProcess | None = None
        self.receiver: ManagedProcess | None = None
        self.receiver_port = 0
        self.receiver_log = self.logs / "webhooks.jsonl"
        self.receiver_secret_path = home / RECEIVER_SECRET_FILE
        if config.with_models:
            self.generation = ServiceProcess(
                "generation",
                _port(config.generation_port, config.host),
                env=env,
                log_path=self.logs / "generation.log",
                host=config.host,
            )
            self.retrieval = ServiceProcess(
                "retrieval",
                _port(config.retrieval_port, config.host),
                env={**env, "CALLISTO_RETRIEVAL_DATA_DIR": str(home / "retrieval")},
                log_path=self.logs / "retrieval.log",
                host=config.host,
            )
            # Orchestration calls the others directly (the gateway strips the on-behalf-of
            # header its service credential needs).
            self.orchestration = ServiceProcess(
                "orchestration",
                _port(config.orchestration_port, config.host),
                env={
                    **env,
                    "CALLISTO_PERSISTENCE_TARGET": self.persistence.address,
                    "CALLISTO_GENERATION_TARGET": self.generation.address,
                    "CALLISTO_RETRIEVAL_TARGET": self.retrieval.address,
                    "CALLISTO_ORCHESTRATION_DEFAULT_MODEL": "models/llm",
                    "CALLISTO_OUTBOUND_ALLOWED_NETWORKS": _with_receiver_network(
                        env.get(
                            "CALLISTO_OUTBOUND_ALLOWED_NETWORKS",
                            os.environ.get("CALLISTO_OUTBOUND_ALLOWED_NETWORKS", ""),
                        )
                    ),
                },
                log_path=self.logs / "orchestration.log",
                host=config.host,
            )
            self.receiver_port = _port(config.webhook_receiver_port, RECEIVER_HOST)
            self.receiver = ManagedProcess(
                "webhook-receiver",
                [
                    sys.executable,
                    "-c",
                    _RECEIVER_MAIN,
                    str(self.receiver_port),
                    str(self.receiver_secret_path),
                    str(self.receiver_log),
                ],
                log_path=self.logs / "webhook-receiver.log",
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            self.services += [self.generation, self.retrieval, self.orchestration]
            upstreams[GENERATION_SERVICE] = (config.host, self.generation.port)
            upstreams[RETRIEVAL_SERVICE] = (config.host, self.retrieval.port)
            upstreams[ORCHESTRATION_SERVICE] = (config.host, self.orchestration.port)
        self.gateway = EnvoyGateway(
            GatewaySpec(
                upstreams=upstreams,
                descriptor_path=home / "gateway" / "callisto.binpb",
                listen_address=config.host,
                listen_port=_port(config.gateway_port, config.host),
                admin_port=_port(config.admin_port, "127.0.0.1"),
                reflection_service=PERSISTENCE_SERVICE,
                cors_allowed_origins=cors_origins_from_environment(),
            ),
            home / "gateway",
        )
        self.demo_key = ""
        self.keys: dict[str, str] = {}
        # Tenant -> `agents/{id}@{revision}` of its sample agent.
        self.agents: dict[str, str] = {}
        # Agent id -> `agents/{id}@{revision}` of the sample workflow's agents, and its webhook.
        self.workflow_agents: dict[str, str] = {}
        self.workflow_webhook = ""

    @property
    def receiver_url(self) -> str:
        """Where the local webhook receiver takes deliveries."""
        return f"http://{RECEIVER_HOST}:{self.receiver_port}/hook"

    def start(self) -> None:
        """Starts every part (from the main thread) and waits until each is healthy."""
        step = self._step
        step(
            "redis",
            self.redis.start,
            lambda: f"{self.redis.url} (AOF {self.redis.appendfsync})",
        )
        step(
            "persistence",
            partial(_start_service, self.persistence),
            self.persistence.address,
        )
        if self.config.with_models:
            self._start_models()
        step("gateway", self.gateway.start, lambda: self.gateway.http_url)
        self.keys = asyncio.run(self._ensure_keys())
        self.demo_key = self.keys[DEMO_TENANT]
        if self.config.with_models:
            self._ingest_samples()
            self._create_agents()
            self._create_workflow_sample()
        self.state().write(self.config.home)

    def _start_models(self) -> None:
        assert self.generation is not None and self.retrieval is not None
        self.say("  … preparing the Triton environment (the first start compiles llama.cpp once,")
        self.say("    10-15 minutes; later starts reuse the cached build)")
        environment = ensure_triton_environment(self.config.cache_dir, log=self._quiet)
        self.triton = TritonServer(environment, log_path=self.logs / "triton.log")
        triton = self.triton
        self._step(
            "triton",
            lambda: triton.start(default_model_repository(), MESH_MODELS, _model_threads()),
            lambda: f"{triton.grpc_url} ({', '.join(MESH_MODELS)})",
        )
        triton_env = {"CALLISTO_TRITON_URL": triton.grpc_url, **_model_threads()}
        for service in (self.generation, self.retrieval):
            service.env.update(triton_env)
            self._step(
                service.service,
                partial(_start_service, service),
                service.address,
            )
        receiver = self.receiver
        assert receiver is not None
        self._step(
            "receiver",
            lambda: self._start_receiver(receiver),
            lambda: f"{self.receiver_url} (sample webhooks; log {self.receiver_log})",
        )
        assert self.orchestration is not None
        self._step(
            "orchestration",
            partial(_start_service, self.orchestration),
            self.orchestration.address,
        )

    def _start_receiver(self, receiver: ManagedProcess) -> None:
        """Starts the receiver with the mesh's webhook secret (made once, kept across starts)
        and waits until it answers."""
        _ensure_secret(self.receiver_secret_path)
        receiver.start()
        deadline = time.monotonic() + 20.0
        health = f"http://{RECEIVER_HOST}:{self.receiver_port}/healthz"
        while True:
            receiver.check_alive()
            try:
                with urllib.request.urlopen(health, timeout=1.0) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ProcessError(f"webhook receiver not answering:\n{receiver.log_tail()}")
            time.sleep(0.1)

    def _quiet(self, line: str) -> None:
        self.say(f"    {line}")

    def stop(self) -> None:
        """Stops everything in reverse order, by PID."""
        MeshState.clear(self.config.home)
        self.gateway.stop()
        for service in reversed(self.services):
            service.stop()
        if self.receiver is not None:
            self.receiver.stop()
        if self.triton is not None:
            self.triton.stop()
        self.redis.stop()

    def state(self) -> MeshState:
        pids = {"redis": self.redis.pid, **{s.service: s.pid for s in self.services if s.running}}
        if self.triton is not None:
            pids["triton"] = self.triton.pid
        if self.receiver is not None and self.receiver.running:
            pids["webhook-receiver"] = self.receiver.pid
        if self.gateway.pid is not None:
            pids["gateway"] = self.gateway.pid
        return MeshState(
            redis_url=self.redis.url,
            gateway=self.gateway.grpc_target,
            admin=self.gateway.admin_url,
            services={s.service: s.address for s in self.services if s.running},
            pids=pids,
        )

    def first_failure(self) -> str | None:
        """A description of the first child that died, or None while all run."""
        for child in (self.redis, *self.services):
            if not child.running:
                return f"{child.name} exited:\n{child.log_tail()}"
        if self.triton is not None and not self.triton.running:
            return f"triton exited:\n{self.triton.log_tail()}"
        if self.receiver is not None and not self.receiver.running:
            return f"webhook receiver exited:\n{self.receiver.log_tail()}"
        if self.gateway.pid is not None and not self.gateway.running:
            return "gateway exited"
        return None

    def _step(self, name: str, action: Callable[[], None], where: str | Callable[[], str]) -> None:
        """Runs one start-up step and reports where the part listens (known only after some
        parts have started, hence a callable)."""
        started = time.monotonic()
        action()
        shown = where if isinstance(where, str) else where()
        self.say(f"  ✓ {name:<12} {shown}  ({time.monotonic() - started:.1f} s)")

    async def _ensure_keys(self) -> dict[str, str]:
        """One key per demo tenant, reused across starts (each saved, 0600, under keys/)."""
        tenants = [DEMO_TENANT, *(SAMPLE_TENANTS if self.config.with_models else ())]
        folder = self.config.home / "keys"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        redis = Redis.from_url(self.redis.url)
        keys: dict[str, str] = {}
        try:
            store = ApiKeyStore(redis)
            for tenant in tenants:
                path = folder / f"{tenant}.key"
                saved = path.read_text().strip() if path.exists() else ""
                if saved and await store.verify(saved) == tenant:
                    keys[tenant] = saved
                    continue
                key, _ = await store.create(tenant, label="demo key created by callisto up")
                # The user's own copy of the key; Redis holds only its hash.
                _write_private(path, key + "\n")
                keys[tenant] = key
        finally:
            await redis.aclose()
        return keys

    def _ingest_samples(self) -> None:
        """Ingests samples/ into the sample tenants once; later starts find it done."""
        marker = self.config.home / "samples-ingested"
        if marker.exists():
            return
        from callisto.mesh.samples import ingest_samples

        started = time.monotonic()
        self.say("  … ingesting the sample tenants' documents and the conference entities")
        report = asyncio.run(ingest_samples(self.gateway.grpc_target, self.keys))
        if report.failed:
            raise ProcessError(f"sample ingestion failed: {report.failed}")
        documents = sum(
            len(r.created) + len(r.updated) + len(r.unchanged) for r in report.documents.values()
        )
        marker.write_text("done\n")
        self.say(
            f"  ✓ {'samples':<12} {documents} documents, {report.entities} entities"
            f"  ({time.monotonic() - started:.1f} s)"
        )

    def _create_agents(self) -> None:
        """Creates the sample agents, or brings them up to date (every start: cheap)."""
        from callisto.mesh.samples import ensure_sample_agents

        started = time.monotonic()
        self.agents = asyncio.run(ensure_sample_agents(self.gateway.grpc_target, self.keys))
        names = ", ".join(sorted({name.split("@")[0] for name in self.agents.values()}))
        self.say(
            f"  ✓ {'agents':<12} {names} in {len(self.agents)} tenants"
            f"  ({time.monotonic() - started:.1f} s)"
        )

    def _create_workflow_sample(self) -> None:
        """The sample workflow's agents and the receiver's webhook (every start: cheap)."""
        from callisto.mesh.samples import WORKFLOW_TENANT, ensure_workflow_sample

        key = self.keys.get(WORKFLOW_TENANT)
        if key is None or self.receiver is None:
            return
        started = time.monotonic()
        sample = asyncio.run(
            ensure_workflow_sample(
                self.gateway.grpc_target,
                key,
                receiver_url=self.receiver_url,
                secret=self.receiver_secret_path.read_text(encoding="utf-8").strip(),
            )
        )
        self.workflow_agents = sample.agents
        self.workflow_webhook = sample.webhook
        names = ", ".join(name.split("@")[0] for name in sample.agents.values())
        self.say(
            f"  ✓ {'workflow':<12} {names} and {sample.webhook} ({sample.webhook_change}) "
            f"in {sample.tenant}  ({time.monotonic() - started:.1f} s)"
        )


def _with_receiver_network(configured: str) -> str:
    """The configured outbound networks plus the local receiver's."""
    networks = [n.strip() for n in configured.split(",") if n.strip()]
    if RECEIVER_NETWORK not in networks:
        networks.append(RECEIVER_NETWORK)
    return ",".join(networks)


def _ensure_secret(path: Path) -> None:
    """The webhook secret at `path`, made once (private from its first byte)."""
    if path.exists() and path.read_text(encoding="utf-8").strip():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, secrets.token_urlsafe(32) + "\n")


def _model_threads() -> dict[str, str]:
    # Two cores shared by llama.cpp, torch and the services: spinning OpenMP threads would
    # starve everything else.
    return {"OMP_WAIT_POLICY": "PASSIVE", "CALLISTO_EMBEDDER_THREADS": "1"}


def _start_service(service: ServiceProcess) -> None:
    service.start()
    service.wait_healthy(60.0)


class _Stop:
    """Turns SIGINT/SIGTERM into a flag the supervision loop polls."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def run_until_stopped(mesh: Mesh, on_ready: Callable[[Mesh], None]) -> int:
    """Starts the mesh, calls `on_ready`, supervises until Ctrl-C/SIGTERM or a child dies."""
    stop = _Stop()
    exit_code = 0
    try:
        mesh.start()
        on_ready(mesh)
        while not stop.requested:
            failure = mesh.first_failure()
            if failure is not None:
                mesh.say(f"\n✗ {failure}\nstopping the mesh")
                exit_code = 1
                break
            time.sleep(0.5)
    except ProcessError as error:
        mesh.say(f"\n✗ {error}")
        exit_code = 1
    finally:
        mesh.say("stopping…")
        mesh.stop()
        mesh.say("stopped; nothing left running")
    return exit_code


def python_bin(name: str) -> str:
    """A console script installed next to this Python (grpcurl, envoy)."""
    return str(Path(sys.executable).parent / name)


def _write_private(path: Path, text: str) -> None:
    """Create `path` readable by its owner only from the first byte (no chmod after writing)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
