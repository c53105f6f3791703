"""`callisto ingest` (the typer command) against the real service: files in, re-run unchanged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from typer.testing import CliRunner

from callisto.cli.ingest import ingest
from callisto.mesh.processes import ServiceProcess


def test_ingest_command_streams_a_folder_and_a_rerun_changes_nothing(
    retrieval_service: ServiceProcess, tenant_keys: Callable[[str], str], tmp_path: Path
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# Quay\nThe quay wall was rebuilt in 2019.\n")
    (tmp_path / "sub" / "b.txt").write_text("Mooring lines are replaced every five years.\n")
    (tmp_path / "ignored.bin").write_bytes(b"\x00")
    app = typer.Typer()
    app.command()(ingest)
    args = [str(tmp_path), "--key", tenant_keys("cli-tenant"), "--target",
            retrieval_service.address, "--recursive", "--tags", "harbour"]  # fmt: skip
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "created 2, updated 0, unchanged 0, failed 0" in first.output
    second = CliRunner().invoke(app, args)
    assert "created 0, updated 0, unchanged 2, failed 0" in second.output
