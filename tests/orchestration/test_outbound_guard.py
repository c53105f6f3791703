"""The outbound guard and client against real local HTTP servers: refused schemes, userinfo,
loopback, private, link-local (the metadata address), IPv4-mapped and hostnames resolving to
loopback, unless the configuration allows their network; connections pinned to the vetted
address with the original Host; redirects followed by hand, each target vetted (a redirect to
a refused address is refused); bounded answers and time. And the SDK's signature helper."""

from __future__ import annotations

import time

import pytest
from outbound_test_support import LocalServer, Seen

from callisto.services.orchestration.outbound import (
    OutboundClient,
    OutboundError,
    OutboundGuard,
    OutboundRefused,
    OutboundTimeout,
    RefusedAddress,
    RefusedUrl,
    check_url,
)
from callisto.signing import SIGNATURE_HEADER, sign, signed_headers, verify

pytestmark = pytest.mark.asyncio(loop_scope="session")

REFUSED = [
    "http://127.0.0.1/hook",
    "http://127.1/hook",
    "http://2130706433/hook",
    "http://0x7f000001/hook",
    "http://localhost/hook",
    "http://10.1.2.3/hook",
    "http://192.168.0.10/hook",
    "http://172.16.5.5/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/hook",
    "http://0.0.0.0/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:169.254.169.254]/hook",
    "http://[fd00::1]/hook",
    "http://[fe80::1]/hook",
    "http://224.0.0.1/hook",
    "http://240.0.0.1/hook",
]


def client(allowed: str = "", **options: float) -> OutboundClient:
    return OutboundClient(
        OutboundGuard(allowed),
        timeout_s=float(options.get("timeout_s", 3.0)),
        max_redirects=int(options.get("max_redirects", 3)),
        max_bytes=int(options.get("max_bytes", 65536)),
    )


@pytest.mark.parametrize("url", REFUSED)
async def test_loopback_private_link_local_and_mapped_addresses_are_refused(url: str) -> None:
    with pytest.raises(RefusedAddress, match="refused address"):
        await OutboundGuard("").resolve(url)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://example.com/",
        "http://user:pw@93.184.215.14/",
        "http://93.184.215.14/" + "a" * 3000,
        "http:///nohost",
        "http://93.184.215.14:0/",
        "http://93.184.215.14/a b",
        "",
    ],
)
async def test_non_http_urls_userinfo_and_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(RefusedUrl):
        await OutboundGuard("").resolve(url)


async def test_public_address_passes_and_allowed_networks_open_private_ones() -> None:
    assert await check_url(OutboundGuard(""), "https://93.184.215.14/hook") == ""
    allowed = OutboundGuard("127.0.0.1/32, 10.0.0.0/8")
    assert await check_url(allowed, "http://127.0.0.1:9/hook") == ""
    assert await check_url(allowed, "http://localhost:9/hook") == ""
    assert await check_url(allowed, "http://10.9.9.9/hook") == ""
    assert await check_url(allowed, "http://[::ffff:127.0.0.1]:9/hook") == ""
    # Allowing loopback allows only what it names.
    assert "link-local" in await check_url(allowed, "http://169.254.169.254/")
    assert "private" in await check_url(allowed, "http://192.168.1.1/")


async def test_a_bad_allowed_network_fails_at_start() -> None:
    with pytest.raises(ValueError):
        OutboundGuard("127.0.0.1/33")


async def test_request_goes_to_the_vetted_address_with_the_original_host() -> None:
    with LocalServer(
        lambda seen, i: (200, {"Content-Type": "application/json"}, b'{"ok":1}')
    ) as server:
        port = server.url.rsplit(":", 1)[1]
        outbound = client("127.0.0.1/32")
        try:
            response = await outbound.post(
                f"http://localhost:{port}/hook", b'{"a":1}', {"Content-Type": "application/json"}
            )
        finally:
            await outbound.aclose()
    assert response.status_code == 200 and response.body == b'{"ok":1}'
    (seen,) = server.requests
    assert seen.method == "POST" and seen.path == "/hook" and seen.body == b'{"a":1}'
    assert seen.headers["host"] == f"localhost:{port}"


async def test_loopback_is_refused_at_send_time_without_configuration() -> None:
    with LocalServer(lambda seen, i: (200, {}, b"")) as server:
        outbound = client("")
        try:
            with pytest.raises(OutboundRefused, match="refused address"):
                await outbound.post(server.url + "/hook", b"{}", {})
        finally:
            await outbound.aclose()
    assert server.requests == []


@pytest.mark.parametrize(
    "location", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "ftp://x/"]
)
async def test_redirect_from_an_allowed_address_to_a_refused_one_is_refused(location: str) -> None:
    with LocalServer(lambda seen, i: (302, {"Location": location}, b"")) as server:
        outbound = client("127.0.0.1/32")
        try:
            with pytest.raises(OutboundRefused, match="refused"):
                await outbound.post(server.url + "/hook", b"{}", {})
        finally:
            await outbound.aclose()
    assert len(server.requests) == 1


async def test_redirects_are_followed_up_to_the_limit_each_vetted() -> None:
    def answer(seen: Seen, index: int) -> tuple[int, dict[str, str], bytes]:
        if seen.path == "/final":
            return 200, {}, b"done"
        if seen.path == "/keep":
            return 307, {"Location": "/final"}, b""
        return 302, {"Location": "/keep"}, b""

    with LocalServer(answer) as server:
        outbound = client("127.0.0.1/32")
        try:
            response = await outbound.post(server.url + "/start", b'{"x":1}', {})
            # 302 turns the POST into a GET; 307 keeps the method.
            assert [r.method for r in server.requests] == ["POST", "GET", "GET"]
            assert response.status_code == 200 and response.url.endswith("/final")
            looping = client("127.0.0.1/32", max_redirects=1)
            try:
                with pytest.raises(OutboundError, match="more than 1 redirects"):
                    await looping.post(server.url + "/start", b"{}", {})
            finally:
                await looping.aclose()
        finally:
            await outbound.aclose()


async def test_answers_are_bounded_in_size_and_time() -> None:
    def answer(seen: Seen, index: int) -> tuple[int, dict[str, str], bytes]:
        if seen.path == "/slow":
            time.sleep(1.5)
        return 200, {}, b"x" * 5000

    with LocalServer(answer) as server:
        outbound = client("127.0.0.1/32", max_bytes=100, timeout_s=0.5)
        try:
            response = await outbound.post(server.url + "/big", b"{}", {})
            assert response.truncated and len(response.body) == 100
            started = time.monotonic()
            with pytest.raises(OutboundTimeout):
                await outbound.post(server.url + "/slow", b"{}", {})
            assert time.monotonic() - started < 1.2
        finally:
            await outbound.aclose()


async def test_signature_verifies_and_rejects_tampering_other_secrets_and_old_stamps() -> None:
    body = b'{"type":"run.done"}'
    header = sign("s" * 20, body)
    assert verify("s" * 20, header, body)
    assert not verify("s" * 20, header, body + b" ")
    assert not verify("t" * 20, header, body)
    assert not verify("s" * 20, "", body)
    assert not verify("s" * 20, "t=abc,v1=00", body)
    old = sign("s" * 20, body, timestamp=int(time.time()) - 600)
    assert not verify("s" * 20, old, body, tolerance_s=300)
    assert verify("s" * 20, old, body, tolerance_s=900)
    headers = signed_headers("s" * 20, body, idempotency_key="k1", event_type="run.done")
    assert headers["Idempotency-Key"] == "k1" and headers["Callisto-Event"] == "run.done"
    assert verify("s" * 20, headers[SIGNATURE_HEADER], body)
