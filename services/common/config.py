"""Configuration: one typed settings object per process, read from the environment at start-up.

Each field declares its environment variable and a one-line description with `setting(...)`;
`settings_table()` renders every service's settings as the README's configuration table, so
the documentation is generated from the code that reads it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Self, TypeVar, get_type_hints

T = TypeVar("T")


def setting(env: str, default: T, doc: str) -> T:
    """Declares a settings field bound to the environment variable `env`."""
    return dataclasses.field(default=default, metadata={"env": env, "doc": doc})


class SettingsError(ValueError):
    """An environment variable holds a value of the wrong type."""


def _parse(raw: str, kind: Any, env: str) -> Any:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw).expanduser()
        return raw
    except ValueError as error:
        raise SettingsError(f"{env}={raw!r} is not a valid {kind.__name__}") from error


@dataclasses.dataclass(frozen=True)
class CommonSettings:
    """Settings every service reads."""

    host: str = setting("CALLISTO_GRPC_HOST", "127.0.0.1", "Address the gRPC server binds to.")
    port: int = setting("CALLISTO_GRPC_PORT", 0, "gRPC port; 0 uses the service's default port.")
    redis_url: str = setting(
        "CALLISTO_REDIS_URL",
        "redis://127.0.0.1:6379/0",
        "Redis holding API keys, the replica registry (and, for persistence, the data): "
        "`redis://host:port/db`, or through Sentinel "
        "`redis+sentinel://host:port[,host:port…]/primary-name/db`.",
    )
    auth_cache_seconds: float = setting(
        "CALLISTO_AUTH_CACHE_SECONDS",
        2.0,
        "How long a verified API key is trusted before Redis is asked again "
        "(bounds how long a revoked key keeps working).",
    )
    log_level: str = setting(
        "CALLISTO_LOG_LEVEL", "INFO", "Log level: DEBUG, INFO, WARNING, ERROR."
    )
    log_format: str = setting(
        "CALLISTO_LOG_FORMAT", "json", "`json` (one object per line, with trace ids) or `text`."
    )
    otel_exporter: str = setting(
        "CALLISTO_OTEL_EXPORTER",
        "none",
        "Trace exporter: `none` (propagate `traceparent` only), `console` or `otlp` "
        "(endpoint from the standard `OTEL_EXPORTER_OTLP_ENDPOINT`).",
    )
    metrics_port: int = setting(
        "CALLISTO_METRICS_PORT", -1, "Prometheus `/metrics` port: -1 disables, 0 picks a free one."
    )
    max_message_bytes: int = setting(
        "CALLISTO_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, "Largest gRPC message accepted or sent."
    )
    shutdown_grace_seconds: float = setting(
        "CALLISTO_SHUTDOWN_GRACE_SECONDS",
        5.0,
        "On SIGTERM, how long in-flight calls may finish before they are cancelled.",
    )
    drain_seconds: float = setting(
        "CALLISTO_DRAIN_SECONDS",
        1.0,
        "On SIGTERM, how long a replica keeps taking calls after it reported NOT_SERVING and "
        "left the registry, so load balancers stop sending before it refuses any.",
    )
    health_interval_seconds: float = setting(
        "CALLISTO_HEALTH_INTERVAL_SECONDS", 1.0, "How often dependencies are probed for health."
    )
    page_token_secret: str = setting(
        "CALLISTO_PAGE_TOKEN_SECRET",
        "",
        "Key that signs page tokens (shared by every replica); empty uses a random key "
        "created once per deployment in the Redis holding the API keys.",
    )
    service_api_key: str = setting(
        "CALLISTO_SERVICE_API_KEY",
        "",
        "This process's service credential for calls on a tenant's behalf; empty creates one "
        "in the auth Redis at start-up and revokes it at shutdown.",
    )
    redis_min_replicas: int = setting(
        "CALLISTO_REDIS_MIN_REPLICAS",
        0,
        "Replicas that must confirm an acknowledged write (Redis `WAIT`) before it is answered; "
        "0 answers once the primary has it (a lone Redis), 1 with a replica behind Sentinel.",
    )
    redis_wait_timeout_ms: int = setting(
        "CALLISTO_REDIS_WAIT_TIMEOUT_MS",
        1000,
        "How long a write waits for those replicas before it is answered UNAVAILABLE "
        "(retry it with the same request id).",
    )
    register: bool = setting(
        "CALLISTO_REGISTER",
        True,
        "Register this replica (address, zone, weight, health) in Redis with a TTL heartbeat, "
        "for the gateway's control plane.",
    )
    advertise_host: str = setting(
        "CALLISTO_ADVERTISE_HOST",
        "",
        "Address other processes reach this replica at; empty: the bind address, or this "
        "host's own address when binding every interface.",
    )
    zone: str = setting("CALLISTO_ZONE", "local", "Zone (locality) the replica registers in.")
    weight: int = setting(
        "CALLISTO_WEIGHT", 1, "Load-balancing weight the replica registers with (1-128)."
    )
    registry_ttl_seconds: float = setting(
        "CALLISTO_REGISTRY_TTL_SECONDS",
        3.0,
        "A registration not renewed for this long is dropped (the heartbeat renews it three "
        "times per TTL).",
    )
    reflect_mesh: bool = setting(
        "CALLISTO_REFLECT_MESH",
        False,
        "Serve reflection for every Callisto service, not only this process's "
        "(set on the service the gateway routes reflection to).",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            env = field.metadata.get("env")
            if env is not None and env in environ:
                values[field.name] = _parse(environ[env], hints[field.name], env)
        return cls(**values)


def settings_rows(classes: Iterable[type[Any]]) -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting of the classes, without repeats."""
    rows: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for cls in classes:
        for field in dataclasses.fields(cls):
            env = field.metadata.get("env")
            if env is None or env in seen:
                continue
            seen.add(env)
            default = field.default
            shown = "" if default == "" else str(default)
            rows.append((env, shown, field.metadata["doc"]))
    return rows


def settings_table(sections: Mapping[str, Iterable[type[Any]]]) -> str:
    """The Markdown configuration table, one section per process kind."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    shown: set[str] = set()
    for section, classes in sections.items():
        rows = [row for row in settings_rows(classes) if row[0] not in shown]
        if not rows:
            continue
        lines.append(f"| **{section}** | | |")
        for env, default, doc in rows:
            shown.add(env)
            lines.append(
                f"| `{env}` | `{default}` | {doc} |" if default else f"| `{env}` | | {doc} |"
            )
    return "\n".join(lines)
