"""Where a running embedded mesh is, recorded by `callisto up` for the other CLI commands."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_HOME = Path(".callisto")
STATE_FILE = "mesh.json"


def mesh_home() -> Path:
    return Path(os.environ.get("CALLISTO_HOME", DEFAULT_HOME)).expanduser().resolve()


def default_target() -> str:
    """Where client commands connect without `--target`: CALLISTO_TARGET, else the running
    mesh's gateway, else 127.0.0.1:8080."""
    if os.environ.get("CALLISTO_TARGET"):
        return os.environ["CALLISTO_TARGET"]
    state = MeshState.read(mesh_home())
    if state is not None:
        return state.gateway.removeprefix("http://")
    return "127.0.0.1:8080"


@dataclass
class MeshState:
    """Endpoints and PIDs of a running mesh."""

    redis_url: str
    gateway: str
    admin: str
    services: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    def write(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        (home / STATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, home: Path) -> MeshState | None:
        try:
            data = json.loads((home / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return cls(**data)

    @staticmethod
    def clear(home: Path) -> None:
        (home / STATE_FILE).unlink(missing_ok=True)
