"""Envoy configuration for the Callisto gateway, generated from a typed `GatewaySpec`.

One listener speaks HTTP/1.1 and h2c on the same port. A request meets, in order:
CORS -> local rate limit -> gRPC-Web -> health routing (Lua) -> gRPC-JSON transcoder -> router.
Routes are one per service (plus one per streaming method, which must not carry the unary
timeout, and one per unary method with a timeout of its own; conversation runs may also stay
silent longer than the stream idle timeout while they wait for a human or a tool); the
transcoder rewrites an HTTP/JSON request into its gRPC path and clears the route cache, so
transcoded requests and native gRPC requests share the same service routes.

`grpc.health.v1` names the service it asks about in the request body, which routes cannot
match: a Lua filter reads the one request message of `/grpc.health.v1.Health/*` calls, puts
the service name in a header and recomputes the route, so each service's health is answered by
that service. An empty name (the server as a whole) and names no routed service carries go to
the reflection service, which answers for itself and NOT_FOUND for names it does not serve.

Where the upstreams are: in static mode each service's one address is a cluster of the bootstrap;
in xDS mode the clusters and their endpoints come from the control planes over ADS (see
`callisto.gateway.control_plane`), while the listener, routes and transcoder stay here. Either
way a cluster is built by `clusters.py`, and unary routes replay calls as the contract's
`idempotency_level` allows (`retries.py`).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from callisto.client import ON_BEHALF_OF
from callisto.gateway.clusters import (
    HTTP_PROTOCOL_OPTIONS,
    ClusterPolicy,
    cluster_name,
    is_ip,
    static_cluster_config,
)
from callisto.gateway.console import console_files, console_routes, largest_file_bytes
from callisto.gateway.descriptors import find_service, http_annotated_methods, is_server_streaming
from callisto.gateway.retries import is_idempotent, retry_policy

Config = dict[str, Any]

_TYPE = "type.googleapis.com/"
HCM_TYPE = (
    _TYPE + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
CORS_TYPE = _TYPE + "envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY_TYPE = _TYPE + "envoy.extensions.filters.http.cors.v3.CorsPolicy"
RATELIMIT_TYPE = _TYPE + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
GRPC_WEB_TYPE = _TYPE + "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
TRANSCODER_TYPE = _TYPE + "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
LUA_TYPE = _TYPE + "envoy.extensions.filters.http.lua.v3.Lua"
ROUTER_TYPE = _TYPE + "envoy.extensions.filters.http.router.v3.Router"
FILTER_CONFIG_TYPE = _TYPE + "envoy.config.route.v3.FilterConfig"
STDOUT_LOG_TYPE = _TYPE + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
HTTP_PROTOCOL_OPTIONS_TYPE = _TYPE + HTTP_PROTOCOL_OPTIONS

TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
CORS = "envoy.filters.http.cors"

# The response header that marks a request refused by the local rate limiter.
RATE_LIMITED_HEADER = "x-local-rate-limit"
# The descriptor key of the per-API-key token buckets (its value: the `authorization` header).
RATE_LIMIT_KEY = "api_key"
# Set by the health-routing Lua filter from the request body; never taken from the client.
HEALTH_SERVICE_HEADER = "x-callisto-health-service"

# Unary methods that may legitimately run longer than the unary timeout, and how long they may.
# A whole document in one request is parsed, chunked and embedded before the call returns.
LONG_UNARY_METHODS: dict[str, float] = {
    "callisto.retrieval.v1.RetrievalService/IngestDocument": 600.0,
    # Up to three generations of a whole cast on the CPU model (the service stops its model
    # attempts within the caller's deadline and answers with its template).
    "callisto.orchestration.v1.OrchestrationService/SuggestAgents": 120.0,
}

# Streams that may stay silent for long between events, and how long each may: a conversation
# run waits for a human turn or an approval, or for a slow tool, with nothing to send meanwhile.
# The other streams keep `stream_idle_timeout_s`.
QUIET_STREAM_METHODS: dict[str, float] = {
    "callisto.orchestration.v1.OrchestrationService/Converse": 3600.0,
    "callisto.orchestration.v1.OrchestrationService/RunConversation": 3600.0,
    "callisto.orchestration.v1.OrchestrationService/StreamConversation": 3600.0,
}

REFLECTION_PREFIXES = (
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
)
HEALTH_PREFIX = "/grpc.health.v1.Health/"

# gRPC-Web clients send these; browsers must be allowed to send and read them cross-origin.
_CORS_ALLOW_HEADERS = (
    "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization,traceparent,tracestate,"
    "x-request-id,accept"
)
_CORS_EXPOSE_HEADERS = "grpc-status,grpc-message,grpc-status-details-bin,x-request-id"

# What every request leaves in the JSON access log (stdout).
_ACCESS_LOG_FORMAT: dict[str, str] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS(NUMBER)%",
    "response_flags": "%RESPONSE_FLAGS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "traceparent": "%REQ(TRACEPARENT)%",
    "user_agent": "%REQ(USER-AGENT)%",
}


@dataclass(frozen=True, kw_only=True)
class GatewaySpec:
    """What the gateway listens on, which services it routes and how it finds their replicas.

    Two modes, exactly one given: static (`upstreams`: one address per service, written into
    the bootstrap) or xDS (`services` routed, their clusters and endpoints sent by the control
    planes at `control_planes` over ADS). Durations are in seconds. Only the routed services
    (`routed_services`) are routed and transcoded.
    """

    # Static mode: service full name -> (host, port) of the gRPC server that implements it.
    upstreams: dict[str, tuple[str, int]] = field(default_factory=dict)
    # xDS mode: the routed services (full names) ...
    services: tuple[str, ...] = ()
    # ... and where their control planes serve ADS (IPs or names Envoy resolves); any one of
    # them is enough, and with all of them gone Envoy keeps serving its last configuration.
    control_planes: tuple[tuple[str, int], ...] = ()
    # Descriptor set written by `descriptors.descriptor_set_bytes` (absolute path).
    descriptor_path: Path
    listen_address: str = "127.0.0.1"
    listen_port: int = 8080
    # The admin interface is always bound to 127.0.0.1: it can stop the server.
    admin_port: int = 9901
    # How this Envoy names itself to the control planes (their logs); empty: the host name
    # and listen port. Every gateway of a deployment shares `node_cluster`.
    node_id: str = ""
    node_cluster: str = "callisto-gateway"
    # The service whose upstream answers server reflection and health; the first one by default.
    reflection_service: str | None = None
    # Local rate limit: one token bucket per API key (the `authorization` header value), so one
    # tenant exhausting its bucket never refuses another's calls. Requests without a key share
    # one bucket of the same size. At most `rate_limit_max_keys` buckets are kept (least
    # recently used evicted; an evicted key starts again with a full bucket).
    rate_limit_tokens: int = 1000
    rate_limit_fill_interval_s: float = 1.0
    rate_limit_max_keys: int = 10_000
    # Browser origins allowed to call cross-origin (exact `scheme://host[:port]`), besides the
    # gateway's own origin. Others get no CORS allow headers, so browsers refuse the answer.
    cors_allowed_origins: tuple[str, ...] = ()
    # Largest HTTP/JSON request body the transcoder buffers; also bounds connection buffers.
    max_request_body_bytes: int = 4 * 1024 * 1024
    # Largest unary HTTP/JSON response body the transcoder buffers.
    max_response_body_bytes: int = 16 * 1024 * 1024
    # A stream (or request) with no bytes in either direction for this long is reset.
    stream_idle_timeout_s: float = 300.0
    # Whole-request bound for unary RPCs; also the most a gRPC deadline may ask for on them.
    unary_timeout_s: float = 30.0
    # Per-method bounds (`package.Service/Method` -> seconds) that replace `unary_timeout_s`.
    method_timeouts_s: dict[str, float] = field(default_factory=lambda: dict(LONG_UNARY_METHODS))
    # Per-method idle bounds of streams (`package.Service/Method` -> seconds) that replace
    # `stream_idle_timeout_s` for them.
    stream_idle_timeouts_s: dict[str, float] = field(
        default_factory=lambda: dict(QUIET_STREAM_METHODS)
    )
    # Most a gRPC deadline may ask for on a streaming RPC (they have no route timeout).
    max_stream_duration_s: float = 3600.0
    # Idempotent unary calls (the contract's `idempotency_level`): how often Envoy replays one
    # that met an unavailable or reset replica, and how long one attempt may take (at most
    # half the route's timeout, so a replay fits in it).
    idempotent_retries: int = 2
    retry_per_try_timeout_s: float = 10.0
    connect_timeout_s: float = 2.0
    # How often each upstream's grpc.health.v1 status is checked.
    health_check_interval_s: float = 5.0
    max_request_headers_kb: int = 60
    # A built web console (its folder holds index.html and assets/) served under /console/;
    # None serves none.
    console_dir: Path | None = None

    def __post_init__(self) -> None:
        if bool(self.upstreams) == bool(self.services or self.control_planes):
            raise ValueError(
                "a gateway needs either upstreams (static) or services and control planes (xDS)"
            )
        if self.services and not self.control_planes:
            raise ValueError("an xDS gateway needs at least one control plane")
        if self.control_planes and not self.services:
            raise ValueError("an xDS gateway needs at least one routed service")
        if len(set(self.services)) != len(self.services):
            raise ValueError("a routed service is listed twice")
        for host, port in self.control_planes:
            if not host or not 0 < port < 65536:
                raise ValueError(f"control plane {host}:{port} is not a host and port")
        if (
            self.reflection_service is not None
            and self.reflection_service not in self.routed_services
        ):
            raise ValueError(f"reflection service {self.reflection_service!r} is not routed")
        for name in self.routed_services:
            find_service(name)  # fails early, with the known names, on a typo
        for method_path in self.method_timeouts_s:
            service_name, _, method_name = method_path.partition("/")
            if method_name not in find_service(service_name).methods_by_name:
                raise ValueError(f"no method {method_path!r} for a route timeout")
        for method_path in self.stream_idle_timeouts_s:
            service_name, _, method_name = method_path.partition("/")
            method = find_service(service_name).methods_by_name.get(method_name)
            if method is None or not (is_server_streaming(method) or method.client_streaming):
                raise ValueError(f"no streaming method {method_path!r} for an idle timeout")
        for origin in self.cors_allowed_origins:
            if not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"CORS origin {origin!r} must read scheme://host[:port]")
        if self.idempotent_retries < 0 or self.retry_per_try_timeout_s <= 0:
            raise ValueError("retries must be >= 0 and the per-try timeout positive")

    @property
    def xds(self) -> bool:
        """Whether clusters and endpoints come from the control planes."""
        return bool(self.control_planes)

    @property
    def routed_services(self) -> tuple[str, ...]:
        """The services this gateway routes (full names), in either mode."""
        return self.services if self.xds else tuple(self.upstreams)

    @property
    def reflection_upstream(self) -> str:
        return self.reflection_service or self.routed_services[0]

    @property
    def cluster_policy(self) -> ClusterPolicy:
        """What this spec's upstream clusters carry (the control plane sends the defaults)."""
        return ClusterPolicy(
            connect_timeout_s=self.connect_timeout_s,
            buffer_limit_bytes=self.max_request_body_bytes,
            health_check_interval_s=self.health_check_interval_s,
        )

    @property
    def own_origins(self) -> tuple[str, ...]:
        """The origins a browser gives pages served from this gateway's own address."""
        hosts = {"127.0.0.1", "localhost"}
        if self.listen_address not in ("0.0.0.0", "::"):
            hosts.add(
                f"[{self.listen_address}]" if ":" in self.listen_address else self.listen_address
            )
        return tuple(f"http://{host}:{self.listen_port}" for host in sorted(hosts))

    @property
    def allowed_origins(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.own_origins, *self.cors_allowed_origins)))


