"""`python -m callisto.mesh.healthcheck HOST:PORT [SERVICE]`: a container health probe.

Asks a gRPC server's `grpc.health.v1` Check for SERVICE (the whole server when left out) and
exits 0 only when the answer is SERVING; any other status, an error or no answer within the
timeout exits 1, the code Docker and Kubernetes exec probes read as unhealthy. It imports only
grpc and the health stubs, so a probe every few seconds stays cheap.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HEALTHY = 0
UNHEALTHY = 1


def check(target: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    """(SERVING?, what was found) for `service` at `target` within `timeout` seconds."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            return False, f"{code.name}: {error.details() if isinstance(error, grpc.Call) else ''}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m callisto.mesh.healthcheck",
        description="Exit 0 when a gRPC server reports SERVING, else 1.",
    )
    parser.add_argument("target", help="HOST:PORT of the gRPC server")
    parser.add_argument("service", nargs="?", default="", help="service name; empty: the server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    args = parser.parse_args(argv)
    serving, found = check(args.target, args.service, args.timeout)
    name = args.service or "(server)"
    print(f"{args.target} {name}: {found}", file=sys.stdout if serving else sys.stderr)
    return HEALTHY if serving else UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
