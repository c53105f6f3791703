"""A small local receiver of Callisto webhooks (and HTTP tool calls), for samples and tests.

    python -m callisto.mesh.webhook_receiver --port 8787 --secret S --log deliveries.jsonl

It answers every POST: the first `--fail-first N` requests with 500 (to exercise retries);
then a request whose `Callisto-Signature` does not verify under the secret with 401; a
verified request whose `Idempotency-Key` it already acted on with 200, recorded as a duplicate
and not acted on again; any other verified request with 200, recorded as acted on. Every
request is one JSON line in the log: time, path, event, idempotency key, verified, duplicate,
acted, the status answered and the body (parsed when JSON). `GET /healthz` answers 200.

From Python (tests):

    with WebhookReceiver(secret, log_path, fail_first=2) as receiver:
        ... register receiver.url ...
        receiver.wait_for(lambda records: any(r["acted"] for r in records))

Only the standard library: it runs in any environment the SDK is installed in.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from callisto.signing import (
    DEFAULT_TOLERANCE_S,
    EVENT_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    verify,
)

MAX_BODY_BYTES = 1024 * 1024

Record = dict[str, Any]


class WebhookReceiver:
    """The receiver on a thread; `port=0` picks a free port (see `url`)."""

    def __init__(
        self,
        secret: str,
        log_path: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        fail_first: int = 0,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        status: int = 200,
        hold_s: float = 0.0,
    ) -> None:
        self.secret = secret
        # How long each answer waits after the request is recorded (a slow endpoint: a
        # sender may die between the receiver acting and its answer).
        self.hold_s = hold_s
        self.log_path = Path(log_path)
        self.fail_first = fail_first
        self.tolerance_s = tolerance_s
        self.status = status
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._requests = 0
        self._records: list[Record] = []
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        return f"http://{host}:{self.port}/hook"

    def start(self) -> WebhookReceiver:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def records(self) -> list[Record]:
        """Every request so far, oldest first."""
        with self._lock:
            return list(self._records)

    def acted(self) -> list[Record]:
        """The requests acted on: verified, first of their idempotency key."""
        return [r for r in self.records() if r["acted"]]

    def wait_for(
        self, done: Callable[[list[Record]], bool], timeout_s: float = 30.0
    ) -> list[Record]:
        """The records once `done(records)` holds; TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            records = self.records()
            if done(records):
                return records
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver saw {len(records)} requests: {records!r:.2000}")
            time.sleep(0.05)

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> int:
        """Decides the answer of one request and records it; returns its status."""
        signature = headers.get(SIGNATURE_HEADER.lower(), "")
        key = headers.get(IDEMPOTENCY_HEADER.lower(), "")
        verified = verify(self.secret, signature, body, self.tolerance_s)
        with self._lock:
            self._requests += 1
            failing = self._requests <= self.fail_first
            duplicate = verified and not failing and bool(key) and key in self._seen
            acted = verified and not failing and not duplicate
            if acted and key:
                self._seen.add(key)
            status = 500 if failing else (401 if not verified else self.status)
            if duplicate:
                status = 200
            record: Record = {
                "time": time.time(),
                "path": path,
                "event": headers.get(EVENT_HEADER.lower(), ""),
                "idempotency_key": key,
                "signature": signature,
                "verified": verified,
                "duplicate": duplicate,
                "acted": acted,
                "status": status,
                "body": _parsed(body),
            }
            self._records.append(record)
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
        return status


def _parsed(body: bytes) -> Any:
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _handler_for(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._answer(413, {"error": "body too large"})
                return
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = receiver.handle(self.path, headers, body)
            if receiver.hold_s:
                time.sleep(receiver.hold_s)
            self._answer(status, {"ok": 200 <= status < 300})

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/healthz":
                self._answer(200, {"ok": True})
            else:
                self._answer(404, {"error": "not found"})

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the JSONL log is the record; stderr stays quiet

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m callisto.mesh.webhook_receiver",
        description="Receive, verify and log Callisto webhook deliveries.",
    )
    parser.add_argument("--port", type=int, default=8787, help="port to listen on (0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--secret", required=True, help="the webhook's secret")
    parser.add_argument("--log", required=True, type=Path, help="JSON lines file of requests")
    parser.add_argument(
        "--fail-first", type=int, default=0, help="answer the first N requests with 500"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE_S,
        help="seconds a signature's timestamp may be off",
    )
    args = parser.parse_args(argv)
    receiver = WebhookReceiver(
        args.secret,
        args.log,
        host=args.host,
        port=args.port,
        fail_first=args.fail_first,
        tolerance_s=args.tolerance,
    )
    receiver.start()
    print(f"listening on {receiver.url} (log: {args.log})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()


if __name__ == "__main__":
    main()
