"""Outbound HTTP requests of webhooks and HTTP tools, through the guard.

Every hop (the first URL and each redirect target) is vetted by `OutboundGuard` and the
connection goes to the vetted address: the request URL carries that IP while the Host header
(and, for https, the TLS SNI and the certificate check, through httpcore's `sni_hostname`)
name the original host. Connections are never pooled: a pooled connection is keyed by the IP
and could carry another host's request over a TLS session made for the first one. Redirects are
followed by hand (at most `max_redirects`, 307/308 keep the method and body, the others become
a GET without one), the whole exchange is bounded by `timeout_s`, and at most `max_bytes` of
the answer are read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from callisto.services.orchestration.outbound.guard import (
    OutboundGuard,
    RefusedAddress,
    RefusedUrl,
    Target,
)

REDIRECTS = (301, 302, 303, 307, 308)
USER_AGENT = "Callisto-Outbound/1"


class OutboundError(Exception):
    """A request that got no usable answer (the attempt's `error`)."""


class OutboundRefused(OutboundError):
    """A hop's URL or address is refused: retrying cannot help."""


class OutboundTimeout(OutboundError):
    """The exchange took longer than its bound."""


@dataclass(frozen=True)
class OutboundResponse:
    """The final answer of a request (after redirects)."""

    status_code: int
    body: bytes
    # The answer was longer than the bound; `body` holds its first bytes.
    truncated: bool
    content_type: str
    # The URL that answered (the last redirect's target).
    url: str
    latency_s: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


class OutboundClient:
    """One per process; safe for concurrent use."""

    def __init__(
        self,
        guard: OutboundGuard,
        *,
        timeout_s: float,
        max_redirects: int,
        max_bytes: int,
    ) -> None:
        self.guard = guard
        self.timeout_s = timeout_s
        self.max_redirects = max(0, max_redirects)
        self.max_bytes = max(1, max_bytes)
        self._http = httpx.AsyncClient(
            follow_redirects=False,
            # Proxies from the environment would connect on our behalf, past the pinning.
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
            timeout=httpx.Timeout(timeout_s),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout_s: float | None = None,
    ) -> OutboundResponse:
        """POSTs `body`; OutboundRefused, OutboundTimeout or OutboundError when no answer
        came. A non-2xx answer is returned, not raised."""
        bound = self.timeout_s if timeout_s is None else timeout_s
        started = time.perf_counter()
        try:
            async with asyncio.timeout(bound):
                return await self._exchange(url, body, headers, started, bound)
        except TimeoutError:
            raise OutboundTimeout(f"timed out after {bound:g} s") from None

    async def _exchange(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        started: float,
        bound: float,
    ) -> OutboundResponse:
        method, content = "POST", body
        current = url
        for hop in range(self.max_redirects + 1):
            target = await self._vet(current)
            status, data, truncated, content_type, location = await self._send(
                target, method, content, headers, bound
            )
            if status in REDIRECTS and location:
                if hop == self.max_redirects:
                    raise OutboundError(f"more than {self.max_redirects} redirects")
                current = str(httpx.URL(current).join(location))
                if status not in (307, 308):
                    method, content = "GET", b""
                continue
            return OutboundResponse(
                status_code=status,
                body=data,
                truncated=truncated,
                content_type=content_type,
                url=current,
                latency_s=time.perf_counter() - started,
            )
        raise AssertionError("unreachable")

    async def _vet(self, url: str) -> Target:
        try:
            return await self.guard.resolve(url)
        except RefusedUrl as error:
            raise OutboundRefused(f"refused URL {url[:200]!r}: {error}") from None
        except RefusedAddress as error:
            raise OutboundRefused(str(error)) from None
        except OSError as error:
            raise OutboundError(str(error)) from None

    async def _send(
        self,
        target: Target,
        method: str,
        content: bytes,
        headers: Mapping[str, str],
        bound: float,
    ) -> tuple[int, bytes, bool, str, str]:
        pinned = httpx.URL(target.url).copy_with(host=str(target.address))
        sent = {"User-Agent": USER_AGENT, **headers, "Host": target.host_header}
        if method == "GET":
            sent = {k: v for k, v in sent.items() if k.lower() != "content-type"}
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request = self._http.build_request(
            method,
            pinned,
            content=content or None,
            headers=sent,
            extensions=extensions,
            timeout=httpx.Timeout(bound),
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TimeoutException:
            raise OutboundTimeout(f"timed out after {bound:g} s") from None
        except httpx.HTTPError as error:
            raise OutboundError(f"connection error: {_describe(error)}") from None
        try:
            data, truncated = await self._read(response)
        except httpx.HTTPError as error:
            raise OutboundError(f"answer broke off: {_describe(error)}") from None
        finally:
            await response.aclose()
        return (
            response.status_code,
            data,
            truncated,
            response.headers.get("content-type", ""),
            response.headers.get("location", ""),
        )

    async def _read(self, response: httpx.Response) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            room = self.max_bytes - size
            if len(chunk) > room:
                chunks.append(chunk[:room])
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), False


def _describe(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text[:300]
