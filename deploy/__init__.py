"""What the embedded mesh deploys, shipped inside the package: the Triton model repository and
the sample tenants' documents. Paths resolve through the installed package, so a wheel works
outside the source checkout exactly as the checkout does.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _packaged(name: str) -> Path:
    return Path(str(files(__name__).joinpath(name)))


def model_repository() -> Path:
    """The Triton model repository (`<model>/config.pbtxt`, `<model>/1/model.py`)."""
    return _packaged("triton")


def samples_dir() -> Path:
    """The bundled sample tenants and conference data."""
    return _packaged("samples")
