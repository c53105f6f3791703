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
