"""Child processes of the embedded mesh (and of the tests): started in their own process group,
logged to a file, stopped by PID — SIGTERM first, SIGKILL after a grace period — so nothing
outlives the launcher. Children also get SIGTERM from the kernel if the launcher dies abruptly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _dying_with_parent(argv: list[str]) -> list[str]:
    """`argv` run through util-linux `setpriv --pdeathsig`, so the kernel sends it SIGTERM if
    this process dies. Done by exec rather than a `preexec_fn`, which would run Python between
    fork and exec and can crash the child when gRPC threads are active in this process."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return argv
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


class ProcessError(RuntimeError):
    """A child failed to start or to become ready; the message holds its log's tail."""


class ManagedProcess:
    """One child process with its own log file and process group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ProcessError(f"{self.name} was not started")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def exit_code(self) -> int | None:
        """How it ended (negative: the signal that killed it); None while it runs."""
        return None if self._process is None else self._process.poll()

    def start(self) -> None:
        """Starts the child (again after it exited: same argv, log appended); from the main
        thread it also dies with this process."""
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The kernel sends the parent-death signal when the creating *thread* exits, so it is
        # only safe from the main thread (a worker thread may end long before this process).
        on_main_thread = threading.current_thread() is threading.main_thread()
        argv = _dying_with_parent(self.argv) if on_main_thread else self.argv
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM to the whole process group, SIGKILL after `grace`; returns the exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                process.wait()
        # Reap anything left in the group (e.g. a backend stub that ignored SIGTERM).
        self._signal_group(signal.SIGKILL)
        return process.returncode

    def kill(self) -> None:
        """SIGKILL at once, as a crash would."""
        if self._process is not None and self._process.poll() is None:
            self._signal_group(signal.SIGKILL)
            self._process.wait()

    def send_signal(self, sig: signal.Signals) -> None:
        """Signals the whole process group (e.g. SIGTERM to exercise a graceful shutdown)."""
        self._signal_group(sig)

    def wait(self, timeout: float) -> int:
        """Waits for the child to exit; returns its exit code."""
        if self._process is None:
            raise ProcessError(f"{self.name} was not started")
        return self._process.wait(timeout)

    def check_alive(self) -> None:
        if self._process is None or self._process.poll() is not None:
            code = None if self._process is None else self._process.returncode
            raise ProcessError(f"{self.name} exited (code {code}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(found).exists():
        raise ProcessError("redis-server is not installed (apt-get install -y redis-server)")
    return found


class RedisServer(ManagedProcess):
    """A private redis-server: own data dir, own port, append-only file on."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendfsync: str = "everysec",
        host: str = "127.0.0.1",
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError("appendfsync must be always, everysec or no")
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port(host)
        self.appendfsync = appendfsync
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            "redis",
            [
                redis_server_binary(),
                "--bind", host,
                "--port", str(self.port),
                "--dir", str(data_dir),
                "--appendonly", "yes",
                "--appendfsync", appendfsync,
                "--save", "",
                "--protected-mode", "yes",
                "--daemonize", "no",
            ],
            log_path=data_dir / "redis.log",
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        super().start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.ping():
                return
            time.sleep(0.05)
        raise ProcessError(f"redis did not answer PING within {timeout} s:\n{self.log_tail()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


class GrpcServerProcess(ManagedProcess):
    """A child serving gRPC with `grpc.health.v1` on `host:port`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        host: str,
        port: int,
        log_path: Path,
        env: Mapping[str, str],
    ) -> None:
        self.host = host
        self.port = port
        super().__init__(name, argv, log_path=log_path, env=env)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def serving_now(self) -> bool:
        """Whether it answers health SERVING right now (a quick check)."""
        return self.health(0.5) == int(health_pb2.HealthCheckResponse.SERVING)

    def health(self, timeout: float = 1.0) -> int:
        """The health status it reports (a HealthCheckResponse.ServingStatus value)."""
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            except grpc.RpcError:
                return int(health_pb2.HealthCheckResponse.UNKNOWN)
            return int(reply.status)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Waits until its health says SERVING; raises `ProcessError` with the log's tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.health() == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.1)
        raise ProcessError(f"{self.name} not SERVING within {timeout} s:\n{self.log_tail()}")


class ServiceProcess(GrpcServerProcess):
    """A Callisto service (`python -m callisto.services.<service>`) on a given port."""

    def __init__(
        self,
        service: str,
        port: int,
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        name: str | None = None,
    ) -> None:
        """`name` tells replicas apart in logs and messages (default: the service)."""
        self.service = service
        merged = dict(os.environ)
        merged.update(env or {})
        merged["CALLISTO_GRPC_HOST"] = host
        merged["CALLISTO_GRPC_PORT"] = str(port)
        merged.setdefault("PYTHONUNBUFFERED", "1")
        super().__init__(
            name or service,
            [sys.executable, "-m", f"callisto.services.{service}"],
            host=host,
            port=port,
            log_path=log_path,
            env=merged,
        )

    @contextlib.contextmanager
    def serving(self, timeout: float = 30.0) -> Iterator[ServiceProcess]:
        """The service started and SERVING for the block, stopped after it (also when it
        never became healthy)."""
        self.start()
        try:
            self.wait_healthy(timeout)
            yield self
        finally:
            self.stop()


class MilvusLiteServer(ManagedProcess):
    """`milvus-lite server` on loopback with its data in `data_dir`, for several retrieval
    replicas (a Milvus Lite file has one owner). Its write-ahead log keeps what a `kill -9`
    interrupted."""

    def __init__(self, data_dir: Path, port: int, *, log_path: Path, host: str = "127.0.0.1"):
        self.host = host
        self.port = port
        # Next to this Python (a venv's console script) or on PATH; else the module itself.
        script = Path(sys.executable).parent / "milvus-lite"
        found = str(script) if script.exists() else shutil.which("milvus-lite")
        command = [found] if found else [sys.executable, "-m", "milvus_lite.cmdline"]
        super().__init__(
            "milvus",
            # Its default host is every interface, with no auth: always bind loopback.
            [*command, "server", "--data-dir", str(data_dir), "--host", host,
             "--port", str(port)],
            log_path=log_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def answering(self) -> bool:
        """Whether it accepts connections (it has no grpc.health)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((self.host, self.port)) == 0

    def start_and_wait(self, timeout: float = 60.0) -> None:
        """Starts it and waits until it accepts connections."""
        self.start()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.answering:
                return
            time.sleep(0.1)
        raise ProcessError(
            f"milvus-lite server not listening within {timeout} s:\n{self.log_tail()}"
        )
