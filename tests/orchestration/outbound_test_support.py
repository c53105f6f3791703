"""A mesh of its own for the webhook and HTTP tool tests, and the local HTTP servers they call.

`OutboundMesh` is a private Redis, the real persistence service and one real orchestration
process started with the given outbound settings (generation and retrieval are not needed by
these RPCs, so their targets are left unreachable). It is private because every orchestration
process sweeps the deliveries due in its Redis: a process that refuses loopback (the session's
default one) would otherwise fail the deliveries these tests send to a local receiver.

`LocalServer` is a real HTTP server on a thread that answers by a function of the request
(redirects, failures, slow answers) and keeps every request it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from orchestration_test_support import connect_backends, new_key, service_key
from redis.asyncio import Redis

import callisto
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.outbound import client_from
from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.webhooks import WebhookDispatcher, WebhookStore

SECRET = "whsec-0123456789abcdef-test"
LOOPBACK_ALLOWED = {
    "CALLISTO_OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32",
    "CALLISTO_WEBHOOK_RETRY_BASE_S": "0.3",
    "CALLISTO_WEBHOOK_MAX_ATTEMPTS": "4",
    "CALLISTO_OUTBOUND_TIMEOUT_S": "3",
}


@dataclass
class OutboundMesh:
    redis: RedisServer
    persistence: ServiceProcess
    orchestration: ServiceProcess
    env: dict[str, str]
    keys: dict[str, str] = field(default_factory=dict)

    def key(self, tenant: str) -> str:
        if tenant not in self.keys:
            self.keys[tenant] = new_key(self.redis.url, tenant)
        return self.keys[tenant]

    def settings(self) -> OrchestrationSettings:
        """The orchestration process's outbound settings, for an in-process dispatcher."""
        return OrchestrationSettings(
            persistence_target=self.persistence.address,
            generation_target=self.env["CALLISTO_GENERATION_TARGET"],
            retrieval_target=self.env["CALLISTO_RETRIEVAL_TARGET"],
            outbound_allowed_networks=self.env.get("CALLISTO_OUTBOUND_ALLOWED_NETWORKS", ""),
            outbound_timeout_s=float(self.env.get("CALLISTO_OUTBOUND_TIMEOUT_S", "10")),
            webhook_retry_base_s=float(self.env.get("CALLISTO_WEBHOOK_RETRY_BASE_S", "1")),
            webhook_max_attempts=int(self.env.get("CALLISTO_WEBHOOK_MAX_ATTEMPTS", "5")),
        )


@contextlib.contextmanager
def outbound_mesh(workdir: Path, outbound_env: dict[str, str]) -> Iterator[OutboundMesh]:
    redis = RedisServer(workdir / "redis")
    redis.start()
    try:
        base = {
            "CALLISTO_REDIS_URL": redis.url,
            "CALLISTO_AUTH_CACHE_SECONDS": "0",
            "CALLISTO_HEALTH_INTERVAL_SECONDS": "0.2",
            "CALLISTO_SHUTDOWN_GRACE_SECONDS": "2",
            "CALLISTO_LOG_LEVEL": "INFO",
        }
        persistence = ServiceProcess(
            "persistence", free_port(), env=base, log_path=workdir / "persistence.log"
        )
        with persistence.serving(30):
            env = {
                **base,
                "CALLISTO_PERSISTENCE_TARGET": persistence.address,
                # Unused by these RPCs: nothing listens there.
                "CALLISTO_GENERATION_TARGET": f"127.0.0.1:{free_port()}",
                "CALLISTO_RETRIEVAL_TARGET": f"127.0.0.1:{free_port()}",
                "CALLISTO_ORCHESTRATION_DEFAULT_MODEL": "models/toy_llm",
                **outbound_env,
            }
            orchestration = ServiceProcess(
                "orchestration", free_port(), env=env, log_path=workdir / "orchestration.log"
            )
            with orchestration.serving(60):
                yield OutboundMesh(redis, persistence, orchestration, env)
    finally:
        redis.stop()


@contextlib.asynccontextmanager
async def client_of(mesh: OutboundMesh, tenant: str) -> AsyncIterator[callisto.Client]:
    key = await asyncio.to_thread(mesh.key, tenant)
    async with await callisto.Client.connect(mesh.orchestration.address, api_key=key) as client:
        yield client


@contextlib.asynccontextmanager
async def in_process_dispatcher(
    mesh: OutboundMesh,
) -> AsyncIterator[tuple[WebhookDispatcher, Backends]]:
    """A dispatcher of the test process over the mesh's persistence and Redis, as a replica
    of the orchestration process would have (the tests bind the tenant)."""
    settings = mesh.settings()
    backends = await connect_backends(
        await service_key(mesh.redis.url),
        persistence=settings.persistence_target,
        generation=settings.generation_target,
        retrieval=settings.retrieval_target,
    )
    redis = Redis.from_url(mesh.redis.url)
    outbound = client_from(settings)
    dispatcher = WebhookDispatcher(
        WebhookStore(backends.persistence, outbound),
        backends.persistence,
        redis,
        outbound,
        settings,
    )
    try:
        yield dispatcher, backends
    finally:
        await dispatcher.stop()
        await redis.aclose()
        await backends.close()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], bytes]


class LocalServer:
    """A real HTTP server on 127.0.0.1 answering by `answer(request, index)`."""

    def __init__(self, answer: Callable[[Seen, int], Answer]) -> None:
        self.answer = answer
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                )
                with server._lock:
                    server.requests.append(seen)
                    index = len(server.requests) - 1
                status, headers, body = server.answer(seen, index)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = _serve
            do_GET = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def field_violations(error: grpc.aio.AioRpcError | callisto.errors.CallistoError) -> dict[str, str]:
    """The field violations of an SDK error."""
    assert isinstance(error, callisto.errors.CallistoError)
    return dict(error.field_violations)


def module_mesh(outbound_env: dict[str, str]) -> Any:
    """A module-scoped fixture of an `OutboundMesh` with `outbound_env`."""

    @pytest.fixture(scope="module")
    def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OutboundMesh]:
        with outbound_mesh(tmp_path_factory.mktemp("outbound-mesh"), outbound_env) as built:
            yield built

    return mesh
