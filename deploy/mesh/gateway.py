"""Envoy and its xDS control plane as supervised children of the launcher (and the tests):
start each on its files or settings, wait until it is ready, stop it."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from callisto.gateway.config import GatewaySpec
from callisto.gateway.process import (
    ACCESS_LOG_FILE,
    CONFIG_FILE,
    DESCRIPTOR_FILE,
    LOG_FILE,
    GatewayError,
    envoy_binary,
    validate,
    write_gateway_files,
)
from callisto.mesh.processes import GrpcServerProcess, ManagedProcess, free_port


class ControlPlaneProcess(GrpcServerProcess):
    """`python -m callisto.gateway.control_plane` on `host:port`, reading the replica registry
    in the Redis at `redis_url` (`env` adds or overrides settings, e.g. the poll interval)."""

    def __init__(
        self,
        port: int,
        *,
        redis_url: str,
        log_path: Path,
        host: str = "127.0.0.1",
        env: Mapping[str, str] | None = None,
    ) -> None:
        merged = dict(os.environ)
        merged.update(env or {})
        merged["CALLISTO_GRPC_HOST"] = host
        merged["CALLISTO_CONTROL_PLANE_PORT"] = str(port)
        merged["CALLISTO_REDIS_URL"] = redis_url
        merged.setdefault("PYTHONUNBUFFERED", "1")
        super().__init__(
            "control-plane",
            [sys.executable, "-m", "callisto.gateway.control_plane"],
            host=host,
            port=port,
            log_path=log_path,
            env=merged,
        )


class EnvoyGateway:
    """One Envoy process serving `spec`, its files kept in `directory`.

    Several may run at once: each takes a dynamic base id (its own shared-memory region and
    hot-restart socket). The spec's `descriptor_path` is written on start.
    """

    def __init__(
        self,
        spec: GatewaySpec,
        directory: Path,
        *,
        concurrency: int = 1,
        log_level: str = "warning",
        stop_grace_s: float = 5.0,
        log_flush_interval_ms: int = 1000,
    ) -> None:
        self.spec = spec
        self.directory = directory
        self.concurrency = concurrency
        self.log_level = log_level
        self.stop_grace_s = stop_grace_s
        self.log_flush_interval_ms = log_flush_interval_ms
        self.config_path = directory / CONFIG_FILE
        self.log_path = directory / LOG_FILE
        self.access_log_path = directory / ACCESS_LOG_FILE
        self._process: ManagedProcess | None = None

    @classmethod
    def on_free_ports(
        cls,
        upstreams: dict[str, tuple[str, int]],
        directory: Path,
        **spec_fields: Any,
    ) -> EnvoyGateway:
        """A gateway on free loopback ports (listener and admin) routing `upstreams`; the first
        upstream answers reflection unless `reflection_service` says otherwise."""
        spec = GatewaySpec(
            upstreams=upstreams,
            descriptor_path=directory / DESCRIPTOR_FILE,
            listen_port=free_port(),
            admin_port=free_port(),
            **spec_fields,
        )
        return cls(spec, directory)

    @property
    def http_url(self) -> str:
        return f"http://{self.spec.listen_address}:{self.spec.listen_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.spec.listen_address}:{self.spec.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.spec.admin_port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self, ready_timeout_s: float = 20.0) -> None:
        """Write and validate the files, start Envoy and wait until `/ready` says LIVE."""
        if self._process is not None:
            raise GatewayError("already started")
        write_gateway_files(self.spec, self.directory)
        validate(self.config_path)
        command = [
            str(envoy_binary()),
            "-c",
            str(self.config_path),
            "--use-dynamic-base-id",
            "--concurrency",
            str(self.concurrency),
            "--log-level",
            self.log_level,
            "--log-path",
            str(self.log_path),
            # Access logs are buffered; Envoy's default (10 s) hides requests from a tail -f.
            "--file-flush-interval-msec",
            str(self.log_flush_interval_ms),
        ]
        # stdout carries the JSON access log.
        self._process = ManagedProcess("gateway", command, log_path=self.access_log_path)
        self._process.start()
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self._process is not None
            if not self._process.running:
                raise GatewayError(f"envoy exited: {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.admin_url}/ready", timeout=1) as response:
                    if response.read().strip() == b"LIVE":
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise GatewayError(f"envoy not LIVE after {timeout_s}s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period; idempotent."""
        process, self._process = self._process, None
        if process is not None:
            process.stop(self.stop_grace_s)

    async def start_async(self, ready_timeout_s: float = 20.0) -> None:
        """`start` off the event loop (validation and the readiness poll block)."""
        await asyncio.to_thread(self.start, ready_timeout_s)

    async def stop_async(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> EnvoyGateway:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EnvoyGateway:
        await self.start_async()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop_async()
