"""The full `callisto` command line: the client commands plus the server side.

`up` runs the embedded mesh (and restarts what exits), `status` shows its parts, `keys` manages
API keys in Redis, `config` prints the settings reference, `gateway render|run` writes or runs
the Envoy config alone, and `models prepare|serve` builds the Triton environment or serves the
model repository alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from callisto.cli.ingest import set_key_minter
from callisto.cli.main import client_app
from callisto.cli.state import MeshState, ReplicaState, mesh_home
from callisto.services.common.auth import ApiKeyInfo, ApiKeyStore
from callisto.services.common.redis_client import connect_redis

if TYPE_CHECKING:
    from callisto.gateway.config import GatewaySpec

T = TypeVar("T")

app = client_app()
keys_app = typer.Typer(help="Create, list and revoke API keys (stored in Redis only as hashes).")
app.add_typer(keys_app, name="keys")

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Data and log folder of the embedded mesh [env CALLISTO_HOME]."),
]
RedisOption = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        help="Redis holding the keys; defaults to CALLISTO_REDIS_URL, else the running mesh.",
    ),
]


@app.command()
def up(
    home: HomeOption = None,
    gateway_port: Annotated[
        int, typer.Option(help="Gateway port (HTTP/JSON, gRPC, gRPC-Web).")
    ] = 8080,
    admin_port: Annotated[int, typer.Option(help="Envoy admin port (127.0.0.1 only).")] = 9901,
    redis_port: Annotated[int, typer.Option(help="Port of the mesh's own Redis.")] = 6390,
    appendfsync: Annotated[
        str, typer.Option(help="Redis AOF fsync policy: `everysec` or `always`.")
    ] = "everysec",
    models: Annotated[
        bool,
        typer.Option(help="Serve models (Triton, generation, retrieval); --no-models skips them."),
    ] = True,
    replicas: Annotated[
        int,
        typer.Option(
            min=1,
            max=8,
            help="Replicas of each service, each on its own port, all behind Envoy "
            "(with more than one, retrieval shares a milvus-lite server).",
        ),
    ] = 1,
    restart_delay: Annotated[
        float,
        typer.Option(
            min=0.01,
            help="Seconds before a child that exited is started again; doubles on each quick "
            "exit, up to 30 s.",
        ),
    ] = 0.5,
    restart_max_attempts: Annotated[
        int,
        typer.Option(
            min=1,
            help="Failed restarts of one child within --restart-window that stop the mesh.",
        ),
    ] = 5,
    restart_window: Annotated[
        float, typer.Option(min=1.0, help="Seconds over which failed restarts are counted.")
    ] = 60.0,
    console: Annotated[
        bool,
        typer.Option(
            help="Build the web console once (cached; needs Node.js) and serve it from the "
            "gateway under /console/."
        ),
    ] = True,
) -> None:
    """Start the whole mesh locally, show it working, and run until Ctrl-C; a part that exits
    is restarted on its own port (a crash loop stops the mesh)."""
    from callisto.mesh.banner import print_banner
    from callisto.mesh.launcher import Mesh, MeshConfig, run_until_stopped
    from callisto.mesh.supervisor import RestartPolicy

    if appendfsync not in ("everysec", "always"):
        raise typer.BadParameter("use everysec or always", param_hint="--appendfsync")
    config = MeshConfig(
        home=(home or mesh_home()).resolve(),
        gateway_port=gateway_port,
        admin_port=admin_port,
        redis_port=redis_port,
        appendfsync=appendfsync,
        with_models=models,
        with_console=console,
        replicas=replicas,
        restart_policy=RestartPolicy(
            delay_s=restart_delay,
            max_delay_s=max(30.0, restart_delay),
            max_attempts=restart_max_attempts,
            window_s=restart_window,
        ),
    )
    typer.echo(f"Starting the Callisto mesh (data and logs in {config.home})")
    mesh = Mesh(config, say=typer.echo)
    raise typer.Exit(run_until_stopped(mesh, print_banner))


@app.command()
def status(home: HomeOption = None) -> None:
    """Show the running mesh's parts: each service replica, Envoy, the control plane, Redis...
    with its address, PID, whether it runs and answers, and its restarts."""
    folder = (home or mesh_home()).resolve()
    state = MeshState.read(folder)
    if state is None:
        typer.echo(f"no mesh running at {folder} (start one with `callisto up`)", err=True)
        raise typer.Exit(1)
    typer.echo(f"gateway        {state.gateway}  (admin {state.admin})")
    typer.echo(f"control plane  {state.control_plane or '-'}")
    typer.echo(f"redis          {state.redis_url}\n")
    typer.echo(f"{'NAME':<18} {'ADDRESS':<30} {'PID':>8}  {'STATE':<12} RESTARTS")
    states = []
    for name, child in state.replicas.items():
        states.append(_child_state(child))
        typer.echo(
            f"{name:<18} {child.address:<30} {child.pid:>8}  {states[-1]:<12} {child.restarts}"
        )
    if any(state != "up" for state in states):
        raise typer.Exit(1)


# Children that answer grpc.health: `status` asks them, the others only need to run.
_HEALTH_CHECKED = ("persistence", "generation", "retrieval", "orchestration", "control-plane")


def _child_state(child: ReplicaState) -> str:
    """`up`, `not serving` (runs, health not SERVING: starting, or waiting for Triton) or
    `gone` (the launcher is restarting it, or it stopped)."""
    try:
        os.kill(child.pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass  # runs, as another user
    if child.kind not in _HEALTH_CHECKED:
        return "up"
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(child.address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.RpcError:
            return "not serving"
    return "up" if reply.status == health_pb2.HealthCheckResponse.SERVING else "not serving"


def _redis_url(explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.environ.get("CALLISTO_REDIS_URL"):
        return os.environ["CALLISTO_REDIS_URL"]
    state = MeshState.read(mesh_home())
    if state is not None:
        return state.redis_url
    raise typer.BadParameter(
        "no running mesh found; pass --redis-url or set CALLISTO_REDIS_URL",
        param_hint="--redis-url",
    )


def _with_keys(redis_url: str, action: Callable[[ApiKeyStore], Awaitable[T]]) -> T:
    async def run() -> T:
        redis = connect_redis(redis_url)
        try:
            return await action(ApiKeyStore(redis))
        finally:
            await redis.aclose()

    return asyncio.run(run())


def _mint_ingest_key(tenant: str) -> str:
    """A key for `callisto ingest --tenant`, in the Redis of the running mesh."""
    from callisto.services.common.auth import create_api_key

    state = MeshState.read(mesh_home())
    redis_url = os.environ.get("CALLISTO_REDIS_URL") or (state.redis_url if state else None)
    if redis_url is None:
        raise typer.BadParameter("no running mesh found to create a key in", param_hint="--tenant")
    try:
        return asyncio.run(create_api_key(redis_url, tenant, label="callisto ingest"))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--tenant") from error


set_key_minter(_mint_ingest_key)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to ([a-z0-9-]).")],
    label: Annotated[str, typer.Option(help="What the key is for.")] = "",
    redis_url: RedisOption = None,
) -> None:
    """Create a key; it is printed once and only its hash is stored."""

    async def create(store: ApiKeyStore) -> tuple[str, str]:
        key, info = await store.create(tenant, label)
        return key, info.key_id

    try:
        key, key_id = _with_keys(_redis_url(redis_url), create)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--tenant") from error
    typer.echo(f"key id: {key_id}\ntenant: {tenant}\napi key (shown once): {key}")


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    redis_url: RedisOption = None,
) -> None:
    """List keys (ids, tenants, labels; never the keys themselves)."""

    async def listing(store: ApiKeyStore) -> list[ApiKeyInfo]:
        return await store.list(tenant)

    for info in _with_keys(_redis_url(redis_url), listing):
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.created_time))
        typer.echo(f"{info.key_id}  {info.tenant:<24} {created}Z  {info.label}")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="Id of the key (from `keys list`).")],
    redis_url: RedisOption = None,
) -> None:
    """Revoke a key; calls with it fail with UNAUTHENTICATED from then on."""

    async def revoke(store: ApiKeyStore) -> bool:
        return await store.revoke(key_id)

    if not _with_keys(_redis_url(redis_url), revoke):
        typer.echo(f"no key with id {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@app.command()
def config() -> None:
    """Print the configuration reference (environment variables) as a Markdown table."""
    from callisto.mesh.settings_catalog import configuration_table

    typer.echo(configuration_table())


gateway_app = typer.Typer(help="Write, validate or run the Envoy gateway config on its own.")
app.add_typer(gateway_app, name="gateway")
models_app = typer.Typer(help="Build the Triton environment, or serve the model repository alone.")
app.add_typer(models_app, name="models")


def _host_port(text: str, hint: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise typer.BadParameter(f"expected HOST:PORT, got {text!r}", param_hint=hint)
    return host, int(port)


def _gateway_spec(
    out: Path,
    listen: str,
    admin_port: int,
    upstreams: list[str],
    reflection_service: str | None,
    unary_timeout: float,
) -> GatewaySpec:
    from callisto.gateway.config import GatewaySpec
    from callisto.gateway.process import DESCRIPTOR_FILE

    routed: dict[str, tuple[str, int]] = {}
    for upstream in upstreams:
        service, sep, address = upstream.partition("=")
        if not sep:
            raise typer.BadParameter(
                f"expected SERVICE=HOST:PORT, got {upstream!r}", param_hint="--upstream"
            )
        routed[service] = _host_port(address, "--upstream")
    host, port = _host_port(listen, "--listen")
    return GatewaySpec(
        upstreams=routed,
        descriptor_path=(out / DESCRIPTOR_FILE).absolute(),
        listen_address=host,
        listen_port=port,
        admin_port=admin_port,
        reflection_service=reflection_service,
        unary_timeout_s=unary_timeout,
    )


OutOption = Annotated[Path, typer.Option("--out", help="Directory for the config and descriptors.")]
ListenOption = Annotated[str, typer.Option("--listen", help="HOST:PORT of the listener.")]
AdminOption = Annotated[int, typer.Option("--admin-port", help="Admin port (127.0.0.1 only).")]
UpstreamOption = Annotated[
    list[str],
    typer.Option(
        "--upstream",
        metavar="SERVICE=HOST:PORT",
        help="A routed service and its gRPC server; repeat for each service.",
    ),
]
ReflectionOption = Annotated[
    str | None, typer.Option(help="Service answering reflection (default: the first upstream).")
]
UnaryTimeoutOption = Annotated[float, typer.Option(help="Unary route timeout, seconds.")]


@gateway_app.command("render")
def gateway_render(
    out: OutOption,
    upstream: UpstreamOption,
    listen: ListenOption = "127.0.0.1:8080",
    admin_port: AdminOption = 9901,
    reflection_service: ReflectionOption = None,
    unary_timeout: UnaryTimeoutOption = 30.0,
) -> None:
    """Write the descriptor set and envoy.yaml, then validate them with envoy."""
    from callisto.gateway.process import GatewayError, validate, write_gateway_files

    try:
        spec = _gateway_spec(out, listen, admin_port, upstream, reflection_service, unary_timeout)
        config_path = write_gateway_files(spec, out)
        validate(config_path)
    except (GatewayError, KeyError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(str(config_path))


@gateway_app.command("run")
def gateway_run(
    out: OutOption,
    upstream: UpstreamOption,
    listen: ListenOption = "127.0.0.1:8080",
    admin_port: AdminOption = 9901,
    reflection_service: ReflectionOption = None,
    unary_timeout: UnaryTimeoutOption = 30.0,
) -> None:
    """Render, start envoy and wait until interrupted."""
    from callisto.gateway.process import GatewayError
    from callisto.mesh.gateway import EnvoyGateway

    try:
        spec = _gateway_spec(out, listen, admin_port, upstream, reflection_service, unary_timeout)
        with EnvoyGateway(spec, out) as gateway:
            typer.echo(f"gateway on {gateway.http_url} (admin {gateway.admin_url})")
            _wait_for_signal()
    except (GatewayError, KeyError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error


def _wait_for_signal() -> None:
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()


CacheOption = Annotated[
    Path | None, typer.Option(help="Cache of the Triton environment [env CALLISTO_CACHE_DIR].")
]


@models_app.command("prepare")
def models_prepare(cache_dir: CacheOption = None) -> None:
    """Build the Triton environment for every model (the first time compiles llama.cpp)."""
    from callisto.mesh.triton import ensure_triton_environment

    started = time.monotonic()
    ensure_triton_environment(cache_dir)
    typer.echo(f"Triton environment ready ({time.monotonic() - started:.1f}s)")


@models_app.command("serve")
def models_serve(
    models: Annotated[str, typer.Option(help="Comma-separated model names, or 'all'.")] = (
        "toy_llm,embedder,sentiment"
    ),
    model_repository: Annotated[
        Path | None, typer.Option(help="Model repository (default: the packaged one).")
    ] = None,
    cache_dir: CacheOption = None,
) -> None:
    """Serve the model repository with a real tritonserver until interrupted."""
    from callisto.mesh.triton import running_triton

    started = time.monotonic()
    names = None if models == "all" else [m for m in models.split(",") if m]
    with running_triton(names, model_repository=model_repository, cache_dir=cache_dir) as server:
        typer.echo(f"tritonserver ready in {time.monotonic() - started:.1f}s (pid {server.pid})")
        typer.echo(f"grpc: {server.grpc_url}\nhttp: {server.http_url}\nlog:  {server.log_path}")
        _wait_for_signal()


console_app = typer.Typer(help="Build the web console the gateway serves under /console/.")
app.add_typer(console_app, name="console")


@console_app.command("build")
def console_build(cache_dir: CacheOption = None) -> None:
    """Install the console's npm packages (npm ci) and build it, unless this version is cached;
    prints the folder the gateway serves."""
    from callisto.mesh.console import ConsoleUnavailable, build_console

    try:
        typer.echo(build_console(cache_dir, log=typer.echo))
    except ConsoleUnavailable as unavailable:
        typer.echo(f"error: {unavailable}", err=True)
        raise typer.Exit(1) from unavailable