CORS_ORIGINS_VARIABLE = "CALLISTO_GATEWAY_CORS_ORIGINS"


def cors_origins_from_environment(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The extra allowed CORS origins of `CALLISTO_GATEWAY_CORS_ORIGINS` (comma-separated)."""
    raw = (os.environ if environ is None else environ).get(CORS_ORIGINS_VARIABLE, "")
    return tuple(origin.strip().rstrip("/") for origin in raw.split(",") if origin.strip())


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def transcoded_services(spec: GatewaySpec) -> list[str]:
    """Routed services with at least one `google.api.http`-annotated RPC."""
    return [name for name in spec.routed_services if http_annotated_methods(find_service(name))]


def _transcoder(spec: GatewaySpec, *, server_sent_events: bool) -> Config:
    return {
        "proto_descriptor": str(spec.descriptor_path),
        "services": transcoded_services(spec),
        "print_options": {
            # Clients see every field (zeros, false, empty strings) rather than guessing defaults;
            # field names stay lowerCamelCase, the proto3 JSON mapping every SDK expects.
            "always_print_primitive_fields": True,
            "preserve_proto_field_names": False,
            # One JSON object per message instead of one growing JSON array: clients can parse
            # each event as it arrives. SSE frames each message as `data: {...}\n\n`.
            "stream_newline_delimited": not server_sent_events,
            "stream_sse_style_delimited": server_sent_events,
        },
        # Errors come back as a JSON google.rpc.Status with the matching HTTP status code.
        "convert_grpc_status": True,
        # Tracking/cache-busting parameters added by browsers and proxies must not break calls.
        "ignore_unknown_query_parameters": True,
        "request_validation_options": {
            # An unknown HTTP path is a 404 here, never an opaque gRPC call upstream.
            "reject_unknown_method": True,
        },
        "max_request_body_size": spec.max_request_body_bytes,
        "max_response_body_size": spec.max_response_body_bytes,
    }


def _grpc_route(prefix_or_path: Config, cluster: str, *, timeout_s: float, max_s: float) -> Config:
    return {
        # No `grpc: {}` matcher: the route is chosen (by the CORS filter) before grpc_web turns a
        # gRPC-Web content type into application/grpc, and non-gRPC requests that reach here
        # were already refused by the transcoder's reject_unknown_method.
        "match": prefix_or_path,
        "route": {
            "cluster": cluster,
            # With max_stream_duration set, Envoy ignores the route timeout (its "new
            # timeouts"): the bound is max_stream_duration when the client sends no
            # grpc-timeout, else the client's grpc-timeout capped at max_s; 0 is unbounded.
            "timeout": _duration(timeout_s),
            "max_stream_duration": {
                "max_stream_duration": _duration(timeout_s),
                "grpc_timeout_header_max": _duration(max_s),
            },
        },
    }


def _routes(spec: GatewaySpec) -> list[Config]:
    routes: list[Config] = []
    if spec.console_dir is not None:
        # Static files answer before any gRPC route; the transcoder would refuse them as
        # unknown methods.
        routes += console_routes(
            console_files(spec.console_dir),
            disabled_filters={TRANSCODER: {"@type": FILTER_CONFIG_TYPE, "disabled": True}},
        )
    routes += [
        {
            # Server streams as server-sent events when asked for; otherwise the listener-level
            # transcoder emits newline-delimited JSON. Only the transcoder's per-route config is
            # read here: it rewrites the path to /pkg.Service/Method and the request is routed
            # again by the service routes below.
            "name": "http_json_server_sent_events",
            "match": {
                "safe_regex": {"regex": "/v[0-9]+/.*"},
                "headers": [
                    {
                        "name": "accept",
                        "string_match": {"contains": "text/event-stream", "ignore_case": True},
                    }
                ],
            },
            "direct_response": {"status": 404},
            "typed_per_filter_config": {
                # The per-route config of this filter is a whole GrpcJsonTranscoder.
                TRANSCODER: {
                    "@type": TRANSCODER_TYPE,
                    **_transcoder(spec, server_sent_events=True),
                }
            },
        }
    ]
    reflection_cluster = cluster_name(spec.reflection_upstream)
    for service_name in spec.routed_services:
        # The health of one service, named in the request body (header set by the Lua filter).
        # Watch is a stream: no route timeout.
        routes.append(
            _grpc_route(
                {
                    "prefix": HEALTH_PREFIX,
                    "headers": [
                        {
                            "name": HEALTH_SERVICE_HEADER,
                            "string_match": {"exact": service_name},
                        }
                    ],
                },
                cluster_name(service_name),
                timeout_s=0,
                max_s=spec.max_stream_duration_s,
            )
        )
    for prefix in (*REFLECTION_PREFIXES, HEALTH_PREFIX):
        # Reflection streams (grpcurl keeps the stream open for a session).
        routes.append(
            _grpc_route(
                {"prefix": prefix},
                reflection_cluster,
                timeout_s=0,
                max_s=spec.max_stream_duration_s,
            )
        )
    for service_name in spec.routed_services:
        service = find_service(service_name)
        cluster = cluster_name(service_name)
        for method in service.methods:
            method_path = f"{service_name}/{method.name}"
            if is_server_streaming(method) or method.client_streaming:
                # Streams are bounded by the idle timeout and the client's deadline, never
                # by a fixed route timeout: a conversation run lasts as long as it needs.
                # No retries: a stream ends UNAVAILABLE and the SDK resumes it.
                route = _grpc_route(
                    {"path": f"/{method_path}"},
                    cluster,
                    timeout_s=0,
                    max_s=spec.max_stream_duration_s,
                )
                idle_s = spec.stream_idle_timeouts_s.get(method_path)
                if idle_s is not None:
                    route["route"]["idle_timeout"] = _duration(idle_s)
                routes.append(route)
            elif (timeout_s := spec.method_timeouts_s.get(method_path)) is not None:
                route = _grpc_route(
                    {"path": f"/{method_path}"},
                    cluster,
                    timeout_s=timeout_s,
                    max_s=timeout_s,
                )
                # A long unary call sends nothing until it answers: the stream idle timeout
                # must not reset it before its own bound. No per-try timeout: a call meant to
                # run long would only start its work again.
                route["route"]["idle_timeout"] = _duration(
                    max(timeout_s, spec.stream_idle_timeout_s)
                )
                route["route"]["retry_policy"] = retry_policy(
                    idempotent=is_idempotent(method), retries=spec.idempotent_retries
                )
                routes.append(route)
            elif is_idempotent(method):
                route = _grpc_route(
                    {"path": f"/{method_path}"},
                    cluster,
                    timeout_s=spec.unary_timeout_s,
                    max_s=spec.unary_timeout_s,
                )
                route["route"]["retry_policy"] = retry_policy(
                    idempotent=True,
                    retries=spec.idempotent_retries,
                    per_try_timeout_s=min(spec.retry_per_try_timeout_s, spec.unary_timeout_s / 2),
                )
                routes.append(route)
        # The service's other unary calls: replayed only when they never reached a replica.
        route = _grpc_route(
            {"prefix": f"/{service_name}/"},
            cluster,
            timeout_s=spec.unary_timeout_s,
            max_s=spec.unary_timeout_s,
        )
        route["route"]["retry_policy"] = retry_policy(
            idempotent=False, retries=spec.idempotent_retries
        )
        routes.append(route)
    return routes


def _cors_policy(spec: GatewaySpec) -> Config:
    return {
        "@type": CORS_POLICY_TYPE,
        "allow_origin_string_match": [{"exact": origin} for origin in spec.allowed_origins],
        "allow_methods": "GET, PUT, DELETE, POST, PATCH, OPTIONS",
        "allow_headers": _CORS_ALLOW_HEADERS,
        "expose_headers": _CORS_EXPOSE_HEADERS,
        "max_age": "1728000",
    }


# Reads the one request message of a grpc.health.v1 call (a 5-byte gRPC frame header, then a
# HealthCheckRequest whose field 1 is the service name) and routes on the name. LuaJIT is Lua
# 5.1: no bit operators, hence the arithmetic. A malformed or compressed message leaves the
# header unset, and the default health route's upstream answers it.
HEALTH_ROUTING_LUA = f"""
local PREFIX = "{HEALTH_PREFIX}"
local HEADER = "{HEALTH_SERVICE_HEADER}"

local function varint(bytes, at, last)
  local value, scale = 0, 1
  while at <= last do
    local byte = bytes:byte(at)
    value = value + (byte % 128) * scale
    at = at + 1
    if byte < 128 then return value, at end
    scale = scale * 128
  end
  return nil, at
end

local function service_name(bytes)
  if #bytes < 5 or bytes:byte(1) ~= 0 then return nil end
  local size = ((bytes:byte(2) * 256 + bytes:byte(3)) * 256 + bytes:byte(4)) * 256 + bytes:byte(5)
  local at, last, name = 6, 5 + size, ""
  if last > #bytes then return nil end
  while at <= last do
    local key
    key, at = varint(bytes, at, last)
    if key == nil then return nil end
    local wire = key % 8
    if wire == 0 then
      local skipped
      skipped, at = varint(bytes, at, last)
      if skipped == nil then return nil end
    elseif wire == 1 then
      at = at + 8
    elseif wire == 5 then
      at = at + 4
    elseif wire == 2 then
      local length
      length, at = varint(bytes, at, last)
      if length == nil or at + length - 1 > last then return nil end
      if key == 10 then name = bytes:sub(at, at + length - 1) end
      at = at + length
    else
      return nil
    end
  end
  if at ~= last + 1 then return nil end
  return name
end

function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove(HEADER)
  local path = headers:get(":path") or ""
  if path:sub(1, #PREFIX) ~= PREFIX then return end
  local body = handle:body()
  if body == nil then return end
  local name = service_name(body:getBytes(0, body:length()))
  if name ~= nil and name ~= "" then
    -- body() yielded: the headers object taken before it is out of scope now.
    handle:headers():add(HEADER, name)
    handle:clearRouteCache()
  end
end
"""


def _rate_limiter(spec: GatewaySpec) -> Config:
    bucket = {
        "max_tokens": spec.rate_limit_tokens,
        "tokens_per_fill": spec.rate_limit_tokens,
        "fill_interval": _duration(spec.rate_limit_fill_interval_s),
    }
    return {
        "@type": RATELIMIT_TYPE,
        "stat_prefix": "http_local_rate_limiter",
        # The bucket of requests that carry no key.
        "token_bucket": bucket,
        # One descriptor per request from its `authorization` header (absent header, no
        # descriptor: the shared bucket above). The entry without a value is a wildcard: Envoy
        # keeps one token bucket per distinct value, the LRU-bounded set below.
        "rate_limits": [
            {
                "actions": [
                    {
                        "request_headers": {
                            "header_name": "authorization",
                            "descriptor_key": RATE_LIMIT_KEY,
                        }
                    }
                ]
            }
        ],
        "descriptors": [{"entries": [{"key": RATE_LIMIT_KEY}], "token_bucket": bucket}],
        "max_dynamic_descriptors": spec.rate_limit_max_keys,
        # A keyed request spends only its own bucket, never the shared one.
        "always_consume_default_token_bucket": False,
        "filter_enabled": {
            "runtime_key": "local_rate_limit_enabled",
            "default_value": {"numerator": 100, "denominator": "HUNDRED"},
        },
        "filter_enforced": {
            "runtime_key": "local_rate_limit_enforced",
            "default_value": {"numerator": 100, "denominator": "HUNDRED"},
        },
        "response_headers_to_add": [
            {
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                "header": {"key": RATE_LIMITED_HEADER, "value": "true"},
            }
        ],
        # gRPC callers see RESOURCE_EXHAUSTED instead of UNAVAILABLE for a 429.
        "rate_limited_as_resource_exhausted": True,
    }


def _http_filters(spec: GatewaySpec) -> list[Config]:
    return [
        {"name": CORS, "typed_config": {"@type": CORS_TYPE}},
        {"name": "envoy.filters.http.local_ratelimit", "typed_config": _rate_limiter(spec)},
        # After grpc_web, so gRPC-Web health calls arrive here as plain gRPC frames.
        {"name": "envoy.filters.http.grpc_web", "typed_config": {"@type": GRPC_WEB_TYPE}},
        {
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": LUA_TYPE,
                "default_source_code": {"inline_string": HEALTH_ROUTING_LUA},
            },
        },
        {
            "name": TRANSCODER,
            "typed_config": {
                "@type": TRANSCODER_TYPE,
                **_transcoder(spec, server_sent_events=False),
            },
        },
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
    ]


def _listener(spec: GatewaySpec) -> Config:
    return {
        "name": "callisto_gateway",
        "address": {
            "socket_address": {"address": spec.listen_address, "port_value": spec.listen_port}
        },
        "per_connection_buffer_limit_bytes": spec.max_request_body_bytes,
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM_TYPE,
                            "stat_prefix": "callisto_gateway",
                            # HTTP/1.1 (curl, browsers) and h2c (gRPC, grpcurl -plaintext).
                            "codec_type": "AUTO",
                            "stream_idle_timeout": _duration(spec.stream_idle_timeout_s),
                            "max_request_headers_kb": spec.max_request_headers_kb,
                            # A stream that fails after its 200 can only report the gRPC status
                            # in trailers; without this HTTP/1.1 clients would lose it.
                            "http_protocol_options": {"enable_trailers": True},
                            # Keep the caller's x-request-id so logs correlate end to end.
                            "generate_request_id": True,
                            "preserve_external_request_id": True,
                            "access_log": [
                                {
                                    "name": "envoy.access_loggers.stdout",
                                    "typed_config": {
                                        "@type": STDOUT_LOG_TYPE,
                                        "log_format": {"json_format": _ACCESS_LOG_FORMAT},
                                    },
                                }
                            ],
                            "route_config": {
                                "name": "callisto_routes",
                                # Only a service principal inside the mesh may act for a
                                # tenant; no outside request carries that claim through.
                                "request_headers_to_remove": [ON_BEHALF_OF],
                                # Under xDS the clusters arrive after the bootstrap is read:
                                # a route to one not there yet answers 503 until it is.
                                "validate_clusters": not spec.xds,
                                **_console_body_limit(spec),
                                "virtual_hosts": [
                                    {
                                        "name": "callisto",
                                        "domains": ["*"],
                                        "typed_per_filter_config": {CORS: _cors_policy(spec)},
                                        "routes": _routes(spec),
                                    }
                                ],
                            },
                            "http_filters": _http_filters(spec),
                        },
                    }
                ]
            }
        ],
    }


def _console_body_limit(spec: GatewaySpec) -> Config:
    """Direct responses are capped at 4 KiB unless the route table allows more: room for the
    console's largest file."""
    if spec.console_dir is None:
        return {}
    return {
        "max_direct_response_body_size_bytes": largest_file_bytes(console_files(spec.console_dir))
    }


# The bootstrap cluster of the control planes, and how often a lost ADS stream is reopened.
XDS_CLUSTER = "xds_cluster"
_ADS_RETRY_BASE_S = 0.25
_ADS_RETRY_MAX_S = 2.0


def _xds_cluster(spec: GatewaySpec) -> Config:
    """Every control plane as one endpoint of a cluster: the ADS stream runs to one healthy
    control plane and moves to another when it breaks."""
    resolved_by_envoy = not all(is_ip(host) for host, _ in spec.control_planes)
    return {
        "name": XDS_CLUSTER,
        "type": "STRICT_DNS" if resolved_by_envoy else "STATIC",
        # A name with both families (localhost) is reached over IPv4, where servers bind.
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            HTTP_PROTOCOL_OPTIONS: {
                "@type": HTTP_PROTOCOL_OPTIONS_TYPE,
                "explicit_http_config": {
                    "http2_protocol_options": {
                        # A control plane whose host vanished (no RST) is noticed in seconds.
                        "connection_keepalive": {"interval": "5s", "timeout": "3s"}
                    }
                },
            }
        },
        # A control plane that stopped answering is taken out before the stream is reopened.
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "1s",
                "no_traffic_interval": "1s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ],
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                        for host, port in spec.control_planes
                    ]
                }
            ],
        },
    }


