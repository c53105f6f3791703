"""mypy --strict over every hand-written module, as the package installs.

mypy resolves modules from folders, and setuptools' `package-dir` (setup.py) maps several folders
onto `callisto`. This lays the Python files out as the wheel does under build/typecheck (copying
only what changed, so mypy's cache stays warm), runs `mypy -p callisto` there and reports each
error at its source path. `python scripts/typecheck.py` exits as mypy does.
"""

from __future__ import annotations

import filecmp
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "build" / "typecheck"
SUFFIXES = {".py", ".pyi", ".typed"}


def _package_dirs() -> tuple[dict[str, str], set[str]]:
    """setup.py's import name -> folder mapping, and the packages that hold data only."""
    setup = runpy.run_path(str(ROOT / "setup.py"))
    return setup["PACKAGE_DIRS"], setup["DATA_ONLY"]


def stage() -> dict[Path, Path]:
    """Mirror the Python files under STAGE; return staged path -> source path."""
    mapping: dict[Path, Path] = {}
    # Longest import names last, so a nested mapping (callisto.mesh inside deploy/) wins.
    package_dirs, data_only = _package_dirs()
    for name, folder in sorted(package_dirs.items(), key=lambda item: item[0].count(".")):
        source_root = ROOT / folder
        target_root = STAGE.joinpath(*name.split("."))
        # A data package's own module only: its data (model.py files Triton runs) is not ours
        # to import.
        found = source_root.glob("*") if name in data_only else source_root.rglob("*")
        for source in found:
            if source.suffix not in SUFFIXES or "__pycache__" in source.parts:
                continue
            mapping[target_root / source.relative_to(source_root)] = source
    for target, source in mapping.items():
        if not target.exists() or not filecmp.cmp(source, target, shallow=False):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    for staged in [p for p in STAGE.rglob("*") if p.is_file()]:
        if staged not in mapping and ".mypy_cache" not in staged.parts:
            staged.unlink()
    return mapping


def main() -> int:
    mapping = stage()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "-p",
            "callisto",
        ],
        cwd=STAGE,
        env={**os.environ, "MYPYPATH": str(STAGE)},
        capture_output=True,
        text=True,
        check=False,
    )
    by_staged = {
        str(target.relative_to(STAGE)): str(source.relative_to(ROOT))
        for target, source in mapping.items()
    }
    for line in (result.stdout + result.stderr).splitlines():
        path, sep, rest = line.partition(":")
        print(f"{by_staged.get(path, path)}{sep}{rest}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
