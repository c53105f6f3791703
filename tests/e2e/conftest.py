"""One `callisto up` on the embedded default (models, samples, the built console), started as a
new user starts it and shared by this package's tests: the banner's examples, the TypeScript
client's tests and the console's browser tests. It is stopped with SIGTERM when the package is
done, and nothing may outlive it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from launcher_support import Launcher
from node_support import CLIENTS, EmbeddedMesh

from callisto.mesh.console import ensure_node_modules


@pytest.fixture(scope="package")
def embedded_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedMesh]:
    # The launcher builds the console (or reuses its cached build); the Node tests also need
    # the workspace's own node_modules (vitest, playwright-core).
    ensure_node_modules(CLIENTS)
    launcher = Launcher(tmp_path_factory.mktemp("mesh") / "home")
    try:
        banner = launcher.banner(timeout=600)
        gateway = re.search(r"^\s*gateway\s+(http://\S+)", banner, re.M)
        console = re.search(r"^\s*console\s+(http://\S+/console/)", banner, re.M)
        key = re.search(r"API key\s+(cal_\S+)", banner)
        assert gateway and console and key, banner
        yield EmbeddedMesh(launcher, banner, gateway[1], console[1], key[1])
        launcher.stop_cleanly()
    finally:
        launcher.kill()
