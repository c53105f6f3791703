"""`callisto up` run as a user runs it, for the tests that need the whole mesh: its banner read
from its output, its children stopped with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from callisto.mesh.processes import free_port


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Launcher:
    def __init__(self, home: Path, *extra: str) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.output = home / "up.out"
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "callisto"), "up",
                "--home", str(home),
                "--gateway-port", str(free_port()),
                "--admin-port", str(free_port()),
                "--redis-port", str(free_port()),
                *extra,
            ],
            stdout=self.output.open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def banner(self, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output.read_text()
            if "Press Ctrl-C" in text:
                return text
            if self.process.poll() is not None:
                pytest.fail(f"callisto up exited:\n{text}")
            time.sleep(0.2)
        pytest.fail(f"no banner within {timeout} s:\n{self.output.read_text()}")
