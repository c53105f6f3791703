"""`callisto artifacts list|download`: the files (reports) a conversation's runs stored.

- `list CONVERSATION` prints one line per artifact, newest first: its name (what `download`
  takes), time, content type, size and file name; `--json` one JSON object per artifact.
- `download NAME [-o FILE]` writes the artifact's bytes to FILE (`-`: stdout), by default to
  its file name in the current folder, and prints the path, content type and size. An existing
  file is kept unless `--force`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf import json_format
from rich.text import Text

from callisto.api.persistence.v1 import persistence_pb2
from callisto.cli.connection import (
    ApiKeyOption,
    HomeOption,
    TargetOption,
    TenantOption,
    api_key_for,
    target_for,
)
from callisto.cli.simulate import new_console
from callisto.client import Client
from callisto.errors import CallistoError
from callisto.persistence import conversation_name

artifacts_app = typer.Typer(
    help="List and download the files (reports) a conversation's runs made.",
    no_args_is_help=True,
)

_EXTENSIONS = {
    "application/pdf": "pdf",
    "text/csv": "csv",
    "application/json": "json",
    "text/markdown": "md",
    "text/plain": "txt",
}


def _fail(what: str, error: CallistoError) -> typer.Exit:
    typer.echo(f"{what} failed: {error}", err=True)
    return typer.Exit(2)


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.1f} MiB"


def _row(artifact: persistence_pb2.Artifact) -> dict[str, object]:
    return {
        "artifact": artifact.name,
        "display_name": artifact.display_name,
        "content_type": artifact.content_type,
        "size_bytes": artifact.size_bytes,
        "sha256": artifact.sha256,
        "created": artifact.create_time.ToDatetime().isoformat() + "Z",
        "metadata": json_format.MessageToDict(artifact.metadata),
    }


def default_path(name: str, display_name: str, content_type: str) -> Path:
    """Where `download` writes without -o: the artifact's file name (never a path), else its
    id with the content type's extension."""
    base = Path(display_name).name if display_name else ""
    if base in ("", ".", ".."):
        artifact_id = name.rpartition("/")[2]
        base = f"{artifact_id}.{_EXTENSIONS.get(content_type, 'bin')}"
    return Path(base)


@artifacts_app.command("list")
def list_artifacts(
    conversation: Annotated[str, typer.Argument(help="conversations/<id> or <id>.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per artifact.")] = False,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    home: HomeOption = None,
    target: TargetOption = None,
) -> None:
    """List a conversation's artifacts, newest first."""
    address, key = target_for(target, home), api_key_for(api_key, tenant, home)

    async def main() -> list[persistence_pb2.Artifact]:
        async with await Client.connect(address, api_key=key) as client:
            listing = client.orchestration.list_artifacts(conversation_name(conversation))
            return [artifact async for artifact in listing]

    try:
        found = asyncio.run(main())
    except CallistoError as error:
        raise _fail("list", error) from error
    if as_json:
        for artifact in found:
            typer.echo(json.dumps(_row(artifact), ensure_ascii=False))
        return
    console = new_console()
    if not found:
        console.print("No artifacts.")
        return
    for artifact in found:
        created = artifact.create_time.ToDatetime().isoformat(sep=" ", timespec="seconds")
        line = Text(artifact.name, style="bold")
        line.append(f"  {created}  ")
        line.append(artifact.content_type, style="cyan")
        line.append(f"  {_size(artifact.size_bytes)}  ", style="dim")
        line.append(artifact.display_name)
        console.print(line, soft_wrap=True)


@artifacts_app.command("download")
def download(
    name: Annotated[str, typer.Argument(help="conversations/<id>/artifacts/<id>.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write ('-': stdout); default: its name."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    api_key: ApiKeyOption = None,
    tenant: TenantOption = None,
    home: HomeOption = None,
    target: TargetOption = None,
) -> None:
    """Save an artifact (a report) to a file."""
    address, key = target_for(target, home), api_key_for(api_key, tenant, home)
    conversation, separator, _ = name.rpartition("/artifacts/")
    if not separator or not conversation:
        raise typer.BadParameter(
            "name an artifact: conversations/<id>/artifacts/<id> (`callisto artifacts list`)",
            param_hint="NAME",
        )

    async def main() -> tuple[str, bytes, str]:
        async with await Client.connect(address, api_key=key) as client:
            body = await client.orchestration.download_artifact(name, timeout=120)
            display_name = ""
            if output is None:
                # The file name is the listing's (a conversation holds at most 100).
                async for artifact in client.orchestration.list_artifacts(
                    conversation, page_size=100
                ):
                    if artifact.name == name:
                        display_name = artifact.display_name
                        break
        return body.content_type, bytes(body.data), display_name

    try:
        content_type, data, display_name = asyncio.run(main())
    except CallistoError as error:
        raise _fail("download", error) from error
    if output is not None and str(output) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = output or default_path(name, display_name, content_type)
    if path.exists() and not force:
        typer.echo(f"download failed: {path} exists (--force overwrites it)", err=True)
        raise typer.Exit(2)
    try:
        path.write_bytes(data)
    except OSError as error:
        typer.echo(f"download failed: cannot write {path}: {error.strerror}", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"wrote {path} ({content_type}, {len(data)} bytes)")
