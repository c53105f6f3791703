"""Helpers shared by the SDK tests (a unique module name: test dirs are not packages)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import callisto
from callisto.mesh.processes import RedisServer, ServiceProcess

# Reconnects that outlast a service restart on a busy machine.
PATIENT = callisto.RetryPolicy(max_attempts=40, initial_backoff=0.1, max_backoff=0.5)


@dataclass
class Restartable:
    """A persistence service on its own Redis, both of which a test may stop and start again
    on the same ports."""

    redis: RedisServer
    service: ServiceProcess
    api_key: str

    def kill_service(self) -> None:
        self.service.kill()

    def start_service(self) -> None:
        self.service.start()
        self.service.wait_healthy()

    async def restart_service_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(self.start_service)

    async def restart_redis_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(self.redis.start)


class SeveringProxy:
    """A real TCP proxy in front of a service that can cut a connection mid-stream: the next
    connection it accepts is closed, both ways, once `cut_after` bytes went from the service to
    the client; later ones pass through. It counts the bytes each connection carried back."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self.port = 0
        # Cut the next connection after this many service-to-client bytes (None: never).
        self.cut_after: int | None = None
        # Bytes from the service per accepted connection, in order.
        self.downstream_bytes: list[int] = []
        self.cuts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> SeveringProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.downstream_bytes)
        self.downstream_bytes.append(0)
        cut_after, self.cut_after = self.cut_after, None
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, back: bool
        ) -> None:
            try:
                while data := await source.read(65536):
                    if back:
                        if cut_after is not None:
                            room = cut_after - self.downstream_bytes[index]
                            if room <= len(data):
                                sink.write(data[: max(room, 0)])
                                await sink.drain()
                                self.downstream_bytes[index] += max(room, 0)
                                self.cuts += 1
                                return
                        self.downstream_bytes[index] += len(data)
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass

        tasks = [
            asyncio.create_task(pump(reader, up_writer, False)),
            asyncio.create_task(pump(up_reader, writer, True)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the proxy is stopping
        finally:
            for task in tasks:
                task.cancel()
            for stream in (writer, up_writer):
                stream.close()
