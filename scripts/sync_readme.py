"""Rewrites the README's configuration table from the settings the code reads.

`python scripts/sync_readme.py` after adding or changing a setting; tests/contracts fails while
the README and the code disagree.
"""

from __future__ import annotations

from pathlib import Path

from callisto.mesh.settings_catalog import configuration_table

README = Path(__file__).resolve().parent.parent / "README.md"
START = "<!-- configuration-table:start -->"
END = "<!-- configuration-table:end -->"


def render(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{configuration_table()}\n{END}{tail}"


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
    print(f"updated the configuration table in {README}")
