"""What the Node-side tests share: the live mesh they run against, and running one of the npm
workspace's Vitest suites as a test of this suite (failing with its output)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from launcher_support import Launcher

REPO = Path(__file__).resolve().parents[2]
CLIENTS = REPO / "clients"
VITEST = CLIENTS / "node_modules" / ".bin" / "vitest"


@dataclass(frozen=True)
class EmbeddedMesh:
    """A running `callisto up` on the embedded default: its banner, gateway, console and the
    keys it made."""

    launcher: Launcher
    banner: str
    gateway_url: str
    console_url: str
    demo_key: str

    def key(self, tenant: str) -> str:
        return (self.launcher.home / "keys" / f"{tenant}.key").read_text().strip()


def run_vitest(
    workspace: str, args: list[str], env: dict[str, str], *, timeout: float = 600
) -> str:
    """`vitest run ARGS` in `clients/<workspace>` with `env` added; the output when it passed."""
    if not VITEST.exists():
        pytest.fail(
            "clients/node_modules is missing: run `callisto console build` (./dev test does)"
        )
    try:
        result = subprocess.run(
            [str(VITEST), "run", *args],
            cwd=CLIENTS / workspace,
            env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0", **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"vitest {' '.join(args)} ran past {timeout} s:\n{expired.stdout!r}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output
