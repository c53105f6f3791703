"""`callisto.SyncClient`: the SDK with blocking calls, for scripts and notebooks.

    with callisto.SyncClient.connect("127.0.0.1:8080", api_key=key) as client:
        conversation = client.persistence.create_conversation(title="demo")
        for event in client.persistence.subscribe_events(conversation.name):
            ...
        hits = client.retrieval.search("pricing")

It runs one `callisto.Client` on a private event loop in a daemon thread; every facade method
of the async client is there with the same arguments, blocking until done. Async iterators
(paging, `subscribe_events`, `generate`) become plain iterators that still expose their
attributes (`.text`, `.result`, `.last_sequence`). Chat and Converse sessions are async-only.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from callisto.client import Client

T = TypeVar("T")


class _Loop:
    """An event loop running in its own daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class _SyncIterator:
    """A blocking iterator over an async iterator on the private loop; other attributes pass
    through to the async object."""

    def __init__(self, loop: _Loop, source: Any) -> None:
        self._loop = loop
        self._source = source
        self._iterator = source.__aiter__()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return self._loop.run(self._iterator.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        closer = getattr(self._iterator, "aclose", None)
        if closer is not None:
            self._loop.run(closer())

    def __getattr__(self, name: str) -> Any:
        return _wrap(self._loop, getattr(self._source, name))


def _wrap(loop: _Loop, value: Any) -> Any:
    if inspect.iscoroutine(value):
        return _wrap(loop, loop.run(value))
    if hasattr(value, "__aiter__"):
        return _SyncIterator(loop, value)
    if callable(value) and (inspect.ismethod(value) or inspect.isfunction(value)):

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return _wrap(loop, value(*args, **kwargs))

        return blocking
    return value


class _SyncFacade:
    """Blocking view of one async facade (`client.persistence`, ...)."""

    def __init__(self, loop: _Loop, facade: Any) -> None:
        self._loop = loop
        self._facade = facade

    def __getattr__(self, name: str) -> Any:
        return _wrap(self._loop, getattr(self._facade, name))


class SyncClient:
    """A blocking client of the mesh; make one with `SyncClient.connect(...)`."""

    def __init__(self, loop: _Loop, client: Client) -> None:
        self._loop = loop
        # The async client underneath (its methods must run on the private loop: `run`).
        self.client = client
        self.persistence: Any = _SyncFacade(loop, client.persistence)
        self.retrieval: Any = _SyncFacade(loop, client.retrieval)
        self.generation: Any = _SyncFacade(loop, client.generation)
        self.orchestration: Any = _SyncFacade(loop, client.orchestration)

    @classmethod
    def connect(cls, target: str, **options: Any) -> SyncClient:
        """Same arguments as `Client.connect`."""
        loop = _Loop()
        try:
            client = loop.run(Client.connect(target, **options))
        except BaseException:
            loop.stop()
            raise
        return cls(loop, client)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs a coroutine of the async client (or any) on the private loop."""
        return self._loop.run(coroutine, timeout)

    def close(self) -> None:
        self._loop.run(self.client.close())
        self._loop.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
