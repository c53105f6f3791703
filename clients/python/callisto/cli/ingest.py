"""`callisto ingest FOLDER`: stream a folder's documents into a tenant's retrieval index."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from callisto.cli.state import default_target

# Makes an API key for a tenant (`--tenant` without `--key`). Creating keys is server-side work
# (it writes to the mesh's Redis), so the client package has none; the full command line
# (`callisto.mesh.cli`) installs one.
KeyMinter = Callable[[str], str]
_minter: KeyMinter | None = None


def set_key_minter(minter: KeyMinter | None) -> None:
    global _minter
    _minter = minter


def _target(explicit: str | None) -> str:
    return explicit or default_target()


def _key(key: str | None, tenant: str | None) -> str:
    if key:
        return key
    if tenant is None:
        raise typer.BadParameter(
            "pass --key (or set CALLISTO_API_KEY), or --tenant to create a key in the running mesh",
            param_hint="--key",
        )
    if _minter is None:
        raise typer.BadParameter(
            "creating a key needs the server-side install; pass --key", param_hint="--tenant"
        )
    return _minter(tenant)


def ingest(
    folder: Annotated[
        Path,
        typer.Argument(exists=True, help="A folder (or one file) of PDF/DOCX/CSV/MD/HTML/TXT."),
    ],
    key: Annotated[
        str | None,
        typer.Option(
            "--key", envvar="CALLISTO_API_KEY", help="API key; its tenant gets the files."
        ),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", help="Without --key: create a key for this tenant in the mesh."),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target", help="gRPC address (gateway or retrieval service); default: the mesh."
        ),
    ] = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Include sub-folders.")
    ] = False,
    tags: Annotated[
        list[str] | None, typer.Option("--tags", "-t", help="Tag every document (repeatable).")
    ] = None,
) -> None:
    """Stream documents into the retrieval index, with a progress bar; re-runs change nothing."""
    from callisto.errors import CallistoError
    from callisto.ingest.folder import FolderIngester, folder_specs

    specs = folder_specs(folder.resolve(), recursive, tags or ())
    if not specs:
        typer.echo(f"no supported files in {folder}", err=True)
        raise typer.Exit(1)
    ingester = FolderIngester(_target(target), _key(key, tenant))
    try:
        report = asyncio.run(ingester.ingest_specs(specs))
    except CallistoError as error:
        typer.echo(f"ingestion failed: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(
        f"created {len(report.created)}, updated {len(report.updated)}, "
        f"unchanged {len(report.unchanged)}, failed {len(report.failed)}; "
        f"{report.chunks_stored} chunks stored in {report.duration_ms / 1000:.1f} s"
    )
    if report.error is not None:
        typer.echo(f"stream failed: {report.error.message}", err=True)
    if report.failed or report.error is not None:
        raise typer.Exit(1)
