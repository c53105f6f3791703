"""docker-compose.yml as Docker Compose reads it: `docker-compose config` (Debian's 1.29.2, no
engine needed) resolves the file with an env file made from .env.example, and the tests check
the resolved deployment: health checks and restart policies everywhere, a start order that
waits on health, one built image for every Callisto process, Triton on a GPU, the services on
Redis through the Sentinels, Prometheus and the collector wired to what runs, nothing but Envoy
published beyond loopback. The Redis configs run once in real redis-server and Sentinels."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import pytest
import yaml

from callisto.mesh.processes import ManagedProcess, free_port, redis_server_binary

CALLISTO_SERVICES = {
    "persistence": ("callisto.services.persistence", 50051, "PersistenceService"),
    "generation": ("callisto.services.generation", 50052, "GenerationService"),
    "retrieval": ("callisto.services.retrieval", 50053, "RetrievalService"),
    "orchestration": ("callisto.services.orchestration", 50054, "OrchestrationService"),
}
CALLISTO_PROCESSES = {*CALLISTO_SERVICES, "control-plane", "envoy"}
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
SENTINEL_URL = "redis+sentinel://sentinel-1:26379,sentinel-2:26379,sentinel-3:26379/callisto/0"
# The host ports that may be published, by service: Envoy's on every interface, the UIs on
# 127.0.0.1 only.
PUBLISHED = {
    "envoy": (None, 8080),
    "jaeger": ("127.0.0.1", 16686),
    "prometheus": ("127.0.0.1", 9090),
}
SECRETS = {"CALLISTO_PAGE_TOKEN_SECRET": "ab" * 32, "MINIO_ROOT_PASSWORD": "not-a-real-password"}


def env_file(repo_root: Path, directory: Path, **values: str) -> Path:
    """.env.example with `values` filled in."""
    lines = []
    for line in (repo_root / ".env.example").read_text().splitlines():
        name = line.partition("=")[0]
        lines.append(f"{name}={values[name]}" if name in values and "=" in line else line)
    path = directory / "compose.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def compose_config(repo_root: Path, env: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not installed (apt-get install -y docker-compose)"
    # Only the env file speaks: no CALLISTO_* or COMPOSE_* of the machine running the tests.
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(env.parent)}
    return subprocess.run(
        [binary, "-f", "docker-compose.yml", "--env-file", str(env), "config"],
        cwd=repo_root,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def resolved(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env = env_file(repo_root, tmp_path_factory.mktemp("compose"), **SECRETS)
    result = compose_config(repo_root, env)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture(scope="module")
def services(resolved: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = resolved["services"]
    return found


def test_compose_refuses_to_start_without_its_secrets(repo_root: Path, tmp_path: Path) -> None:
    as_shipped = compose_config(repo_root, env_file(repo_root, tmp_path))
    assert as_shipped.returncode != 0
    assert "CALLISTO_PAGE_TOKEN_SECRET" in as_shipped.stderr
    page_secret = SECRETS["CALLISTO_PAGE_TOKEN_SECRET"]
    no_minio = compose_config(
        repo_root, env_file(repo_root, tmp_path, CALLISTO_PAGE_TOKEN_SECRET=page_secret)
    )
    assert no_minio.returncode != 0
    assert "MINIO_ROOT_PASSWORD" in no_minio.stderr


def test_env_example_documents_every_variable_compose_reads(repo_root: Path) -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (repo_root / "docker-compose.yml").read_text()))
    documented = {
        line.partition("=")[0]
        for line in (repo_root / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert used - documented == set()
    assert {"CALLISTO_PAGE_TOKEN_SECRET", "MINIO_ROOT_PASSWORD"} <= used


def test_every_service_has_a_health_check_and_a_restart_policy(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert service.get("restart") == "unless-stopped", f"{name} is not restarted"


def test_callisto_processes_probe_their_own_grpc_health(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, (_, port, service_name) in CALLISTO_SERVICES.items():
        test = services[name]["healthcheck"]["test"]
        assert test[1:4] == ["python", "-m", "callisto.mesh.healthcheck"], name
        assert test[4] == f"127.0.0.1:{port}"
        assert test[5] == f"callisto.{name}.v1.{service_name}"
    assert services["control-plane"]["healthcheck"]["test"][4] == "127.0.0.1:18000"
    assert "127.0.0.1:9901/ready" in " ".join(services["envoy"]["healthcheck"]["test"])


def test_start_order_waits_on_health(services: dict[str, dict[str, Any]]) -> None:
    graph: dict[str, set[str]] = {}
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for dependency, rule in depends.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert rule == {"condition": "service_healthy"}, f"{name} -> {dependency}"
        graph[name] = set(depends)
    order = list(TopologicalSorter(graph).static_order())  # raises on a cycle

    def before(first: str, then: str) -> None:
        assert order.index(first) < order.index(then), f"{first} must start before {then}"

    for name in CALLISTO_PROCESSES - {"envoy"}:
        assert set(SENTINELS) <= graph[name], f"{name} does not wait for the Sentinels"
    for sentinel in SENTINELS:
        assert graph[sentinel] == {"redis-primary", "redis-replica"}
    before("redis-primary", "redis-replica")
    for model_user in ("generation", "retrieval"):
        assert "triton" in graph[model_user]
    assert {"etcd", "minio"} <= graph["milvus"] and "milvus" in graph["retrieval"]
    assert {"persistence", "generation", "retrieval"} <= graph["orchestration"]
    assert {"control-plane", "orchestration"} <= graph["envoy"]
    before("orchestration", "envoy")
    assert "jaeger" in graph["otel-collector"]


def test_callisto_processes_run_the_one_built_image(
    services: dict[str, dict[str, Any]], repo_root: Path
) -> None:
    images = {services[name]["image"] for name in CALLISTO_PROCESSES}
    assert len(images) == 1 and images.pop().startswith("callisto:")
    for name in CALLISTO_PROCESSES:
        build = services[name]["build"]
        assert Path(build["context"]) == repo_root and build["dockerfile"] == "Dockerfile"
        assert services[name]["init"] is True
    for name, (module, _, _) in CALLISTO_SERVICES.items():
        assert services[name]["command"] == f"python -m {module}"
        assert (repo_root / "services" / name / "__main__.py").is_file()
    assert services["control-plane"]["command"] == "python -m callisto.gateway.control_plane"
    assert services["envoy"]["command"].split() == [
        "python", "-m", "callisto.gateway.envoy", "--control-plane", "control-plane:18000",
        "--listen", "0.0.0.0:8080", "--admin-port", "9901", "--console", "/opt/callisto/console",
    ]  # fmt: skip
    assert (repo_root / "gateway" / "control_plane" / "__main__.py").is_file()
    assert (repo_root / "gateway" / "envoy.py").is_file()
    dockerfile = (repo_root / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm$", dockerfile, re.M)
    assert dockerfile.count("FROM ${PYTHON_IMAGE}") == 2  # build and run stages
    # The console is built with Node in its own stage; the run image serves its files only.
    assert re.search(r"^FROM \$\{NODE_IMAGE\} AS console$", dockerfile, re.M)
    assert "npm ci" in dockerfile and "COPY --from=console" in dockerfile
    assert "pip install ." in dockerfile and "[dev]" not in dockerfile
    assert re.search(r"^USER callisto$", dockerfile, re.MULTILINE)


def test_replica_counts_come_from_the_environment(
    services: dict[str, dict[str, Any]], repo_root: Path, tmp_path: Path
) -> None:
    for name in (*CALLISTO_SERVICES, "control-plane"):
        assert services[name]["deploy"]["replicas"] == 2, name
        assert "container_name" not in services[name]  # a fixed name cannot scale
    assert "replicas" not in services["envoy"].get("deploy", {})
    scaled = compose_config(
        repo_root, env_file(repo_root, tmp_path, **SECRETS, CALLISTO_PERSISTENCE_REPLICAS="3")
    )
    assert scaled.returncode == 0, scaled.stderr
    replicas = yaml.safe_load(scaled.stdout)["services"]["persistence"]["deploy"]["replicas"]
    assert replicas == 3


def test_services_are_configured_for_the_deployment(services: dict[str, dict[str, Any]]) -> None:
    for name in CALLISTO_SERVICES:
        env = services[name]["environment"]
        assert env["CALLISTO_GRPC_HOST"] == "0.0.0.0"
        assert env["CALLISTO_REDIS_URL"] == SENTINEL_URL
        assert env["CALLISTO_REDIS_MIN_REPLICAS"] == "1"
        assert env["CALLISTO_OTEL_EXPORTER"] == "otlp"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
        assert env["CALLISTO_PAGE_TOKEN_SECRET"] == SECRETS["CALLISTO_PAGE_TOKEN_SECRET"]
        assert "CALLISTO_ADVERTISE_HOST" not in env  # each replica registers its own IP
    assert services["control-plane"]["environment"]["CALLISTO_REDIS_URL"] == SENTINEL_URL
    for name in ("generation", "retrieval"):
        assert services[name]["environment"]["CALLISTO_TRITON_URL"] == "triton:8001"
    assert services["retrieval"]["environment"]["CALLISTO_MILVUS_URI"] == "http://milvus:19530"
    orchestration = services["orchestration"]["environment"]
    for name, (_, port, _) in CALLISTO_SERVICES.items():
        if name != "orchestration":
            assert orchestration[f"CALLISTO_{name.upper()}_TARGET"] == f"dns:///{name}:{port}"
    milvus = services["milvus"]["environment"]
    minio = services["minio"]["environment"]
    assert milvus["MINIO_ADDRESS"] == "minio:9000" and milvus["ETCD_ENDPOINTS"] == "etcd:2379"
    assert milvus["MINIO_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    assert services["milvus"]["image"].startswith("milvusdb/milvus:v2.5.")


def test_triton_reserves_a_gpu_and_serves_the_model_repository(
    services: dict[str, dict[str, Any]], repo_root: Path
) -> None:
    triton = services["triton"]
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert triton["build"]["args"]["TRITON_DEVICE"] == "gpu"
    dockerfile = (repo_root / triton["build"]["dockerfile"]).read_text()
    official = r"^FROM nvcr\.io/nvidia/tritonserver:\$\{TRITON_VERSION\}-py3$"
    assert re.search(official, dockerfile, re.MULTILINE)
    assert re.search(r"^ARG TRITON_VERSION=\d\d\.\d\d$", dockerfile, re.MULTILINE)
    for model in ("llm", "embedder", "sentiment"):
        assert f"COPY deploy/triton/{model} /models/{model}" in dockerfile
        assert (repo_root / "deploy" / "triton" / model / "config.pbtxt").is_file()
    assert "-DGGML_CUDA=on" in dockerfile
    # The parameters the GPU build rewrites are still where the sed expects them.
    for model, key, value in (("llm", "n_gpu_layers", "0"), ("embedder", "device", "cpu")):
        config = (repo_root / "deploy" / "triton" / model / "config.pbtxt").read_text()
        assert re.search(rf'key: "{key}"\n\s*value: {{ string_value: "{value}" }}', config)
    assert triton["shm_size"] in ("2gb", "2147483648", 2147483648)


def test_cpu_override_drops_only_the_gpu_reservation(repo_root: Path) -> None:
    class ComposeLoader(yaml.SafeLoader):
        pass

    ComposeLoader.add_constructor("!reset", lambda loader, node: "!reset")
    text = (repo_root / "deploy" / "compose" / "cpu.yml").read_text()
    override = yaml.load(text, Loader=ComposeLoader)  # SafeLoader plus `!reset`
    assert set(override["services"]) <= {"triton", "retrieval"}
    triton = override["services"]["triton"]
    assert triton["build"]["args"] == {"TRITON_DEVICE": "cpu"}
    assert triton["deploy"]["resources"]["reservations"]["devices"] == "!reset"
    assert "ARG TRITON_DEVICE" in (repo_root / "deploy/compose/triton/Dockerfile").read_text()


def test_services_reach_redis_through_a_sentinel_quorum(
    services: dict[str, dict[str, Any]], repo_root: Path
) -> None:
    redis_dir = repo_root / "deploy" / "compose" / "redis"
    sentinel_conf = (redis_dir / "sentinel.conf").read_text()
    monitor = re.search(r"^sentinel monitor (\S+) (\S+) (\d+) (\d+)$", sentinel_conf, re.M)
    assert monitor is not None
    assert monitor.groups() == ("callisto", "redis-primary", "6379", "2")
    assert SENTINEL_URL.rsplit("/", 2)[1] == monitor.group(1)
    for sentinel in SENTINELS:
        assert sentinel in SENTINEL_URL
        assert f"--sentinel announce-ip {sentinel}" in " ".join(services[sentinel]["command"])
    replica_conf = (redis_dir / "replica.conf").read_text()
    assert re.search(r"^replicaof redis-primary 6379$", replica_conf, re.M)
    for conf in ("primary.conf", "replica.conf"):
        text = (redis_dir / conf).read_text()
        assert re.search(r"^appendonly yes$", text, re.M)
        assert re.search(r"^appendfsync always$", text, re.M)
    for name in ("redis-primary", "redis-replica", *SENTINELS):
        assert services[name]["image"].startswith("redis:7")


def _published(port: Any) -> tuple[str | None, int, int]:
    """(host IP or None, published, target) of a resolved port entry (either form)."""
    if isinstance(port, dict):
        return port.get("host_ip"), int(port["published"]), int(port["target"])
    parts = str(port).split("/")[0].split(":")
    host = parts[0] if len(parts) == 3 else None
    return host, int(parts[-2]), int(parts[-1])


def test_only_envoy_is_published_beyond_loopback(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        ports = [_published(port) for port in service.get("ports", [])]
        if name not in PUBLISHED:
            assert ports == [], f"{name} publishes {ports}"
            continue
        host, target = PUBLISHED[name]
        assert [(ip, t) for ip, _, t in ports] == [(host, target)], name
        assert "network_mode" not in service


def test_referenced_files_exist(services: dict[str, dict[str, Any]], repo_root: Path) -> None:
    for name, service in services.items():
        if "build" in service:
            context = Path(service["build"]["context"])
            assert context.is_dir(), name
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), name
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), f"{name} mounts missing {source}"
                assert Path(source).resolve().is_relative_to(repo_root), source
    ignored = (repo_root / ".dockerignore").read_text().split()
    assert {".venv", ".callisto", ".env", ".git"} <= set(ignored)


def test_prometheus_scrapes_every_replica_of_every_callisto_process(
    services: dict[str, dict[str, Any]], repo_root: Path
) -> None:
    path = repo_root / "deploy" / "compose" / "prometheus.yml"
    config = yaml.safe_load(path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name in CALLISTO_PROCESSES - {"envoy"}:
        (discovery,) = jobs[name]["dns_sd_configs"]
        assert discovery["names"] == [name] and discovery["type"] == "A"
        assert str(discovery["port"]) == services[name]["environment"]["CALLISTO_METRICS_PORT"]
    for job in jobs.values():
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host = target.rpartition(":")[0]
                assert host == "127.0.0.1" or host in services, target
    mounted = " ".join(services["prometheus"]["volumes"])
    assert f"{path}:/etc/prometheus/prometheus.yml" in mounted
    # promtool comes with Debian's `prometheus` package (installed by ./dev test).
    check = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_collector_sends_the_services_traces_to_jaeger(
    services: dict[str, dict[str, Any]], repo_root: Path
) -> None:
    path = repo_root / "deploy" / "compose" / "otel-collector.yaml"
    config = yaml.safe_load(path.read_text())
    pipelines = config["service"]["pipelines"]
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{component} is not defined under {kind}"
    for extension in config["service"]["extensions"]:
        assert extension in config["extensions"]
    grpc_endpoint = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert grpc_endpoint == "0.0.0.0:4317"
    exporters = [config["exporters"][e] for e in pipelines["traces"]["exporters"]]
    assert [e["endpoint"] for e in exporters] == ["jaeger:4317"] and "jaeger" in services
    health = config["extensions"]["health_check"]["endpoint"]
    assert f"http://{health}/" in services["otel-collector"]["healthcheck"]["test"]
    assert f"{path}:/etc/otelcol-contrib/config.yaml" in " ".join(
        services["otel-collector"]["volumes"]
    )


# --- the Redis configs in real processes -------------------------------------------------


def _redis(name: str, conf: Path, *args: str) -> ManagedProcess:
    return ManagedProcess(
        name,
        [redis_server_binary(), str(conf), *args],
        log_path=conf.parent / f"{name}.log",
        cwd=conf.parent,
    )


def _cli(port: int, *command: str) -> str:
    result = subprocess.run(
        ["redis-cli", "-p", str(port), *command], capture_output=True, text=True, timeout=5
    )
    return result.stdout.strip()


def _eventually(probe: Any, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not probe():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.2)


@pytest.fixture
def redis_topology(repo_root: Path, tmp_path: Path) -> Iterator[dict[str, int]]:
    """The compose Redis configs on loopback: only the container names become 127.0.0.1 and
    ports free ones, given on the command line (the Sentinel's monitor line is rewritten)."""
    source = repo_root / "deploy" / "compose" / "redis"
    ports = {"primary": free_port(), "replica": free_port()}
    processes: list[ManagedProcess] = []
    try:
        for role in ("primary", "replica"):
            folder = tmp_path / role
            folder.mkdir()
            conf = folder / "redis.conf"
            shutil.copy(source / f"{role}.conf", conf)
            extra = ["--replicaof", "127.0.0.1", str(ports["primary"])] if role == "replica" else []
            process = _redis(
                role, conf, "--port", str(ports[role]), "--bind", "127.0.0.1",
                "--replica-announce-ip", "127.0.0.1", *extra,
            )  # fmt: skip
            process.start()
            processes.append(process)
            _eventually(lambda port=ports[role]: _cli(port, "ping") == "PONG")
        for sentinel in SENTINELS:
            folder = tmp_path / sentinel
            folder.mkdir()
            conf = folder / "sentinel.conf"
            conf.write_text(
                (source / "sentinel.conf")
                .read_text()
                .replace("redis-primary 6379", f"127.0.0.1 {ports['primary']}")
            )
            ports[sentinel] = free_port()
            process = _redis(
                sentinel, conf, "--sentinel", "--sentinel", "announce-ip", "127.0.0.1",
                "--port", str(ports[sentinel]),
            )  # fmt: skip
            process.start()
            processes.append(process)
        yield ports
    finally:
        for process in reversed(processes):
            process.stop(grace=2)


def test_redis_configs_run_a_replicated_primary_under_a_sentinel_quorum(
    redis_topology: dict[str, int],
) -> None:
    primary, replica = redis_topology["primary"], redis_topology["replica"]
    _eventually(lambda: "master_link_status:up" in _cli(replica, "info", "replication"))
    assert "connected_slaves:1" in _cli(primary, "info", "replication")
    for port in (primary, replica):
        assert _cli(port, "config", "get", "appendfsync").split() == ["appendfsync", "always"]
    for sentinel in SENTINELS:
        port = redis_topology[sentinel]
        # What the compose health check asks: a quorum can authorise a failover.
        _eventually(lambda port=port: _cli(port, "sentinel", "ckquorum", "callisto")[:2] == "OK")
        master = _cli(port, "sentinel", "get-master-addr-by-name", "callisto").split()
        assert master == ["127.0.0.1", str(primary)]
