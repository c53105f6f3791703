"""Structured logs with trace ids, OpenTelemetry tracing and Prometheus metrics.

Tracing is off by default, yet W3C `traceparent` still flows through every hop: the gRPC
instrumentation always runs, and without an SDK provider its spans are non-recording ones that
carry the caller's trace context onward (and into the logs).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPC_REQUESTS = Counter(
    "callisto_rpc_requests_total", "RPCs handled, by method and status code.", ["method", "code"]
)
RPC_LATENCY = Histogram(
    "callisto_rpc_duration_seconds",
    "Time from the start of an RPC to its status, by method.",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)
RPC_IN_FLIGHT = Gauge("callisto_rpc_in_flight", "RPCs in progress, by method.", ["method"])
MALFORMED_REQUESTS = Counter(
    "callisto_rpc_malformed_requests_total",
    "Requests whose body is not a valid protobuf encoding of the method's request, by method.",
    ["method"],
)
DEPENDENCY_UP = Gauge(
    "callisto_dependency_up", "1 when a dependency answers its health probe.", ["dependency"]
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the current trace and span ids when there is a trace."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def configure_tracing(service: str, exporter: str) -> None:
    """Installs an SDK tracer provider when an exporter is chosen; `none` keeps the no-op one."""
    if exporter == "none":
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    provider = TracerProvider(resource=Resource.create({"service.name": f"callisto-{service}"}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise ValueError(f"unknown trace exporter {exporter!r}: use none, console or otlp")
    trace.set_tracer_provider(provider)


def start_metrics_server(host: str, port: int) -> int | None:
    """Serves `/metrics`; returns the bound port, or None when metrics are disabled."""
    if port < 0:
        return None
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
