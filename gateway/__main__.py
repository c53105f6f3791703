"""`python -m callisto.gateway render|run`: write (and validate) or run the gateway config.

    python -m callisto.gateway render --out build/gateway --listen 127.0.0.1:8080 \\
        --admin-port 9901 \\
        --upstream callisto.persistence.v1.PersistenceService=127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from callisto.gateway.config import GatewaySpec
from callisto.gateway.process import (
    DESCRIPTOR_FILE,
    EnvoyGateway,
    GatewayError,
    validate,
    write_gateway_files,
)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _upstream(text: str) -> tuple[str, tuple[str, int]]:
    service, sep, address = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected SERVICE=HOST:PORT, got {text!r}")
    return service, _host_port(address)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m callisto.gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("render", "write the descriptor set and envoy.yaml, then validate them with envoy"),
        ("run", "render, start envoy and wait until interrupted"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--out", type=Path, required=True, help="directory for the files")
        command.add_argument("--listen", type=_host_port, default=("127.0.0.1", 8080))
        command.add_argument("--admin-port", type=int, default=9901, help="bound to 127.0.0.1")
        command.add_argument(
            "--upstream",
            type=_upstream,
            action="append",
            required=True,
            metavar="SERVICE=HOST:PORT",
            help="a routed service and its gRPC server; repeat for each service",
        )
        command.add_argument("--reflection-service", help="default: the first upstream")
        command.add_argument("--rate-limit-tokens", type=int, default=1000)
        command.add_argument("--rate-limit-fill-interval", type=float, default=1.0, metavar="S")
        command.add_argument("--max-request-body-bytes", type=int, default=4 * 1024 * 1024)
        command.add_argument("--stream-idle-timeout", type=float, default=300.0, metavar="S")
        command.add_argument("--unary-timeout", type=float, default=30.0, metavar="S")
    return parser


def _spec(args: argparse.Namespace) -> GatewaySpec:
    out: Path = args.out
    return GatewaySpec(
        upstreams=dict(args.upstream),
        descriptor_path=(out / DESCRIPTOR_FILE).absolute(),
        listen_address=args.listen[0],
        listen_port=args.listen[1],
        admin_port=args.admin_port,
        reflection_service=args.reflection_service,
        rate_limit_tokens=args.rate_limit_tokens,
        rate_limit_fill_interval_s=args.rate_limit_fill_interval,
        max_request_body_bytes=args.max_request_body_bytes,
        stream_idle_timeout_s=args.stream_idle_timeout,
        unary_timeout_s=args.unary_timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        spec = _spec(args)
        if args.command == "render":
            config_path = write_gateway_files(spec, args.out)
            validate(config_path)
            print(config_path)
            return 0
        stopped = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopped.set())
        with EnvoyGateway(spec, args.out) as gateway:
            print(f"gateway on {gateway.http_url} (admin {gateway.admin_url})", flush=True)
            stopped.wait()
        return 0
    except (GatewayError, KeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
