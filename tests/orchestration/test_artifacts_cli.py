"""`callisto artifacts list|download` against the test mesh through the real Envoy: the listing
names each artifact with its type, size and file name; a download writes the stored bytes to
the artifact's file name (or -o FILE, or stdout) and says where, keeps an existing file unless
--force, and another tenant's artifact fails with NOT_FOUND."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest_asyncio

import callisto
from callisto.api.persistence.v1 import persistence_pb2
from callisto.mesh.gateway import EnvoyGateway

CALLISTO = str(Path(sys.executable).parent / "callisto")
CSV = b"supplier,price\r\nTessaline,1450\r\n"
MARKDOWN = b"# Offers\n\nTessaline: 1450 EUR\n"


@dataclass
class Ran:
    code: int
    out: str
    err: str
    stdout: bytes


async def cli(gateway: EnvoyGateway, key: str, *arguments: str, cwd: Path) -> Ran:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("CALLISTO_API_KEY", None)
    process = await asyncio.create_subprocess_exec(
        CALLISTO,
        *arguments,
        "--target",
        gateway.grpc_target,
        "--api-key",
        key,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(errors="replace"), err.decode(), out)


@dataclass
class Stored:
    conversation: str
    csv: persistence_pb2.Artifact
    markdown: persistence_pb2.Artifact


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stored(persistence_client: callisto.Client) -> Stored:
    persistence = persistence_client.persistence
    conversation = (await persistence.create_conversation(title="artifacts cli")).name
    csv = await persistence.create_artifact(
        conversation, display_name="offers.csv", content_type="text/csv", content=CSV
    )
    markdown = await persistence.create_artifact(
        conversation, display_name="notes.md", content_type="text/markdown", content=MARKDOWN
    )
    return Stored(conversation, csv, markdown)


async def test_list_shows_each_artifact_newest_first(
    mesh_gateway: EnvoyGateway, api_key: str, stored: Stored, tmp_path: Path
) -> None:
    ran = await cli(mesh_gateway, api_key, "artifacts", "list", stored.conversation, cwd=tmp_path)
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(stored.markdown.name)
    assert "text/markdown" in lines[0] and lines[0].endswith("notes.md")
    assert lines[1].startswith(stored.csv.name) and f"{len(CSV)} B" in lines[1]
    ran = await cli(
        mesh_gateway,
        api_key,
        "artifacts",
        "list",
        stored.conversation.removeprefix("conversations/"),
        "--json",
        cwd=tmp_path,
    )
    rows = [json.loads(line) for line in ran.out.splitlines()]
    assert [r["artifact"] for r in rows] == [stored.markdown.name, stored.csv.name]
    assert rows[1]["size_bytes"] == len(CSV) and rows[1]["sha256"] == stored.csv.sha256


async def test_download_writes_the_file_and_says_where(
    mesh_gateway: EnvoyGateway, api_key: str, stored: Stored, tmp_path: Path
) -> None:
    ran = await cli(mesh_gateway, api_key, "artifacts", "download", stored.csv.name, cwd=tmp_path)
    assert ran.code == 0, ran.err
    assert ran.out.strip() == f"wrote offers.csv (text/csv, {len(CSV)} bytes)"
    assert (tmp_path / "offers.csv").read_bytes() == CSV
    # An existing file is kept unless --force.
    (tmp_path / "offers.csv").write_bytes(b"mine")
    ran = await cli(mesh_gateway, api_key, "artifacts", "download", stored.csv.name, cwd=tmp_path)
    assert ran.code == 2 and "exists" in ran.err
    assert (tmp_path / "offers.csv").read_bytes() == b"mine"
    ran = await cli(
        mesh_gateway, api_key, "artifacts", "download", stored.csv.name, "--force", cwd=tmp_path
    )
    assert ran.code == 0 and (tmp_path / "offers.csv").read_bytes() == CSV
    target = tmp_path / "out" / "n.md"
    target.parent.mkdir()
    ran = await cli(
        mesh_gateway,
        api_key,
        "artifacts",
        "download",
        stored.markdown.name,
        "-o",
        str(target),
        cwd=tmp_path,
    )
    assert ran.code == 0, ran.err
    assert ran.out.strip() == f"wrote {target} (text/markdown, {len(MARKDOWN)} bytes)"
    assert target.read_bytes() == MARKDOWN
    ran = await cli(
        mesh_gateway,
        api_key,
        "artifacts",
        "download",
        stored.markdown.name,
        "-o",
        "-",
        cwd=tmp_path,
    )
    assert ran.code == 0 and ran.stdout == MARKDOWN


async def test_another_tenants_artifact_and_bad_names_fail_clearly(
    mesh_gateway: EnvoyGateway,
    tenant_key: Callable[[str], str],
    api_key: str,
    stored: Stored,
    tmp_path: Path,
) -> None:
    ran = await cli(
        mesh_gateway,
        tenant_key("artifacts-cli-rival"),
        "artifacts",
        "download",
        stored.csv.name,
        cwd=tmp_path,
    )
    assert ran.code == 2 and "download failed" in ran.err and "not found" in ran.err.lower()
    assert os.listdir(tmp_path) == []
    ran = await cli(mesh_gateway, api_key, "artifacts", "download", "offers.csv", cwd=tmp_path)
    assert ran.code == 2 and "conversations/<id>/artifacts/<id>" in ran.err
