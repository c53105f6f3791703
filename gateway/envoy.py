"""`python -m callisto.gateway.envoy`: Envoy fed by the control planes, as compose and Kubernetes
run it from the project's image.

    python -m callisto.gateway.envoy --control-plane control-plane:18000[,HOST:PORT...] \\
        --listen 0.0.0.0:8080 --admin-port 9901 [--dir /tmp/callisto-gateway]

writes the descriptor set and the xDS bootstrap (every Callisto service routed; control-plane
hosts may be DNS names), has Envoy validate it, then becomes Envoy (exec: same PID, so the
container's signals reach Envoy itself).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from callisto.gateway.config import GatewaySpec, cors_origins_from_environment
from callisto.gateway.descriptors import all_service_names
from callisto.gateway.process import (
    DESCRIPTOR_FILE,
    GatewayError,
    envoy_binary,
    validate,
    write_gateway_files,
)

# The service that answers reflection and whole-server health through the gateway.
REFLECTION_SERVICE = "callisto.persistence.v1.PersistenceService"


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _control_planes(text: str) -> tuple[tuple[str, int], ...]:
    return tuple(_host_port(item) for item in text.split(",") if item.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m callisto.gateway.envoy", description=__doc__)
    parser.add_argument(
        "--control-plane",
        type=_control_planes,
        required=True,
        help="HOST:PORT[,HOST:PORT...] of the control planes (names or IPs)",
    )
    parser.add_argument("--listen", type=_host_port, default=("0.0.0.0", 8080))
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/callisto-gateway"))
    parser.add_argument("--node-id", default="", help="default: host name and listen port")
    parser.add_argument("--concurrency", type=int, default=0, help="worker threads; 0: one per CPU")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--console", type=Path, help="a built web console to serve under /console/ (its folder)"
    )
    parser.add_argument(
        "--validate-only", action="store_true", help="write and validate, do not start Envoy"
    )
    return parser.parse_args(argv)


def spec_for(args: argparse.Namespace) -> GatewaySpec:
    address, port = args.listen
    return GatewaySpec(
        services=tuple(all_service_names()),
        control_planes=args.control_plane,
        descriptor_path=(args.dir / DESCRIPTOR_FILE).absolute(),
        listen_address=address,
        listen_port=port,
        admin_port=args.admin_port,
        node_id=args.node_id,
        reflection_service=REFLECTION_SERVICE,
        cors_allowed_origins=cors_origins_from_environment(),
        console_dir=args.console.absolute() if args.console else None,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = write_gateway_files(spec_for(args), args.dir)
    try:
        validate(config)
    except GatewayError as error:
        raise SystemExit(str(error)) from error
    if args.validate_only:
        print(config)
        return
    envoy = str(envoy_binary())
    # A dynamic base id: no hot restart is used, and several gateways may share a host.
    command = [envoy, "-c", str(config), "--use-dynamic-base-id", "--log-level", args.log_level]
    if args.concurrency:
        command += ["--concurrency", str(args.concurrency)]
    sys.stdout.flush()
    os.execv(envoy, command)


if __name__ == "__main__":
    main()
