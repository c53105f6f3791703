"""Parse untrusted documents in worker processes that a runaway parse cannot take down with it.

python-docx inflates every part of a DOCX into memory, pypdf can spin for minutes on a crafted
20 KB PDF, and a parser holding the GIL stalls a thread pool's whole process: inside the service
any of these would stall every tenant's calls. :class:`ParserPool` parses and chunks each document
in a worker of a pebble process pool; each worker's address space is capped with ``RLIMIT_AS``, and
a parse that runs past its time is killed together with its worker, which pebble replaces. At most
``workers`` documents are parsed at once, and at most ``per_tenant`` of one tenant, so no tenant can
hold every worker; the others wait on the event loop, which never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import resource
import signal
from collections.abc import AsyncIterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol

from pebble import ProcessExpired, ProcessPool

from callisto.services.retrieval.chunking import ChunkOptions, chunk_document
from callisto.services.retrieval.errors import BackendUnavailable, DocumentTooComplex
from callisto.services.retrieval.models import Chunk
from callisto.services.retrieval.parsing import ParseOptions, parse_document

# Imported once by the fork server, so a replacement worker starts in milliseconds.
_PRELOAD = ["callisto.services.retrieval.parse_pool", "pypdf", "docx", "bs4"]


class DocumentParser(Protocol):
    """Turns a document's bytes into chunks without blocking the event loop."""

    async def parse_and_chunk(
        self,
        data: bytes,
        mime_type: str,
        filename: str,
        parse: ParseOptions,
        chunk: ChunkOptions,
        tenant: str = "",
    ) -> list[Chunk]: ...


def parse_and_chunk(
    data: bytes, mime_type: str, filename: str, parse: ParseOptions, chunk: ChunkOptions
) -> list[Chunk]:
    """Parse and chunk in the calling thread (blocking)."""
    return chunk_document(parse_document(data, mime_type, filename, parse), chunk)


class ThreadParser:
    """Parses in a thread of this process: only for trusted documents (tools, benchmarks, tests of
    later stages), since a runaway parse here can be neither bounded nor stopped."""

    async def parse_and_chunk(
        self,
        data: bytes,
        mime_type: str,
        filename: str,
        parse: ParseOptions,
        chunk: ChunkOptions,
        tenant: str = "",
    ) -> list[Chunk]:
        return await asyncio.to_thread(parse_and_chunk, data, mime_type, filename, parse, chunk)


@dataclass(frozen=True, slots=True)
class ParserLimits:
    """How many workers parse at once and what one document's parse may cost."""

    workers: int = 2
    # Workers one tenant's documents may occupy at once; 0: half of them (at least one).
    per_tenant: int = 0
    timeout_s: float = 60.0
    memory_bytes: int = 2 * 1024**3
    # A worker is replaced after this many documents, so heap fragmentation cannot build up.
    documents_per_worker: int = 500


_memory_bytes = 0


def _start_worker(memory_bytes: int) -> None:
    """Runs in each new worker before its first document."""
    global _memory_bytes
    # pebble's SIGTERM handler only runs between bytecodes: die at once, even inside C code.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        _memory_bytes = memory_bytes


def _parse_in_worker(
    data: bytes, mime_type: str, filename: str, parse: ParseOptions, chunk: ChunkOptions
) -> list[Chunk]:
    try:
        return parse_and_chunk(data, mime_type, filename, parse, chunk)
    except MemoryError:
        raise DocumentTooComplex(
            "content", f"parsing it needs more than the {_memory_bytes}-byte memory limit"
        ) from None


class ParserPool:
    """Worker processes that parse documents under :class:`ParserLimits`."""

    def __init__(self, limits: ParserLimits | None = None) -> None:
        self.limits = limits or ParserLimits()
        self._slots = asyncio.Semaphore(self.limits.workers)
        self._per_tenant = self.limits.per_tenant or max(1, self.limits.workers // 2)
        # tenant -> (its semaphore, how many calls hold or wait for it)
        self._tenants: dict[str, tuple[asyncio.Semaphore, int]] = {}
        self._lock = asyncio.Lock()
        self._pool: ProcessPool | None = None

    def _new_pool(self) -> ProcessPool:
        # A fork server, not fork: the service's own process runs gRPC and Milvus threads.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        pool = ProcessPool(
            max_workers=self.limits.workers,
            max_tasks=self.limits.documents_per_worker,
            initializer=_start_worker,
            initargs=(self.limits.memory_bytes,),
            context=context,
        )
        # Reading `active` starts the workers (and the fork server): blocking, so off the loop.
        if not pool.active:
            raise RuntimeError("the parse worker pool did not start")
        return pool

    async def start(self) -> None:
        """Start the workers now rather than on the first document."""
        await self._running()

    async def _running(self) -> ProcessPool:
        async with self._lock:
            if self._pool is None or not self._pool.active:
                broken, self._pool = self._pool, None
                if broken is not None:
                    await asyncio.to_thread(_stop, broken)
                self._pool = await asyncio.to_thread(self._new_pool)
            return self._pool

    @contextlib.asynccontextmanager
    async def _tenant_slot(self, tenant: str) -> AsyncIterator[None]:
        slots, users = self._tenants.get(tenant) or (asyncio.Semaphore(self._per_tenant), 0)
        self._tenants[tenant] = (slots, users + 1)
        try:
            async with slots:
                yield
        finally:
            slots, users = self._tenants[tenant]
            if users == 1:
                del self._tenants[tenant]
            else:
                self._tenants[tenant] = (slots, users - 1)

    async def parse_and_chunk(
        self,
        data: bytes,
        mime_type: str,
        filename: str,
        parse: ParseOptions,
        chunk: ChunkOptions,
        tenant: str = "",
    ) -> list[Chunk]:
        """Chunks of the document; :class:`DocumentTooComplex` when its parse ran out of time or
        memory (the worker is then replaced), the parser's own typed errors otherwise."""
        timeout = self.limits.timeout_s
        async with self._tenant_slot(tenant), self._slots:
            pool = await self._running()
            try:
                future = pool.schedule(
                    _parse_in_worker,
                    args=(data, mime_type, filename, parse, chunk),
                    timeout=timeout if timeout > 0 else None,
                )
            except RuntimeError as exc:  # the pool broke between the check and the call
                raise BackendUnavailable("document", "the document parser is restarting") from exc
            try:
                # Cancelling this await (a client gone) cancels the future: pebble kills the worker.
                return await asyncio.wrap_future(future)
            except TimeoutError as exc:
                raise DocumentTooComplex(
                    "content", f"parsing it took longer than {timeout:g} s and was stopped"
                ) from exc
            except ProcessExpired as exc:
                raise DocumentTooComplex(
                    "content", f"the parser died on it (exit code {exc.exitcode})"
                ) from exc
            except BrokenProcessPool as exc:
                raise BackendUnavailable("document", "the document parser is restarting") from exc

    async def close(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(_stop, pool)


def _stop(pool: ProcessPool) -> None:
    pool.stop()  # type: ignore[no-untyped-call]
    pool.join()


__all__ = [
    "DocumentParser",
    "ParserLimits",
    "ParserPool",
    "ThreadParser",
    "parse_and_chunk",
]
