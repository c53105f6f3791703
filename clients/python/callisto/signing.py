"""Signatures of Callisto's webhook deliveries and HTTP tool calls (HMAC-SHA256).

Every request Callisto sends to a tenant's endpoint carries

    Callisto-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the secret>
    Idempotency-Key: <the same for every retry of the same event>
    Callisto-Event: <event type, e.g. run.done; tool.call for an HTTP tool>

A receiver checks it with the secret it registered:

    from callisto.signing import verify
    if not verify(secret, request.headers["Callisto-Signature"], raw_body):
        return 401

then drops a repeated `Idempotency-Key`. The timestamp bounds replays (`tolerance_s`); the
comparison is constant-time. The service signs with this same module.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Callisto-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "Callisto-Event"
DEFAULT_TOLERANCE_S = 300.0
SCHEME = "v1"

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "EVENT_HEADER",
    "IDEMPOTENCY_HEADER",
    "SIGNATURE_HEADER",
    "sign",
    "signed_headers",
    "verify",
]


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _mac(secret: str | bytes, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, *, timestamp: int | None = None) -> str:
    """The `Callisto-Signature` value of `body` at `timestamp` (now when None)."""
    stamp = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={stamp},{SCHEME}={_mac(secret, stamp, body)}"


def signed_headers(
    secret: str | bytes,
    body: bytes,
    *,
    idempotency_key: str = "",
    event_type: str = "",
    timestamp: int | None = None,
) -> dict[str, str]:
    """The headers of a signed JSON request (signature, idempotency key, event type)."""
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, body, timestamp=timestamp),
    }
    if idempotency_key:
        headers[IDEMPOTENCY_HEADER] = idempotency_key
    if event_type:
        headers[EVENT_HEADER] = event_type
    return headers


def verify(
    secret: str | bytes,
    header: str | None,
    body: bytes,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> bool:
    """Whether `header` (a `Callisto-Signature` value) signs `body` under `secret` with a
    timestamp within `tolerance_s` of `now`; any `v1` entry may match (a header may carry
    several during a secret rotation)."""
    if not header or len(header) > 4096:
        return False
    stamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            try:
                stamp = int(value)
            except ValueError:
                return False
        elif name == SCHEME:
            candidates.append(value)
    if stamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance_s:
        return False
    expected = _mac(secret, stamp, body)
    matched = False
    for candidate in candidates:
        # Every candidate compared (constant-time each), so timing says nothing about which.
        matched |= hmac.compare_digest(candidate.encode(), expected.encode())
    return matched
