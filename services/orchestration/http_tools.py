"""Tenant HTTP tools: stored per tenant, called like built-ins through a registry view.

A tool is a persistence session `ht-{id}` (the id's `_` written `-`, which tool names never
hold, so the mapping is one-to-one) of kind `orchestration.http_tool` of the tenant bound to the
context: the resource without its secret, and the secret. Ids follow the registry's tool names
(`^[a-z][a-z0-9_]*$`, here at most `MAX_ID` characters, so the session id fits) and never take a
built-in's name. A tenant holds at most `MAX_TOOLS` of them.

`HttpTools.registry_for()` is the registry a run of the bound tenant calls tools through: the
built-ins (their breakers and caches shared) plus the tenant's HTTP tools, kept `CACHE_TTL_S`
per tenant and dropped at once on a create or delete in this process. A call POSTs the
validated arguments as JSON, signed like a webhook delivery (`Callisto-Event: tool.call`, an
`Idempotency-Key` when the tool has side effects), through the outbound guard, under the
tool's timeout; the answer (at most outbound_max_response_bytes) is given to the model as JSON,
or as text. Each (tenant, tool) has one circuit breaker that outlives the cached views. A
5xx, 408, 429, a timeout or a connection error is transient (retried by the registry, never
for a side-effecting call without a key); another 4xx is the arguments' fault.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2
from jsonschema import Draft202012Validator, SchemaError  # type: ignore[import-untyped]

from callisto import errors as sdk
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2
from callisto.persistence import PersistenceClient
from callisto.services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from callisto.services.common.grammar import grammar_schema
from callisto.services.common.tenancy import current_tenant
from callisto.services.common.validation import Violations, check_page_size
from callisto.services.orchestration.outbound import (
    OutboundClient,
    OutboundError,
    OutboundRefused,
    OutboundTimeout,
    check_url,
)
from callisto.services.orchestration.relay import relayed
from callisto.services.orchestration.session_lists import all_sessions, session_page
from callisto.services.orchestration.tools.breaker import CircuitBreaker
from callisto.services.orchestration.tools.errors import ToolInputError, TransientToolError
from callisto.services.orchestration.tools.registry import (
    TOOL_NAME,
    ToolContext,
    ToolHandler,
    ToolRegistry,
    ToolResult,
    ToolSpec,
)
from callisto.services.orchestration.webhooks import check_label, check_secret
from callisto.signing import signed_headers

log = logging.getLogger("callisto.orchestration.http_tools")

KIND = "orchestration.http_tool"
MAX_ID = 60
HTTP_TOOL_NAME = re.compile(r"^httpTools/([a-z][a-z0-9_]{0,59})$")
MAX_TOOLS = 32
MAX_DESCRIPTION = 2000
MAX_SCHEMA_BYTES = 16 * 1024
MAX_SCHEMA_DEPTH = 16
MIN_TIMEOUT_S, MAX_TIMEOUT_S, DEFAULT_TIMEOUT_S = 0.1, 60.0, 10.0
CACHE_TTL_S = 5.0
TOOL_EVENT = "tool.call"
KEEP_FOREVER = duration_pb2.Duration()
# Transient answers: worth another attempt.
_RETRY_STATUSES = (408, 425, 429)


@dataclass(frozen=True)
class StoredTool:
    tool: pb.HttpTool
    secret: str

    @property
    def tool_id(self) -> str:
        return self.tool.name.removeprefix("httpTools/")

    @property
    def timeout_s(self) -> float:
        if not self.tool.HasField("timeout"):
            return DEFAULT_TIMEOUT_S
        return float(self.tool.timeout.ToNanoseconds() / 1e9)


class HttpTools:
    """The tenant HTTP tools of every tenant: their store, their registry views and calls."""

    def __init__(
        self,
        persistence: PersistenceClient,
        outbound: OutboundClient,
        builtins: ToolRegistry,
        *,
        clock: Any = time.monotonic,
    ) -> None:
        self._persistence = persistence
        self._outbound = outbound
        self.builtins = builtins
        self._clock = clock
        self._views: dict[str, tuple[float, ToolRegistry]] = {}
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    # The registry view

    async def registry_for(self) -> ToolRegistry:
        """The tools of the tenant bound to the context: the built-ins plus its HTTP tools
        (cached briefly; a create or delete in this process shows at once)."""
        tenant = current_tenant()
        cached = self._views.get(tenant)
        now = self._clock()
        if cached is not None and now - cached[0] < CACHE_TTL_S:
            return cached[1]
        view = self.builtins.extended(())
        for stored in await self.all_stored():
            if stored.tool_id in view.names():
                continue
            try:
                view.register(self.spec(stored), breaker=self._breaker(tenant, stored.tool_id))
            except Exception as error:  # one bad stored tool must not hide the others
                log.warning("an HTTP tool could not be registered", exc_info=error)
        self._views[tenant] = (now, view)
        return view

    async def tool_names(self) -> list[str]:
        """Every tool name the bound tenant's agents may use."""
        return (await self.registry_for()).names()

    def invalidate(self, tenant: str) -> None:
        self._views.pop(tenant, None)

    def _breaker(self, tenant: str, name: str) -> CircuitBreaker:
        key = (tenant, name)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = self.builtins.new_breaker()
        return breaker

    def spec(self, stored: StoredTool) -> ToolSpec:
        """The registry's spec of a stored tool."""
        return ToolSpec(
            name=stored.tool_id,
            description=stored.tool.description,
            parameters=json_format.MessageToDict(stored.tool.parameters),
            handler=self._handler(stored),
            timeout_s=stored.timeout_s,
            side_effects=stored.tool.side_effects,
        )

    def _handler(self, stored: StoredTool) -> ToolHandler:
        url, secret, timeout_s = stored.tool.url, stored.secret, stored.timeout_s
        side_effects, name = stored.tool.side_effects, stored.tool_id

        async def call(arguments: dict[str, Any], context: ToolContext) -> ToolResult:
            body = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False).encode()
            headers = signed_headers(
                secret,
                body,
                idempotency_key=context.idempotency_key if side_effects else "",
                event_type=TOOL_EVENT,
            )
            try:
                response = await self._outbound.post(url, body, headers, timeout_s=timeout_s)
            except OutboundRefused as error:
                raise RuntimeError(str(error)) from None
            except (OutboundTimeout, OutboundError) as error:
                raise TransientToolError(str(error)) from None
            status = response.status_code
            text = response.body.decode("utf-8", errors="replace")
            if status >= 500 or status in _RETRY_STATUSES:
                raise TransientToolError(f"answered HTTP {status}")
            if not response.ok:
                raise ToolInputError(f"{name} answered HTTP {status}: {text[:300]}")
            if response.truncated:
                raise RuntimeError(
                    f"answer longer than {self._outbound.max_bytes} bytes; not passed on"
                )
            data: Any = text
            with contextlib.suppress(ValueError):
                data = json.loads(text) if text.strip() else None
            return ToolResult(
                data=data, summary=f"{name}: HTTP {status}, {len(response.body)} bytes"
            )

        return call

    # Store

    async def create(self, tool: pb.HttpTool, tool_id: str) -> pb.HttpTool:
        v = Violations()
        if not tool_id:
            v.add("http_tool_id", "is required")
        elif not TOOL_NAME.match(tool_id) or len(tool_id) > MAX_ID:
            v.add(
                "http_tool_id",
                f"must be 1-{MAX_ID} lower-case letters, digits or '_', starting with a letter",
            )
        elif tool_id in self.builtins.names():
            v.add("http_tool_id", f"{tool_id!r} is a built-in tool's name")
        if not tool.description.strip():
            v.add("http_tool.description", "is required")
        check_label(v, tool.description, MAX_DESCRIPTION, "http_tool.description")
        check_parameters(v, tool, "http_tool.parameters")
        problem = await check_url(self._outbound.guard, tool.url)
        if problem:
            v.add("http_tool.url", problem)
        check_secret(v, tool.secret, "http_tool.secret")
        if tool.HasField("timeout"):
            seconds, nanos = tool.timeout.seconds, tool.timeout.nanos
            within = 0 <= nanos <= 999_999_999 and seconds >= 0
            value = seconds + nanos / 1e9
            if not within or not MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S:
                v.add("http_tool.timeout", f"must be {MIN_TIMEOUT_S:g}-{MAX_TIMEOUT_S:g} s")
        v.raise_if_any()
        count = 0
        try:
            async for _ in self._persistence.list_sessions(kind=KIND, page_size=100):
                count += 1
        except sdk.CallistoError as error:
            raise relayed(error) from None
        if count >= MAX_TOOLS:
            raise ResourceExhausted(
                f"a tenant may register at most {MAX_TOOLS} HTTP tools; delete one first"
            )
        created = pb.HttpTool(
            name=f"httpTools/{tool_id}",
            description=tool.description,
            parameters=tool.parameters,
            url=tool.url,
            side_effects=tool.side_effects,
        )
        created.timeout.CopyFrom(
            tool.timeout
            if tool.HasField("timeout")
            else duration_pb2.Duration(seconds=int(DEFAULT_TIMEOUT_S))
        )
        created.create_time.GetCurrentTime()
        state = struct_pb2.Struct()
        state.update({"http_tool": json_format.MessageToDict(created), "secret": tool.secret})
        try:
            await self._persistence.create_session(
                persistence_pb2.Session(kind=KIND, state=state, ttl=KEEP_FOREVER),
                session_id=_session_id(tool_id),
            )
        except sdk.CallistoError as error:
            raise relayed(error) from None
        tenant = current_tenant()
        self.invalidate(tenant)
        self._breakers.pop((tenant, tool_id), None)
        return created

    async def get(self, name: str) -> pb.HttpTool:
        return (await self.stored(name)).tool

    async def stored(self, name: str) -> StoredTool:
        tool_id = parse_tool_name(name)
        try:
            session = await self._persistence.get_session(_session_id(tool_id))
        except sdk.NotFound:
            raise _not_found(name) from None
        except sdk.CallistoError as error:
            raise relayed(error) from None
        if session.kind != KIND:
            raise _not_found(name)
        return _read(session)

    async def list_tools(self, page_size: int, page_token: str) -> tuple[list[pb.HttpTool], str]:
        v = Violations()
        page_size = check_page_size(v, page_size, default=50, maximum=100)
        v.raise_if_any()
        sessions, token = await session_page(
            self._persistence, KIND, page_size, page_token, "httpTools"
        )
        return [_read(s).tool for s in sessions], token

    async def all_stored(self) -> list[StoredTool]:
        return [_read(s) for s in await all_sessions(self._persistence, KIND)]

    async def delete(self, name: str) -> None:
        stored = await self.stored(name)
        try:
            await self._persistence.delete_session(_session_id(stored.tool_id))
        except sdk.NotFound:
            raise _not_found(name) from None
        except sdk.CallistoError as error:
            raise relayed(error) from None
        tenant = current_tenant()
        self.invalidate(tenant)
        self._breakers.pop((tenant, stored.tool_id), None)


