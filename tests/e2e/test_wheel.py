"""A built wheel works outside the source checkout: `callisto up --no-models` from a scratch venv.

The wheel is installed without its dependencies into a fresh venv whose only link to this
environment is a `.pth` line naming its site-packages (for the dependencies, already installed),
so every `callisto` module, the model repository and the samples must come from the wheel itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from callisto.mesh.processes import free_port


@pytest.fixture(scope="module")
def scratch_python(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(repo_root), "-w", str(work / "dist")],
        check=True, cwd=work, timeout=300,
    )  # fmt: skip
    (wheel,) = (work / "dist").glob("callisto_mesh-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, timeout=300,
    )  # fmt: skip
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "callisto-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CALLISTO_"))}


def test_wheel_ships_every_package_and_the_deployed_data(
    scratch_python: Path, repo_root: Path, tmp_path: Path
) -> None:
    probe = (
        "import callisto, callisto.api, callisto.services.persistence.server, "
        "callisto.gateway.config, callisto.mesh.launcher, callisto.deploy as d\n"
        "print(callisto.__file__)\n"
        "print((d.model_repository() / 'llm' / 'config.pbtxt').is_file())\n"
        "print((d.samples_dir() / 'conference' / 'entities.jsonl').is_file())\n"
    )
    result = subprocess.run(
        [str(scratch_python), "-c", probe],
        cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    location, repository, samples = result.stdout.split()
    assert not Path(location).is_relative_to(repo_root)
    assert Path(location).is_relative_to(scratch_python.parent.parent)
    assert repository == samples == "True"


def test_callisto_up_without_models_runs_from_the_wheel(
    scratch_python: Path, tmp_path: Path
) -> None:
    output = tmp_path / "up.out"
    process = subprocess.Popen(
        [str(scratch_python.parent / "callisto"), "up", "--no-models",
         "--home", str(tmp_path / "home"),
         "--gateway-port", str(free_port()), "--admin-port", str(free_port()),
         "--redis-port", str(free_port())],
        cwd=tmp_path, env=_clean_env(), stdout=output.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Press Ctrl-C" not in output.read_text():
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.2)
        # The banner is printed only after a conversation was created over HTTP through Envoy.
        assert "checked: created" in output.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0, output.read_text()
