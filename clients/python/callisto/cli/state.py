"""Where a running embedded mesh is, recorded by `callisto up` for the other CLI commands (and
rewritten by it whenever a child is restarted: a new PID, the same address)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

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
class ReplicaState:
    """One child of the mesh: a service replica, or Redis, Envoy, Triton..."""

    # `persistence`, `generation`... for service replicas, else the part itself (`gateway`).
    kind: str
    address: str
    pid: int
    # Times the launcher started it again after it exited.
    restarts: int = 0


@dataclass
class MeshState:
    """Endpoints and PIDs of a running mesh."""

    redis_url: str
    gateway: str
    admin: str
    # Service -> a gRPC target reaching all its replicas (`ipv4:a:p1,a:p2` with several).
    services: dict[str, str] = field(default_factory=dict)
    # Child name -> PID, every child.
    pids: dict[str, int] = field(default_factory=dict)
    control_plane: str = ""
    # Child name (`persistence-2`, `gateway`...) -> where it listens and its PID.
    replicas: dict[str, ReplicaState] = field(default_factory=dict)

    def write(self, home: Path) -> None:
        """Replaces the file in one rename, so a reader never sees half of it."""
        home.mkdir(parents=True, exist_ok=True)
        partial = home / f".{STATE_FILE}.{os.getpid()}"
        partial.write_text(json.dumps(asdict(self), indent=2) + "\n")
        partial.replace(home / STATE_FILE)

    @classmethod
    def read(cls, home: Path) -> MeshState | None:
        try:
            data: dict[str, Any] = json.loads((home / STATE_FILE).read_text())
            known = {f.name for f in fields(cls)}
            replicas = {
                name: ReplicaState(**child) for name, child in data.pop("replicas", {}).items()
            }
            return cls(**{k: v for k, v in data.items() if k in known}, replicas=replicas)
        except (OSError, ValueError, TypeError):
            return None

    @staticmethod
    def clear(home: Path) -> None:
        (home / STATE_FILE).unlink(missing_ok=True)
