"""gRPC-Web, the browser's way in (the console and the TypeScript client), under hostile bodies:
every malformed or oversized request gets an error status and the next good call still works."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Iterator

import httpx
import pytest

from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import ServiceProcess

SERVICE = "callisto.persistence.v1.PersistenceService"
METHOD = f"/{SERVICE}/ListConversations"
# A short unary bound, so a body that never completes a frame is answered soon.
UNARY_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def web_gateway(
    persistence: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnvoyGateway]:
    gateway = EnvoyGateway.on_free_ports(
        {SERVICE: ("127.0.0.1", persistence.port)},
        tmp_path_factory.mktemp("gateway"),
        unary_timeout_s=UNARY_TIMEOUT_S,
    )
    gateway.start()
    yield gateway
    gateway.stop()


def _frame(payload: bytes, *, declared: int | None = None) -> bytes:
    return b"\x00" + struct.pack(">I", len(payload) if declared is None else declared) + payload


def _grpc_status(answer: httpx.Response) -> int | None:
    """The grpc-status of a gRPC-Web answer: in its headers, or in its trailer frame."""
    if "grpc-status" in answer.headers:
        return int(answer.headers["grpc-status"])
    body = answer.content
    while len(body) >= 5:
        flag, size = body[0], struct.unpack(">I", body[1:5])[0]
        chunk, body = body[5 : 5 + size], body[5 + size :]
        if flag & 0x80:
            for line in chunk.decode().split("\r\n"):
                if line.lower().startswith("grpc-status:"):
                    return int(line.split(":", 1)[1])
    return None


def _call(gateway: EnvoyGateway, key: str, body: bytes, content_type: str) -> httpx.Response:
    return httpx.post(
        gateway.http_url + METHOD,
        content=body,
        headers={
            "content-type": content_type,
            "x-grpc-web": "1",
            "authorization": f"Bearer {key}",
        },
        timeout=30,
    )


BINARY = "application/grpc-web+proto"
TEXT = "application/grpc-web-text"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(_frame(b"\xff\xff\xff\xff\x0f"), BINARY, id="undecodable-message"),
        pytest.param(_frame(b"", declared=1 << 30), BINARY, id="frame-longer-than-its-body"),
        pytest.param(b"\x00\x00", BINARY, id="truncated-frame-header"),
        pytest.param(b"not base64 at all!!", TEXT, id="text-that-is-not-base64"),
        pytest.param(
            base64.b64encode(_frame(b"\x08" + b"\xff" * 20)), TEXT, id="overlong-varint-in-text"
        ),
        pytest.param(_frame(b"\x0a" * (6 * 1024 * 1024)), BINARY, id="larger-than-the-body-limit"),
    ],
)
def test_a_malformed_grpc_web_request_gets_an_error_and_the_next_call_works(
    web_gateway: EnvoyGateway, api_key: str, body: bytes, content_type: str
) -> None:
    started = time.monotonic()
    answer = _call(web_gateway, api_key, body, content_type)
    status = _grpc_status(answer)
    assert answer.status_code != 200 or status not in (None, 0), (answer, answer.content[:200])
    # Bounded: at worst the route's timeout ends a request whose frame never completes.
    assert time.monotonic() - started < UNARY_TIMEOUT_S + 5
    good = _call(
        web_gateway,
        api_key,
        _frame(pb.ListConversationsRequest(page_size=1).SerializeToString()),
        BINARY,
    )
    assert good.status_code == 200 and _grpc_status(good) == 0, good.content[:200]


def test_a_forged_key_over_grpc_web_is_unauthenticated(web_gateway: EnvoyGateway) -> None:
    answer = _call(
        web_gateway,
        f"cal_0123456789abcdef_{'x' * 43}",
        _frame(pb.ListConversationsRequest(page_size=1).SerializeToString()),
        BINARY,
    )
    assert _grpc_status(answer) == 16  # UNAUTHENTICATED
