"""Builds the web console (`clients/web`, Vite) once per source version, for the gateway to serve.

The build needs the source checkout (the console is not in the wheel) and Node.js ≥ 20.19 with
npm. `npm ci` installs the locked dependencies into `clients/node_modules` when the lock file
changed; the built files go to `<cache>/console/<digest of the sources>/`, so a later start with
the same sources reuses them at once, like the compiled llama.cpp wheel.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from callisto.mesh.triton import default_cache_dir

MIN_NODE = (20, 19)
# What the build reads: the workspace's manifests and lock, the client's and console's sources,
# and the sample workflow the console bundles.
_SOURCES = ("package.json", "package-lock.json", "typescript", "web", "../deploy/samples/workflows")
_SKIPPED = {"node_modules", "dist", "tests", "test", "test-results"}
_STAMP = ".callisto-lock-sha256"
_KEPT_BUILDS = 3
_NPM_TIMEOUT_S = 900.0

Log = Callable[[str], None]


class ConsoleUnavailable(RuntimeError):
    """The console cannot be built here (no checkout, no Node.js, or the build failed)."""


def clients_dir() -> Path | None:
    """`$CALLISTO_CLIENTS_DIR`, else the checkout's `clients/` next to this package's sources;
    None when neither holds the npm workspace (an installed wheel)."""
    configured = os.environ.get("CALLISTO_CLIENTS_DIR")
    candidate = Path(configured) if configured else Path(__file__).resolve().parents[2] / "clients"
    return candidate if (candidate / "package.json").is_file() else None


def _source_files(clients: Path) -> Iterator[Path]:
    for name in _SOURCES:
        path = clients / name
        if path.is_file():
            yield path
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED)
            for filename in sorted(filenames):
                yield Path(dirpath) / filename


def source_digest(clients: Path) -> str:
    """One hash of every file the build reads (names and contents)."""
    digest = hashlib.sha256()
    for path in _source_files(clients):
        digest.update(os.path.relpath(path, clients).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:20]


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ConsoleUnavailable(f"`{name}` is not installed (the console needs Node.js ≥ 20.19)")
    return found


def check_node() -> str:
    """The path of a recent enough `node`, or ConsoleUnavailable saying what is wrong."""
    node = _tool("node")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=False, timeout=30
    ).stdout.strip()
    found = re.fullmatch(r"v(\d+)\.(\d+)\.\d+", version)
    if found is None or (int(found[1]), int(found[2])) < MIN_NODE:
        wanted = ".".join(map(str, MIN_NODE))
        raise ConsoleUnavailable(f"node {version or '(unknown)'} is too old: need ≥ {wanted}")
    return node


def _run_npm(args: list[str], clients: Path) -> None:
    result = subprocess.run(
        [_tool("npm"), *args],
        cwd=clients,
        capture_output=True,
        text=True,
        check=False,
        timeout=_NPM_TIMEOUT_S,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise ConsoleUnavailable(f"npm {' '.join(args)} failed:\n" + "\n".join(tail))


def ensure_node_modules(clients: Path, log: Log = print) -> None:
    """`npm ci` from the committed lock file, unless node_modules already holds that lock."""
    check_node()
    lock = hashlib.sha256((clients / "package-lock.json").read_bytes()).hexdigest()
    stamp = clients / "node_modules" / _STAMP
    if stamp.is_file() and stamp.read_text().strip() == lock:
        return
    log("  … installing the console's npm packages (npm ci, from package-lock.json)")
    _run_npm(["ci", "--no-audit", "--no-fund", "--loglevel=error"], clients)
    stamp.write_text(lock + "\n")


def build_console(cache_dir: Path | None = None, log: Log = print) -> Path:
    """The folder of the built console for the current sources, building it when needed."""
    clients = clients_dir()
    if clients is None:
        raise ConsoleUnavailable("the console is built from a source checkout (clients/)")
    builds = (cache_dir or default_cache_dir()) / "console"
    target = builds / source_digest(clients)
    if (target / "index.html").is_file():
        return target
    ensure_node_modules(clients, log)
    builds.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=builds))
    try:
        _run_npm(["run", "build", "-w", "@callisto/web", "--", "--outDir", str(scratch)], clients)
        if not (scratch / "index.html").is_file():
            raise ConsoleUnavailable("the console build wrote no index.html")
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _forget_old_builds(builds, keep=target)
    return target


def _forget_old_builds(builds: Path, keep: Path) -> None:
    old = sorted(
        (path for path in builds.iterdir() if path.is_dir() and path != keep),
        key=lambda path: path.stat().st_mtime,
        reverse=True,
    )
    for path in old[_KEPT_BUILDS - 1 :]:
        shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "ConsoleUnavailable",
    "build_console",
    "check_node",
    "clients_dir",
    "ensure_node_modules",
    "source_digest",
]
