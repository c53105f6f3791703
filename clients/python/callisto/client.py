"""`callisto.Client`: one connection to the mesh (gateway or a service) and its typed facades.

    import callisto

    async with await callisto.Client.connect("127.0.0.1:8080", api_key=key) as client:
        conversation = await client.persistence.create_conversation(title="demo")
        async for event in client.persistence.subscribe_events(conversation.name):
            ...
        hits = await client.retrieval.search("pricing", page_size=5)
        async for item in client.generation.generate("hello"):
            ...

- `client.channel` is a `grpc.aio.Channel` whose interceptor attaches the API key
  (`authorization: Bearer …`) to every call and `default_timeout` to every call with a single
  response that has no deadline of its own (streams run until they end unless given one).
- `client.stub(PersistenceServiceStub)` is a raw generated stub over that channel, for requests the
  facades do not build (odd or malformed ones in tests); catch `grpc.aio.AioRpcError` there and
  decode it with `callisto.errors.from_rpc_error`.
- `client.persistence`, `client.retrieval`, `client.generation`, `client.orchestration` are the
  typed facades (`callisto.persistence`, `callisto.retrieval`, `callisto.generation`,
  `callisto.orchestration`): they retry idempotent calls as `retry_policy` says
  (`callisto.retry`), raise `callisto.errors`, page and resume.
- Every facade call takes `timeout=` (seconds, the whole call including retries) and
  `metadata=` (extra headers) keywords.
"""

# `timeout` is a gRPC deadline sent to the server (and spent across retries), not a local
# cancel scope, so these functions take it the way grpc stubs do.
# ruff: noqa: ASYNC109
from __future__ import annotations

import collections
import json
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from callisto.generation import GenerationClient
from callisto.orchestration import OrchestrationClient
from callisto.persistence import PersistenceClient
from callisto.retrieval import RetrievalClient
from callisto.retry import RetryPolicy

S = TypeVar("S")

AUTHORIZATION = "authorization"
# The tenant a service principal's call acts for; honoured only with a service key, and
# stripped by the gateway from every outside request.
ON_BEHALF_OF = "x-callisto-on-behalf-of"
DEFAULT_TIMEOUT = 30.0

# The tenant to act for, or a function that tells it per call (None: send no header).
OnBehalfOf = str | Callable[[], str | None] | None


def bearer(api_key: str) -> str:
    """The `authorization` header value that carries an API key (the one place it is spelt)."""
    return f"Bearer {api_key}"


