"""`callisto up` run as a user runs it, for the tests that need the whole mesh: its banner read
from its output, its children stopped with it."""

from __future__ import annotations

import json
import os
import signal
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

    def children(self) -> dict[str, int]:
        """Every child's PID by name, from the mesh's state file."""
        state = json.loads((self.home / "mesh.json").read_text())
        return {name: int(pid) for name, pid in state["pids"].items()}

    def stop_cleanly(self) -> None:
        """SIGTERM, as a service manager stops it: it exits 0, no child outlives it and its
        state file is gone."""
        children = list(self.children().values())
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(60) == 0
        deadline = time.monotonic() + 10
        while any(pid_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if pid_alive(pid)], "children outlived the launcher"
        assert not (self.home / "mesh.json").exists()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
