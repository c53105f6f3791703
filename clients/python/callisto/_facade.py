"""What every service facade shares: its client, and unary calls with deadline and retries."""

# `timeout` is a gRPC deadline sent to the server (and spent across retries), not a local
# cancel scope, so these functions take it the way grpc stubs do.
# ruff: noqa: ASYNC109
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from callisto.retry import NO_RETRY, call_with_retry

if TYPE_CHECKING:
    from callisto.client import Client

Req = TypeVar("Req")
Resp = TypeVar("Resp")

# Extra headers of one call (the API key is added by the channel).
Metadata = Sequence[tuple[str, str]]


class Facade:
    """A typed view of one service over the client's channel."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def _deadline(self, timeout: float | None) -> float | None:
        return self._client.default_timeout if timeout is None else timeout

    async def _unary(
        self,
        method: Any,
        request: Req,
        *,
        idempotent: bool,
        timeout: float | None,
        metadata: Metadata | None,
        response_type: type[Resp],
    ) -> Resp:
        """`method(request)` with the call's deadline over all attempts; idempotent calls are
        retried as the client's policy and the server's RetryInfo say."""

        async def attempt(remaining: float | None) -> Resp:
            response: Resp = await method(request, timeout=remaining, metadata=metadata)
            return response

        return await call_with_retry(
            attempt,
            policy=self._client.retry_policy if idempotent else NO_RETRY,
            timeout=self._deadline(timeout),
            idempotent=idempotent,
        )
