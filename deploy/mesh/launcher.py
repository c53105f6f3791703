"""The embedded mesh: every part as a local child process, started in dependency order, waited on
until healthy, restarted when it exits (`callisto.mesh.supervisor`), and stopped by PID in
reverse order.

Envoy gets its clusters and endpoints from the xDS control plane, which reads the replica
registry in the mesh's Redis: every service replica (one by default, `replicas` of each) registers
itself there on its own port. A restarted child keeps its port, so Envoy, the control plane and
orchestration find it at the same address. With more than one retrieval replica, they share a
`milvus-lite server` (a Milvus Lite file has a single owner); one replica keeps the embedded file.

With the models comes the local webhook receiver of the sample workflow (its JSON lines under
logs/webhooks.jsonl, its secret in webhook-receiver.secret, readable by the owner only), and
the orchestration process may reach 127.0.0.1 (CALLISTO_OUTBOUND_ALLOWED_NETWORKS): the
embedded default's choice, so the sample's deliveries arrive; the scaled deployment allows no
loopback unless configured."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from types import FrameType

from grpc_health.v1 import health_pb2

from callisto.cli.state import MeshState, ReplicaState
from callisto.gateway.config import GatewaySpec, cors_origins_from_environment
from callisto.mesh.console import ConsoleUnavailable, build_console
from callisto.mesh.gateway import ControlPlaneProcess, EnvoyGateway
from callisto.mesh.processes import (
    ManagedProcess,
    MilvusLiteServer,
    ProcessError,
    RedisServer,
    ServiceProcess,
    free_port,
    port_is_free,
)
from callisto.mesh.supervisor import Child, CrashLoop, RestartPolicy, Supervisor
from callisto.mesh.triton import TritonServer, default_model_repository, ensure_triton_environment
from callisto.services.common.auth import ApiKeyStore
from callisto.services.common.redis_client import connect_redis

log = logging.getLogger("callisto.mesh")

SERVING = health_pb2.HealthCheckResponse.SERVING

PERSISTENCE_SERVICE = "callisto.persistence.v1.PersistenceService"
GENERATION_SERVICE = "callisto.generation.v1.GenerationService"
RETRIEVAL_SERVICE = "callisto.retrieval.v1.RetrievalService"
ORCHESTRATION_SERVICE = "callisto.orchestration.v1.OrchestrationService"
SERVICE_NAMES = {
    "persistence": PERSISTENCE_SERVICE,
    "generation": GENERATION_SERVICE,
    "retrieval": RETRIEVAL_SERVICE,
    "orchestration": ORCHESTRATION_SERVICE,
}
MAX_REPLICAS = 8
# Replica k (from 0) of a service asks for its port + k * this first: 50051, 50061, 50071...
REPLICA_PORT_STRIDE = 10
# Control plane and Milvus Lite server serve the mesh's own processes only.
LOOPBACK = "127.0.0.1"
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
    control_plane_port: int = 18000
    milvus_port: int = 19530
    appendfsync: str = "everysec"
    # Replicas of each service (persistence, generation, retrieval, orchestration), 1..8.
    replicas: int = 1
    # When children that exit are started again, and when the mesh gives up.
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    # Serve models (Triton, generation, retrieval) and the orchestration service over them; off
    # gives the persistence-only mesh.
    with_models: bool = True
    # Where the Triton environment, the compiled llama.cpp wheel and the built console are cached.
    cache_dir: Path | None = None
    # Build the web console (cached) and serve it from the gateway under /console/.
    with_console: bool = True
    # Extra environment for every service process.
    service_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise ValueError(f"replicas must be 1..{MAX_REPLICAS}")


def _port(preferred: int, host: str) -> int:
    """The preferred port when free, else any free one (the banner prints what was used)."""
    return preferred if preferred and port_is_free(preferred, host) else free_port(host)


def replica_name(service: str, index: int, count: int) -> str:
    """`persistence` alone, `persistence-1`, `persistence-2`... with replicas."""
    return service if count == 1 else f"{service}-{index + 1}"


def grpc_target(replicas: list[ServiceProcess]) -> str:
    """One gRPC target that reaches every replica: the address of a single one, else the
    `ipv4:` list the SDK's round-robin channels spread calls over (skipping a dead one)."""
    if len(replicas) == 1:
        return replicas[0].address
    host = replicas[0].host
    try:
        family = "ipv6" if ipaddress.ip_address(host).version == 6 else "ipv4"
    except ValueError:  # a name resolves to one address per name: no port list possible
        return replicas[0].address
    wrap = f"[{host}]" if family == "ipv6" else host
    return f"{family}:" + ",".join(f"{wrap}:{replica.port}" for replica in replicas)


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
        self.control_plane = ControlPlaneProcess(
            _port(config.control_plane_port, LOOPBACK),
            redis_url=self.redis.url,
            log_path=self.logs / "control-plane.log",
            host=LOOPBACK,
            env={"CALLISTO_LOG_FORMAT": "json"},
        )
        env = {
            "CALLISTO_REDIS_URL": self.redis.url,
            "CALLISTO_LOG_FORMAT": "json",
            **config.service_env,
        }
        # Service -> its replicas, in start order; every persistence replica answers the
        # gateway's reflection for the whole mesh.
        self.replicas: dict[str, list[ServiceProcess]] = {
            "persistence": self._replicas(
                "persistence", config.persistence_port, {**env, "CALLISTO_REFLECT_MESH": "true"}
            )
        }
        self.persistence = self.replicas["persistence"][0]
        self.triton: TritonServer | None = None
        self.milvus: MilvusLiteServer | None = None
        self.generation: ServiceProcess | None = None
        self.retrieval: ServiceProcess | None = None
        self.orchestration: ServiceProcess | None = None
        self.receiver: ManagedProcess | None = None
        self.receiver_port = 0
        self.receiver_log = self.logs / "webhooks.jsonl"
        self.receiver_secret_path = home / RECEIVER_SECRET_FILE
        if config.with_models:
            self._plan_models(env)
        self.services: list[ServiceProcess] = [r for rs in self.replicas.values() for r in rs]
        self.gateway = EnvoyGateway(
            GatewaySpec(
                services=tuple(SERVICE_NAMES[service] for service in self.replicas),
                control_planes=((LOOPBACK, self.control_plane.port),),
                descriptor_path=home / "gateway" / "callisto.binpb",
                listen_address=config.host,
                listen_port=_port(config.gateway_port, config.host),
                admin_port=_port(config.admin_port, "127.0.0.1"),
                reflection_service=PERSISTENCE_SERVICE,
                cors_allowed_origins=cors_origins_from_environment(),
            ),
            home / "gateway",
        )
        self.supervisor: Supervisor | None = None
        self.console_problem = ""
        self.demo_key = ""
        self.keys: dict[str, str] = {}
        # Tenant -> `agents/{id}@{revision}` of its sample agent.
        self.agents: dict[str, str] = {}
        # Agent id -> `agents/{id}@{revision}` of the sample workflow's agents, and its webhook.
        self.workflow_agents: dict[str, str] = {}
        self.workflow_webhook = ""

    def _replicas(self, service: str, port: int, env: dict[str, str]) -> list[ServiceProcess]:
        count = self.config.replicas
        replicas = []
        for index in range(count):
            name = replica_name(service, index, count)
            preferred = port + index * REPLICA_PORT_STRIDE if port else 0
            replicas.append(
                ServiceProcess(
                    service,
                    _port(preferred, self.config.host),
                    env=env,
                    log_path=self.logs / f"{name}.log",
                    host=self.config.host,
                    name=name,
                )
            )
        return replicas

    def _plan_models(self, env: dict[str, str]) -> None:
        """Generation, retrieval, orchestration and the webhook receiver (Triton's address is
        known only once it runs)."""
        config, home = self.config, self.config.home
        self.replicas["generation"] = self._replicas("generation", config.generation_port, env)
        if config.replicas > 1:
            self.milvus = MilvusLiteServer(
                home / "milvus",
                _port(config.milvus_port, LOOPBACK),
                log_path=self.logs / "milvus.log",
                host=LOOPBACK,
            )
            store = {"CALLISTO_MILVUS_URI": self.milvus.uri}
        else:
            store = {"CALLISTO_RETRIEVAL_DATA_DIR": str(home / "retrieval")}
        self.replicas["retrieval"] = self._replicas(
            "retrieval", config.retrieval_port, {**env, **store}
        )
        # Orchestration calls the others directly (the gateway strips the on-behalf-of header
        # its service credential needs), each through one target reaching all their replicas.
        self.replicas["orchestration"] = self._replicas(
            "orchestration",
            config.orchestration_port,
            {
                **env,
                "CALLISTO_PERSISTENCE_TARGET": grpc_target(self.replicas["persistence"]),
                "CALLISTO_GENERATION_TARGET": grpc_target(self.replicas["generation"]),
                "CALLISTO_RETRIEVAL_TARGET": grpc_target(self.replicas["retrieval"]),
                "CALLISTO_ORCHESTRATION_DEFAULT_MODEL": "models/llm",
                "CALLISTO_OUTBOUND_ALLOWED_NETWORKS": _with_receiver_network(
                    env.get(
                        "CALLISTO_OUTBOUND_ALLOWED_NETWORKS",
                        os.environ.get("CALLISTO_OUTBOUND_ALLOWED_NETWORKS", ""),
                    )
                ),
            },
        )
        self.generation = self.replicas["generation"][0]
        self.retrieval = self.replicas["retrieval"][0]
        self.orchestration = self.replicas["orchestration"][0]
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
        control_plane = self.control_plane
        step(
            "control plane",
            lambda: _start_control_plane(control_plane),
            f"{control_plane.address} (xDS for Envoy, from the replica registry)",
        )
        for replica in self.replicas["persistence"]:
            step(replica.name, partial(_start_service, replica), replica.address)
        if self.config.with_models:
            self._start_models()
        if self.config.with_console:
            self._build_console()
        step("gateway", self.gateway.start, lambda: self.gateway.http_url)
        self.keys = asyncio.run(self._ensure_keys())
        self.demo_key = self.keys[DEMO_TENANT]
        if self.config.with_models:
            self._ingest_samples()
            self._create_agents()
            self._create_workflow_sample()
        self.state().write(self.config.home)

    def _start_models(self) -> None:
        self.say("  … preparing the Triton environment (the first start compiles llama.cpp once,")
        self.say("    10-15 minutes; later starts reuse the cached build)")
        environment = ensure_triton_environment(self.config.cache_dir, log=self._quiet)
        self.triton = TritonServer(environment, log_path=self.logs / "triton.log")
        triton = self.triton
        self._step(
            "triton",
            lambda: self._start_triton(triton),
            lambda: f"{triton.grpc_url} ({', '.join(MESH_MODELS)})",
        )
        triton_env = {"CALLISTO_TRITON_URL": triton.grpc_url, **_model_threads()}
        for replica in self.replicas["generation"]:
            replica.env.update(triton_env)
            self._step(replica.name, partial(_start_service, replica), replica.address)
        milvus = self.milvus
        if milvus is not None:
            self._step(
                "milvus",
                milvus.start_and_wait,
                f"{milvus.uri} (milvus-lite server, shared by the retrieval replicas)",
            )
        for replica in self.replicas["retrieval"]:
            replica.env.update(triton_env)
            self._step(replica.name, partial(_start_service, replica), replica.address)
        receiver = self.receiver
        assert receiver is not None
        self._step(
            "receiver",
            lambda: self._start_receiver(receiver),
            lambda: f"{self.receiver_url} (sample webhooks; log {self.receiver_log})",
        )
        for replica in self.replicas["orchestration"]:
            self._step(replica.name, partial(_start_service, replica), replica.address)

    def _start_triton(self, triton: TritonServer) -> None:
        """Starts (or, after it exited, restarts on the same ports) Triton with the mesh's
        models and waits until they are loaded."""
        triton.stop()
        triton.start(default_model_repository(), MESH_MODELS, _model_threads())

    def _start_receiver(self, receiver: ManagedProcess) -> None:
        """Starts the receiver with the mesh's webhook secret (made once, kept across starts)
        and waits until it answers."""
        _ensure_secret(self.receiver_secret_path)
        receiver.start()
        deadline = time.monotonic() + 20.0
        while True:
            receiver.check_alive()
            if self._receiver_answers():
                return
            if time.monotonic() > deadline:
                raise ProcessError(f"webhook receiver not answering:\n{receiver.log_tail()}")
            time.sleep(0.1)

    def _receiver_answers(self) -> bool:
        health = f"http://{RECEIVER_HOST}:{self.receiver_port}/healthz"
        try:
            with urllib.request.urlopen(health, timeout=1.0) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

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
        if self.milvus is not None:
            self.milvus.stop()
        if self.triton is not None:
            self.triton.stop()
        self.control_plane.stop()
        self.redis.stop()

    def state(self) -> MeshState:
        """Where every part listens and its PID (rewritten after each restart)."""
        restarts = self.supervisor.restarts() if self.supervisor is not None else {}
        children: dict[str, ReplicaState] = {}

        def add(name: str, kind: str, address: str, pid: int) -> None:
            children[name] = ReplicaState(kind, address, pid, restarts.get(name, 0))

        if self.redis.running:
            add("redis", "redis", self.redis.url, self.redis.pid)
        if self.control_plane.running:
            add("control-plane", "control-plane", self.control_plane.address,
                self.control_plane.pid)  # fmt: skip
        if self.triton is not None and self.triton.running:
            add("triton", "triton", self.triton.grpc_url, self.triton.pid)
        if self.milvus is not None and self.milvus.running:
            add("milvus", "milvus", self.milvus.uri, self.milvus.pid)
        for service, replicas in self.replicas.items():
            for replica in replicas:
                if replica.running:
                    add(replica.name, service, replica.address, replica.pid)
        if self.receiver is not None and self.receiver.running:
            add("webhook-receiver", "webhook-receiver", self.receiver_url, self.receiver.pid)
        if self.gateway.pid is not None and self.gateway.running:
            add("gateway", "gateway", self.gateway.grpc_target, self.gateway.pid)
        return MeshState(
            redis_url=self.redis.url,
            gateway=self.gateway.grpc_target,
            admin=self.gateway.admin_url,
            services={service: grpc_target(rs) for service, rs in self.replicas.items()},
            pids={name: child.pid for name, child in children.items()},
            control_plane=self.control_plane.address,
            replicas=children,
        )

    def children(self) -> list[Child]:
        """Every part as the supervisor watches it, in start order."""
        redis, control_plane, gateway = self.redis, self.control_plane, self.gateway
        children = [
            _process_child(redis, redis.start, lambda: True, lambda: redis.url),
            _process_child(
                control_plane,
                control_plane.start,
                lambda: control_plane.health(0.5) == SERVING,
                lambda: control_plane.address,
            ),
        ]
        triton = self.triton
        if triton is not None:
            children.append(
                Child(
                    name="triton",
                    running=lambda: triton.running,
                    start=lambda: self._start_triton(triton),
                    ready=lambda: True,
                    kill=triton.kill,
                    log_tail=triton.log_tail,
                    where=lambda: f"{triton.grpc_url} (models loaded)",
                )
            )
        milvus = self.milvus
        if milvus is not None:
            children.append(
                _process_child(
                    milvus,
                    milvus.start,
                    # Retrieval loads the collections a restarted server holds released.
                    lambda: milvus.answering,
                    lambda: milvus.uri,
                )
            )
        for replicas in self.replicas.values():
            for replica in replicas:
                children.append(
                    _process_child(
                        replica,
                        replica.start,
                        replica.serving_now,
                        partial(lambda r: f"{r.address} (SERVING)", replica),
                    )
                )
        receiver = self.receiver
        if receiver is not None:
            children.append(
                _process_child(
                    receiver, receiver.start, self._receiver_answers, lambda: self.receiver_url
                )
            )

        def restart_gateway() -> None:
            gateway.stop()  # forgets the dead process, so start writes and starts anew
            gateway.start()

        children.append(
            Child(
                name="gateway",
                running=lambda: gateway.running,
                start=restart_gateway,
                ready=lambda: True,
                kill=gateway.stop,
                log_tail=partial(_tail, gateway.log_path),
                where=lambda: f"{gateway.http_url} (LIVE)",
            )
        )
        return children

    def supervise(self) -> Supervisor:
        """The supervisor of the started mesh; it rewrites the state file after each restart."""
        self.supervisor = Supervisor(
            self.children(),
            self.config.restart_policy,
            say=self.say,
            on_restart=lambda child: self.state().write(self.config.home),
        )
        return self.supervisor

    def _build_console(self) -> None:
        """The console's files for the gateway to serve; without Node.js (or outside a source
        checkout) the mesh starts without it and says why."""
        started = time.monotonic()
        try:
            built = build_console(self.config.cache_dir, log=self.say)
        except ConsoleUnavailable as unavailable:
            self.console_problem = str(unavailable)
            self.say(f"  · {'console':<13} not served: {unavailable}")
            return
        self.gateway.spec = replace(self.gateway.spec, console_dir=built)
        self.say(
            f"  ✓ {'console':<13} {built}  ({time.monotonic() - started:.1f} s, cached per version)"
        )

    @property
    def console_url(self) -> str | None:
        """Where the console is, once the gateway serves it."""
        if self.gateway.spec.console_dir is None:
            return None
        return f"{self.gateway.http_url}/console/"

    def _step(self, name: str, action: Callable[[], None], where: str | Callable[[], str]) -> None:
        """Runs one start-up step and reports where the part listens (known only after some
        parts have started, hence a callable)."""
        started = time.monotonic()
        action()
        shown = where if isinstance(where, str) else where()
        self.say(f"  ✓ {name:<13} {shown}  ({time.monotonic() - started:.1f} s)")

    async def _ensure_keys(self) -> dict[str, str]:
        """One key per demo tenant, reused across starts (each saved, 0600, under keys/)."""
        tenants = [DEMO_TENANT, *(SAMPLE_TENANTS if self.config.with_models else ())]
        folder = self.config.home / "keys"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        redis = connect_redis(self.redis.url)
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
        """Ingests samples/ into the sample tenants once per document store (the embedded file
        or the Milvus Lite server of several replicas); later starts find it done."""
        marker = self.config.home / (
            "samples-ingested" if self.milvus is None else "samples-ingested-milvus-server"
        )
        if marker.exists():
            return
        from callisto.mesh.samples import ingest_samples

        started = time.monotonic()
        self.say("  … ingesting the sample tenants' documents and the conference entities")
        report = asyncio.run(
            ingest_samples(self.gateway.grpc_target, self.keys, showcase=(DEMO_TENANT,))
        )
        if report.failed:
            raise ProcessError(f"sample ingestion failed: {report.failed}")
        documents = sum(
            len(r.created) + len(r.updated) + len(r.unchanged) for r in report.documents.values()
        )
        marker.write_text("done\n")
        self.say(
            f"  ✓ {'samples':<13} {documents} documents, {report.entities} entities"
            f"  ({time.monotonic() - started:.1f} s)"
        )

    def _create_agents(self) -> None:
        """Creates the sample agents, or brings them up to date (every start: cheap)."""
        from callisto.mesh.samples import ensure_sample_agents

        started = time.monotonic()
        self.agents = asyncio.run(
            ensure_sample_agents(self.gateway.grpc_target, self.keys, showcase=(DEMO_TENANT,))
        )
        names = ", ".join(sorted({name.split("@")[0] for name in self.agents.values()}))
        self.say(
            f"  ✓ {'agents':<13} {names} in {len(self.agents)} tenants"
            f"  ({time.monotonic() - started:.1f} s)"
        )

    def _create_workflow_sample(self) -> None:
        """The sample workflow's agents and the receiver's webhook (every start: cheap)."""
        from callisto.mesh.samples import (
            WORKFLOW_TENANT,
            WorkflowSample,
            ensure_workflow_sample,
        )

        key = self.keys.get(WORKFLOW_TENANT)
        if key is None or self.receiver is None:
            return
        started = time.monotonic()
        secret = self.receiver_secret_path.read_text(encoding="utf-8").strip()
        target = self.gateway.grpc_target

        async def both_tenants() -> tuple[WorkflowSample, WorkflowSample]:
            # The workflow's own tenant (the CLI examples), and the demo tenant (the console).
            return await asyncio.gather(
                ensure_workflow_sample(target, key, receiver_url=self.receiver_url, secret=secret),
                ensure_workflow_sample(
                    target,
                    self.keys[DEMO_TENANT],
                    receiver_url=self.receiver_url,
                    secret=secret,
                    tenant=DEMO_TENANT,
                ),
            )

        sample, _ = asyncio.run(both_tenants())
        self.workflow_agents = sample.agents
        self.workflow_webhook = sample.webhook
        names = ", ".join(name.split("@")[0] for name in sample.agents.values())
        self.say(
            f"  ✓ {'workflow':<13} {names} and {sample.webhook} ({sample.webhook_change}) "
            f"in {sample.tenant} and {DEMO_TENANT}  ({time.monotonic() - started:.1f} s)"
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


def _start_control_plane(control_plane: ControlPlaneProcess) -> None:
    control_plane.start()
    control_plane.wait_healthy()


def _process_child(
    process: ManagedProcess,
    start: Callable[[], None],
    ready: Callable[[], bool],
    where: Callable[[], str],
) -> Child:
    return Child(
        name=process.name,
        running=lambda: process.running,
        start=start,
        ready=ready,
        kill=process.kill,
        log_tail=process.log_tail,
        where=where,
        exit_code=lambda: process.exit_code,
    )


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Stop:
    """Turns SIGINT/SIGTERM into a flag the supervision loop polls (the previous handlers
    come back with `restore`)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in _STOP_SIGNALS}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How often the supervisor looks at the children.
POLL_INTERVAL_S = 0.2


def run_until_stopped(mesh: Mesh, on_ready: Callable[[Mesh], None]) -> int:
    """Starts the mesh, calls `on_ready`, then restarts children that exit until Ctrl-C or
    SIGTERM, or until one keeps failing (exit code 1, with its log's tail)."""
    stop = _Stop()
    exit_code = 0
    try:
        mesh.start()
        on_ready(mesh)
        supervisor = mesh.supervise()
        while not stop.requested:
            supervisor.poll()
            time.sleep(POLL_INTERVAL_S)
    except CrashLoop as error:
        mesh.say(f"\n✗ {error}\nstopping the mesh")
        exit_code = 1
    except ProcessError as error:
        mesh.say(f"\n✗ {error}")
        exit_code = 1
    finally:
        mesh.say("stopping…")
        mesh.stop()
        mesh.say("stopped; nothing left running")
        stop.restore()
    return exit_code


def python_bin(name: str) -> str:
    """A console script installed next to this Python (grpcurl, envoy)."""
    return str(Path(sys.executable).parent / name)


def _write_private(path: Path, text: str) -> None:
    """Create `path` readable by its owner only from the first byte (no chmod after writing)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
