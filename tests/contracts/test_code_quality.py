"""Our own code stays ruff-clean, ruff-formatted and mypy-strict-clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def _run(repo_root: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=repo_root, capture_output=True, text=True, timeout=600, check=False
    )


def test_ruff_check_and_format_are_clean(repo_root: Path) -> None:
    checked = _run(repo_root, str(BIN / "ruff"), "check", ".")
    assert checked.returncode == 0, checked.stdout
    formatted = _run(repo_root, str(BIN / "ruff"), "format", "--check", ".")
    assert formatted.returncode == 0, formatted.stdout


def test_mypy_strict_is_clean(repo_root: Path) -> None:
    result = _run(repo_root, sys.executable, "scripts/typecheck.py")
    assert result.returncode == 0, result.stdout[-5000:]


def test_tree_holds_no_symbolic_links(repo_root: Path) -> None:
    listed = _run(repo_root, "git", "ls-files", "--stage")
    links = [
        line.split("\t", 1)[1] for line in listed.stdout.splitlines() if line.startswith("120000")
    ]
    assert not links, f"symbolic links in the tree: {links}"


def test_the_typescript_client_and_the_console_typecheck_strictly(repo_root: Path) -> None:
    from callisto.mesh.console import ensure_node_modules

    clients = repo_root / "clients"
    ensure_node_modules(clients)
    tsc = clients / "node_modules" / ".bin" / "tsc"
    for project in ("typescript/tsconfig.json", "web/tsconfig.json"):
        result = _run(clients, str(tsc), "-p", project, "--noEmit")
        assert result.returncode == 0, f"{project}:\n{result.stdout[-5000:]}"
