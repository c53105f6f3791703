"""The README documents exactly the settings the code reads."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def test_readme_configuration_table_matches_the_code(repo_root: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "sync_readme", repo_root / "scripts" / "sync_readme.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (repo_root / "README.md").read_text()
    assert module.render(readme) == readme, "run: python scripts/sync_readme.py"


def test_readme_opens_with_the_two_commands(repo_root: Path) -> None:
    lines = (repo_root / "README.md").read_text().splitlines()
    block = lines[lines.index("```bash") + 1 : lines.index("```")]
    assert [line.split("#")[0].strip() for line in block] == ["./dev up", "./dev test"]
