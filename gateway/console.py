"""Routes that serve the web console's static files from the gateway itself, on its own origin.

The console (`clients/web`, built by Vite) is an `index.html` and content-hashed assets. Envoy
answers each file with a direct response read from disk when the configuration loads, so the
console needs no server process of its own and its gRPC-Web calls go to the same origin (no CORS,
one port). `/` and `/console` redirect to `/console/`; any other path under `/console/` is a 404.
Assets are cached for good (their names change with their content), `index.html` never is, and
every answer carries a strict Content-Security-Policy: the page may load only its own files and
call only its own origin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Config = dict[str, Any]

PREFIX = "/console/"
INDEX = "index.html"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
_SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
_IMMUTABLE = "public, max-age=31536000, immutable"
# Each file becomes an exact path match: plain names only, nothing a URL would encode.
_ROUTABLE_NAME = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


class ConsoleBuildError(ValueError):
    """A console folder that cannot be served (no index.html, or a file Envoy cannot route)."""


@dataclass(frozen=True)
class ConsoleFile:
    """One file the gateway serves: its URL path, where it is and its headers."""

    path: str
    source: Path
    content_type: str
    cache_control: str


def console_files(directory: Path) -> list[ConsoleFile]:
    """Every file of a built console, `index.html` first, each with its URL path under
    `/console/`. Names are checked, since each becomes an exact route match."""
    index = directory / INDEX
    if not index.is_file():
        raise ConsoleBuildError(f"{directory} has no {INDEX}: build the console first")
    files = [ConsoleFile(PREFIX, index.resolve(), CONTENT_TYPES[".html"], "no-cache")]
    for source in sorted(directory.rglob("*")):
        if not source.is_file() or source == index:
            continue
        relative = source.relative_to(directory).as_posix()
        if not _ROUTABLE_NAME.fullmatch(relative):
            raise ConsoleBuildError(f"console file {relative!r} has a name the gateway won't route")
        content_type = CONTENT_TYPES.get(source.suffix, "application/octet-stream")
        # Vite's own output under assets/ is content-hashed; anything else may change in place.
        cache = _IMMUTABLE if relative.startswith("assets/") else "no-cache"
        files.append(ConsoleFile(PREFIX + relative, source.resolve(), content_type, cache))
    return files


def largest_file_bytes(files: list[ConsoleFile]) -> int:
    return max(file.source.stat().st_size for file in files)


def _headers(values: dict[str, str]) -> list[Config]:
    return [
        {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for key, value in values.items()
    ]


def console_routes(files: list[ConsoleFile], *, disabled_filters: Config) -> list[Config]:
    """The console's routes, to put ahead of the gRPC ones. `disabled_filters` is the
    typed_per_filter_config that keeps the gRPC filters (the transcoder) off these routes."""
    routes: list[Config] = [
        {
            "name": f"console_redirect{suffix}",
            "match": {"path": path},
            "redirect": {"path_redirect": PREFIX},
            "typed_per_filter_config": disabled_filters,
        }
        for suffix, path in (("_root", "/"), ("", PREFIX.rstrip("/")))
    ]
    for file in files:
        routes.append(
            {
                "match": {"path": file.path},
                "direct_response": {"status": 200, "body": {"filename": str(file.source)}},
                "response_headers_to_add": _headers(
                    {
                        "content-type": file.content_type,
                        "cache-control": file.cache_control,
                        **_SECURITY_HEADERS,
                    }
                ),
                "typed_per_filter_config": disabled_filters,
            }
        )
    routes.append(
        {
            "name": "console_not_found",
            "match": {"prefix": PREFIX},
            "direct_response": {"status": 404, "body": {"inline_string": "not found\n"}},
            "response_headers_to_add": _headers(
                {"content-type": CONTENT_TYPES[".txt"], **_SECURITY_HEADERS}
            ),
            "typed_per_filter_config": disabled_filters,
        }
    )
    return routes


__all__ = [
    "CONTENT_SECURITY_POLICY",
    "PREFIX",
    "ConsoleBuildError",
    "ConsoleFile",
    "console_files",
    "console_routes",
    "largest_file_bytes",
]
