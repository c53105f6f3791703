"""The generated code and the vendored googleapis protos never drift from their sources."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import google.api
import google.rpc


def _files(root: Path) -> dict[str, Path]:
    return {
        str(path.relative_to(root)): path
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_python_matches_the_protos(repo_root: Path, tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "codegen.py"), "--out", str(tmp_path)],
        check=True,
    )
    fresh = _files(tmp_path / "callisto" / "api")
    committed = _files(repo_root / "clients" / "python" / "callisto" / "api")
    assert sorted(committed) == sorted(fresh), "run: python scripts/codegen.py"
    stale = [name for name in fresh if not filecmp.cmp(fresh[name], committed[name], shallow=False)]
    assert not stale, f"stale generated files {stale}; run: python scripts/codegen.py"


def test_vendored_google_protos_are_the_ones_googleapis_common_protos_ships(
    repo_root: Path,
) -> None:
    vendored = repo_root / "third_party" / "googleapis" / "google"
    shipped = {"api": Path(google.api.__path__[0]), "rpc": Path(google.rpc.__path__[0])}
    protos = sorted(vendored.rglob("*.proto"))
    assert protos
    for proto in protos:
        package = proto.parent.name
        assert filecmp.cmp(proto, shipped[package] / proto.name, shallow=False), proto.name


def test_buf_lint_is_clean(repo_root: Path) -> None:
    buf = Path(sys.executable).parent / "buf"
    result = subprocess.run(
        [str(buf), "lint"], cwd=repo_root, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_typescript_matches_the_protos(repo_root: Path, tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(repo_root / "scripts" / "codegen.py"),
            "--typescript-out",
            str(tmp_path),
        ],
        check=True,
    )
    generated = Path("clients") / "typescript" / "src" / "gen"
    fresh = _files(tmp_path / generated)
    committed = _files(repo_root / generated)
    assert fresh, "buf generate wrote no TypeScript"
    assert sorted(committed) == sorted(fresh), "run: python scripts/codegen.py"
    stale = [name for name in fresh if not filecmp.cmp(fresh[name], committed[name], shallow=False)]
    assert not stale, f"stale generated files {stale}; run: python scripts/codegen.py"