def auth_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `api_key`, for a call that speaks as another key than its channel's
    (a test acting as a second tenant over one raw stub)."""
    return ((AUTHORIZATION, bearer(api_key)),)


# Messages of up to 64 MiB each way (document uploads, exports of long conversations).
_CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
)
# A target that names its resolver (`ipv4:a:p1,b:p2`, `dns:///name:port` with a record per
# replica) stands for several replicas: calls spread over all of them, skipping one that stopped
# answering. A plain `host:port` keeps gRPC's pick-first, which reconnects on demand to a server
# that restarted, rather than after a reconnect backoff.
_BALANCED_SCHEMES = ("ipv4:", "ipv6:", "dns:")
_ROUND_ROBIN = ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))


def _target_options(target: str) -> list[tuple[str, Any]]:
    return [_ROUND_ROBIN] if target.startswith(_BALANCED_SCHEMES) else []


class _CallDetails:
    """Adds the API key to every call and the default deadline to single-response calls."""

    def __init__(
        self, api_key: str | None, default_timeout: float | None, on_behalf_of: OnBehalfOf = None
    ) -> None:
        self._authorization = bearer(api_key) if api_key else None
        self._default_timeout = default_timeout
        self._on_behalf_of = on_behalf_of

    def _details(
        self, details: grpc.aio.ClientCallDetails, single_response: bool
    ) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        # An explicit authorization header on the call wins (a test sending a wrong key).
        if self._authorization is not None and AUTHORIZATION not in metadata:
            metadata.add(AUTHORIZATION, self._authorization)
        if self._on_behalf_of is not None and ON_BEHALF_OF not in metadata:
            tenant = self._on_behalf_of if isinstance(self._on_behalf_of, str) else None
            if tenant is None and callable(self._on_behalf_of):
                tenant = self._on_behalf_of()
            if tenant:
                metadata.add(ON_BEHALF_OF, tenant)
        timeout = details.timeout
        if timeout is None and single_response:
            timeout = self._default_timeout
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files each interceptor under the first of the four kinds it is an instance of, so
# one object per kind.
class _UnaryUnary(_CallDetails, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details, True), request)


class _UnaryStream(_CallDetails, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details, False), request)


class _StreamUnary(_CallDetails, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details, True), request_iterator)


class _StreamStream(_CallDetails, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(
        self,
        continuation: Any,
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details, False), request_iterator)


class Client:
    """An async client of the mesh; make one with `await Client.connect(...)`."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        target: str,
        default_timeout: float | None,
        retry_policy: RetryPolicy,
    ) -> None:
        self.channel = channel
        self.target = target
        self.default_timeout = default_timeout
        self.retry_policy = retry_policy
        self.persistence = PersistenceClient(self)
        self.retrieval = RetrievalClient(self)
        self.generation = GenerationClient(self)
        self.orchestration = OrchestrationClient(self)

    @classmethod
    async def connect(
        cls,
        target: str,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        default_timeout: float | None = DEFAULT_TIMEOUT,
        retry_policy: RetryPolicy | None = None,
        wait_ready: float | None = None,
        options: Sequence[tuple[str, Any]] = (),
        on_behalf_of: OnBehalfOf = None,
    ) -> Client:
        """A client of `target` (`host:port` of the gateway or of a service).

        `api_key` authenticates every call; `tls` (or `root_certificates`, PEM) makes the channel
        secure; `default_timeout` (seconds, None for none) bounds single-response calls that pass
        no `timeout`; `wait_ready` (seconds) waits for the connection before returning.
        `on_behalf_of` (a service's own clients only, with a service key) names the tenant each
        call acts for: a tenant, or a function asked per call (a service passes the tenant of
        the work it is doing).
        """
        interceptors: Any = [
            kind(api_key, default_timeout, on_behalf_of)
            for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
        ]
        channel_options = [*_CHANNEL_OPTIONS, *_target_options(target), *options]
        if tls or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            channel = grpc.aio.secure_channel(
                target, credentials, options=channel_options, interceptors=interceptors
            )
        else:
            channel = grpc.aio.insecure_channel(
                target, options=channel_options, interceptors=interceptors
            )
        client = cls(
            channel,
            target=target,
            default_timeout=default_timeout,
            retry_policy=retry_policy or RetryPolicy(),
        )
        if wait_ready is not None:
            try:
                await client.wait_ready(wait_ready)
            except BaseException:
                await channel.close(None)
                raise
        return client

    @classmethod
    def connect_sync(cls, target: str, **options: Any) -> Any:
        """A `callisto.SyncClient` (blocking calls, for scripts) with the same options."""
        from callisto.sync import SyncClient

        return SyncClient.connect(target, **options)

    def stub(self, stub_type: Callable[[grpc.aio.Channel], S]) -> S:
        """A raw generated stub (`PersistenceServiceStub`, ...) over the authenticated channel."""
        return stub_type(self.channel)

    async def wait_ready(self, timeout: float) -> None:
        """Waits until the channel is connected; TimeoutError when it does not within `timeout`."""
        import asyncio

        async with asyncio.timeout(timeout):
            await self.channel.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        await self.channel.close(grace)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class _BlockingCallDetails(
    collections.namedtuple(
        "_BlockingCallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """The call details a blocking interceptor hands on (grpc leaves the class to callers)."""


class _BlockingAuth(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """The blocking channel's twin of the async interceptor: the API key on every call."""

    def __init__(self, api_key: str) -> None:
        self._authorization = bearer(api_key)

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or ())
        if not any(key == AUTHORIZATION for key, _ in metadata):
            metadata.append((AUTHORIZATION, self._authorization))
        return _BlockingCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def blocking_channel(
    target: str,
    *,
    api_key: str | None = None,
    tls: bool = False,
    root_certificates: bytes | None = None,
) -> grpc.Channel:
    """A blocking (non-asyncio) `grpc.Channel` carrying the API key, for code that needs the
    synchronous grpc client itself (a request stream that must see the server's own status when
    the server ends the call early, which grpc.aio's client races)."""
    options = [*_CHANNEL_OPTIONS, *_target_options(target)]
    if tls or root_certificates is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    if api_key is None:
        return channel
    return grpc.intercept_channel(channel, _BlockingAuth(api_key))