def check_parameters(v: Violations, tool: pb.HttpTool, field: str) -> None:
    """The arguments' schema: an object schema, valid draft 2020-12, bounded in size and
    depth, and one the model server's grammar can be cut down to."""
    if not tool.HasField("parameters"):
        v.add(field, "is required: the JSON Schema of the arguments object")
        return
    try:
        schema = json_format.MessageToDict(tool.parameters)
    except (ValueError, RecursionError):
        # A Struct may hold what JSON cannot (Infinity, NaN): no schema is made of that.
        v.add(field, "must be JSON: it holds a number JSON cannot carry (Infinity or NaN)")
        return
    size = len(json.dumps(schema, separators=(",", ":")).encode())
    if size > MAX_SCHEMA_BYTES:
        v.add(field, f"must be at most {MAX_SCHEMA_BYTES} bytes as JSON")
        return
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        v.add(field, f"must nest at most {MAX_SCHEMA_DEPTH} levels")
        return
    if schema.get("type") != "object":
        v.add(field, 'must be an object schema ({"type": "object", ...})')
        return
    try:
        Draft202012Validator.check_schema(schema)
        grammar_schema(schema)
    except SchemaError as error:
        v.add(field, f"is not a valid JSON Schema: {str(error.message)[:200]}")
    except (TypeError, ValueError, RecursionError) as error:
        v.add(field, f"is not a usable JSON Schema: {str(error)[:200]}")


def parse_tool_name(name: str) -> str:
    match = HTTP_TOOL_NAME.match(name)
    if match is None:
        raise InvalidArgument.field(
            "name", "is required" if not name else "must look like httpTools/{http_tool}"
        )
    return match.group(1)


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_SCHEMA_DEPTH:
        return level
    if isinstance(value, Mapping):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _session_id(tool_id: str) -> str:
    return "ht-" + tool_id.replace("_", "-")


def _not_found(name: str) -> NotFound:
    return NotFound(f"HTTP tool {name[:100]!r} not found")


def _read(session: persistence_pb2.Session) -> StoredTool:
    document = json_format.MessageToDict(session.state)
    tool = json_format.ParseDict(document.get("http_tool", {}), pb.HttpTool())
    return StoredTool(tool=tool, secret=str(document.get("secret", "")))
