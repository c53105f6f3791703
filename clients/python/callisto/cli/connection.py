"""How the client commands that talk to a running mesh find it and their key: `--target`,
`--home`, `--api-key` (`--key`, env CALLISTO_API_KEY) and `--tenant` (the running mesh's saved
key of that tenant), the same options on every such command."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated

import typer

from callisto.cli.state import MeshState, default_target, mesh_home

ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", "--key", envvar="CALLISTO_API_KEY", help="API key."),
]
TenantOption = Annotated[
    str | None,
    typer.Option("--tenant", help="Without --api-key: the running mesh's key of a tenant."),
]
HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Home of the running mesh (env CALLISTO_HOME)."),
]
TargetOption = Annotated[
    str | None,
    typer.Option("--target", help="gRPC address (gateway or service); default: the mesh."),
]


def api_key_for(api_key: str | None, tenant: str | None, home: Path | None) -> str:
    """The key to call with: `api_key`, else the running mesh's saved key of `tenant`."""
    if api_key:
        return api_key
    if tenant:
        path = (home or mesh_home()) / "keys" / f"{tenant}.key"
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError:
            raise typer.BadParameter(
                f"no saved key of tenant {tenant!r} at {path} (is the mesh up there?)",
                param_hint="--tenant",
            ) from None
    raise typer.BadParameter(
        "pass --api-key (or set CALLISTO_API_KEY), or --tenant for a key of the running mesh",
        param_hint="--api-key",
    )


def target_for(target: str | None, home: Path | None) -> str:
    """Where to connect: `target`, else the gateway of the mesh at `home`, else the default."""
    if target:
        return target
    if home is not None:
        state = MeshState.read(home)
        if state is not None:
            return state.gateway.removeprefix("http://")
    return default_target()


def connection_flags(
    target: str | None, tenant: str | None, home: Path | None, api_key: str | None
) -> str:
    """The options that reach the same tenant again, for the commands a command prints: the
    tenant (and home) when the key came from one, else the key itself (unless the environment
    carries it)."""
    flags: list[str] = []
    if target:
        flags += ["--target", target]
    if tenant and not api_key:
        flags += ["--tenant", tenant]
        if home is not None:
            flags += ["--home", str(home)]
    elif api_key and os.environ.get("CALLISTO_API_KEY") != api_key:
        flags += ["--api-key", api_key]
    return shlex.join(flags)
