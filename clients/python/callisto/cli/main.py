"""`callisto`: run the embedded mesh, manage API keys, print the configuration reference."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from redis.asyncio import Redis

from callisto.cli.ingest import ingest
from callisto.mesh.state import MeshState, mesh_home
from callisto.services.common.auth import ApiKeyInfo, ApiKeyStore

T = TypeVar("T")

app = typer.Typer(
    help="Callisto: a gRPC service mesh for streaming, retrieval-augmented conversations.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys (stored in Redis only as hashes).")
app.add_typer(keys_app, name="keys")
app.command()(ingest)

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
) -> None:
    """Start the whole mesh locally, show it working, and run until Ctrl-C."""
    from callisto.mesh.banner import print_banner
    from callisto.mesh.launcher import Mesh, MeshConfig, run_until_stopped

    if appendfsync not in ("everysec", "always"):
        raise typer.BadParameter("use everysec or always", param_hint="--appendfsync")
    config = MeshConfig(
        home=(home or mesh_home()).resolve(),
        gateway_port=gateway_port,
        admin_port=admin_port,
        redis_port=redis_port,
        appendfsync=appendfsync,
        with_models=models,
    )
    typer.echo(f"Starting the Callisto mesh (data and logs in {config.home})")
    mesh = Mesh(config, say=typer.echo)
    raise typer.Exit(run_until_stopped(mesh, print_banner))


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
        redis = Redis.from_url(redis_url, socket_connect_timeout=3)
        try:
            return await action(ApiKeyStore(redis))
        finally:
            await redis.aclose()

    return asyncio.run(run())


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


if __name__ == "__main__":
    app()
