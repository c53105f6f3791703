"""Which URLs webhooks and HTTP tools may reach (SSRF guard).

Only `http`/`https` URLs without userinfo, at most `MAX_URL_CHARS` long. The host is resolved
with the event loop's getaddrinfo (in its executor, never blocking the loop) and every
resolved address is checked: loopback, link-local (169.254.169.254 included), private, unique
local, shared (CGNAT), multicast, unspecified, reserved and any other non-global address, and
the IPv4-mapped / IPv4-compatible / 6to4 / NAT64 spellings of those, are refused unless they
fall inside one of the configured `outbound_allowed_networks`. The caller connects to the
vetted address itself (see client.py), so a DNS answer that changes between this check and the
connection cannot steer a request to a refused address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

MAX_URL_CHARS = 2048
SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
# A name that takes longer than this to resolve is treated as unresolvable.
RESOLVE_TIMEOUT_S = 5.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class RefusedUrl(ValueError):
    """The URL itself may not be used (scheme, userinfo, length, malformed)."""


class RefusedAddress(ValueError):
    """The URL's host is, or resolves only to, addresses outbound requests may not reach."""


class UnresolvedHost(OSError):
    """The URL's host does not resolve (now: a later attempt may succeed)."""


@dataclass(frozen=True)
class Target:
    """A vetted request target: the URL as given and the address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    address: Address

    @property
    def host_header(self) -> str:
        """The Host header of the original URL (port only when not the scheme's default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def parse_networks(text: str) -> list[Network]:
    """The CIDRs of a comma-separated list (`outbound_allowed_networks`); ValueError on a bad
    one, so a typo fails the process at start-up instead of silently allowing nothing."""
    networks: list[Network] = []
    for part in text.split(","):
        part = part.strip()
        if part:
            networks.append(ipaddress.ip_network(part, strict=False))
    return networks


def split_url(url: str) -> SplitResult:
    """The parts of an acceptable URL; RefusedUrl saying why otherwise."""
    if not url:
        raise RefusedUrl("is required")
    if len(url) > MAX_URL_CHARS:
        raise RefusedUrl(f"must be at most {MAX_URL_CHARS} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise RefusedUrl("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise RefusedUrl(f"is not a valid URL ({error})") from None
    if parts.scheme.lower() not in SCHEMES:
        raise RefusedUrl("must be an http:// or https:// URL")
    if "@" in parts.netloc:
        raise RefusedUrl("must not carry a user name or password")
    if not parts.hostname:
        raise RefusedUrl("must name a host")
    if port == 0:
        raise RefusedUrl("must not use port 0")
    return parts


def refusal(address: Address, allowed: Sequence[Network]) -> str:
    """Why `address` may not be reached ("" when it may)."""
    if any(address in network for network in allowed):
        return ""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        if any(embedded in network for network in allowed):
            return ""
        reason = _kind(embedded)
        return f"{reason} (as {address})" if reason else ""
    return _kind(address)


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, compatible, 6to4, NAT64)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    packed = int(address)
    # ::a.b.c.d (deprecated IPv4-compatible), not :: or ::1 themselves.
    if packed >> 32 == 0 and packed > 1:
        return ipaddress.IPv4Address(packed)
    return None


def _kind(address: Address) -> str:
    if address.is_unspecified:
        return "unspecified address"
    if address.is_loopback:
        return "loopback address"
    if address.is_link_local:
        return "link-local address"
    if address.is_multicast:
        return "multicast address"
    if isinstance(address, ipaddress.IPv6Address) and address in ipaddress.ip_network("fc00::/7"):
        return "unique-local address"
    if address.is_private:
        return "private address"
    if address.is_reserved:
        return "reserved address"
    if not address.is_global:
        return "non-public address"
    return ""


class OutboundGuard:
    """Vets URLs against the configured allowed networks."""

    def __init__(self, allowed_networks: str | Sequence[Network] = "") -> None:
        self.allowed: list[Network] = (
            parse_networks(allowed_networks)
            if isinstance(allowed_networks, str)
            else list(allowed_networks)
        )

    async def resolve(self, url: str) -> Target:
        """The first acceptable address of the URL's host; RefusedUrl, RefusedAddress or
        UnresolvedHost."""
        parts = split_url(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or DEFAULT_PORTS[scheme]
        addresses = await self._addresses(host, port)
        reasons: list[str] = []
        for address in addresses:
            reason = refusal(address, self.allowed)
            if not reason:
                return Target(url=url, scheme=scheme, host=host, port=port, address=address)
            reasons.append(f"{address}: {reason}")
        raise RefusedAddress(f"refused address for host {host!r}: " + "; ".join(reasons[:4]))

    async def _addresses(self, host: str, port: int) -> list[Address]:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [literal]
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                infos = await loop.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except (OSError, UnicodeError, TimeoutError) as error:
            raise UnresolvedHost(f"host {host!r} does not resolve ({error})") from None
        found: list[Address] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            try:
                # Scope ids (fe80::1%eth0) are cut off: the address is what is checked.
                address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            except ValueError:
                continue
            if address not in found:
                found.append(address)
        if not found:
            raise UnresolvedHost(f"host {host!r} does not resolve")
        return found