def _node(spec: GatewaySpec) -> Config:
    node_id = spec.node_id or f"{socket.gethostname()}-{spec.listen_port}"
    return {"id": node_id, "cluster": spec.node_cluster}


def _dynamic_resources() -> Config:
    """Clusters over ADS (state of the world), their endpoints over ADS too (see clusters.py).
    Envoy keeps the last configuration it accepted while no control plane answers."""
    return {
        "ads_config": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "set_node_on_first_message_only": True,
            "grpc_services": [
                {
                    "envoy_grpc": {
                        "cluster_name": XDS_CLUSTER,
                        "retry_policy": {
                            "retry_back_off": {
                                "base_interval": _duration(_ADS_RETRY_BASE_S),
                                "max_interval": _duration(_ADS_RETRY_MAX_S),
                            }
                        },
                    }
                }
            ],
        },
        "cds_config": {"ads": {}, "resource_api_version": "V3"},
    }


def render_config(spec: GatewaySpec) -> Config:
    """The whole Envoy bootstrap for `spec`, as plain data (YAML/JSON-serializable)."""
    admin: Config = {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": spec.admin_port}},
        },
    }
    if spec.xds:
        return {
            "node": _node(spec),
            **admin,
            "dynamic_resources": _dynamic_resources(),
            "static_resources": {
                "listeners": [_listener(spec)],
                "clusters": [_xds_cluster(spec)],
            },
        }
    policy = spec.cluster_policy
    return {
        **admin,
        "static_resources": {
            "listeners": [_listener(spec)],
            "clusters": [
                static_cluster_config(service, policy, host, port)
                for service, (host, port) in spec.upstreams.items()
            ],
        },
    }


def write_config(spec: GatewaySpec, path: Path) -> Path:
    """Write the rendered config as YAML (keys in the order Envoy's examples use) and return it."""
    text = yaml.safe_dump(render_config(spec), sort_keys=False, default_flow_style=False, width=100)
    path.write_text(f"# Generated by callisto.gateway.config; do not edit.\n{text}")
    return path


__all__ = [
    "CORS_ORIGINS_VARIABLE",
    "HEALTH_SERVICE_HEADER",
    "LONG_UNARY_METHODS",
    "QUIET_STREAM_METHODS",
    "RATE_LIMITED_HEADER",
    "XDS_CLUSTER",
    "GatewaySpec",
    "cluster_name",
    "cors_origins_from_environment",
    "render_config",
    "transcoded_services",
    "write_config",
]
