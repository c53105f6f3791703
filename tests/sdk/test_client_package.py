"""The client package stands alone: the SDK and the client CLI import no server code, and the
client CLI's `--tenant` (which needs the server side to create a key) says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHECK = """
import sys
import callisto, callisto.client, callisto.sync, callisto.errors, callisto.streams
import callisto.persistence, callisto.retrieval, callisto.generation, callisto.ingest
import callisto.orchestration
import callisto.cli.main, callisto.cli.chat
server = sorted(m for m in sys.modules if m.split(".")[:2] in
                (["callisto", "services"], ["callisto", "gateway"], ["callisto", "mesh"]))
print(",".join(server))
"""


def test_the_sdk_and_client_cli_import_no_server_code() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_client_cli_tenant_option_needs_the_server_side(tmp_path: Path) -> None:
    # A fresh interpreter: in this one the full command line may have installed its key minter.
    (tmp_path / "a.txt").write_text("hello")
    done = subprocess.run(
        [sys.executable, "-m", "callisto.cli.main", "ingest", str(tmp_path), "--tenant", "acme"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode != 0
    assert "server-side" in done.stdout + done.stderr
