"""Agents, stored through the persistence service with every revision kept (AIP-162).

Each agent is two kinds of persistence session of the tenant bound to the context (so tenant
isolation is persistence's): a head `agent-{agent}` holding the latest revision and the ids of
every revision, newest first, and one immutable `agentrev-{revision}` per revision. An update
writes the new revision's document first, then moves the head by compare-and-set on its etag
(the agent's etag), so a lost race leaves no half-made agent, only an orphan that is removed.
Both kinds are kept forever (an explicit zero ttl), whatever the tenant's session retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import unicodedata
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from callisto import errors as sdk
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2
from callisto.persistence import PersistenceClient
from callisto.services.common.errors import Aborted, InvalidArgument, NotFound
from callisto.services.common.pagination import page_tokens
from callisto.services.common.validation import Violations, check_page_size
from callisto.services.orchestration.relay import relayed
from callisto.services.orchestration.session_lists import session_page
from callisto.services.orchestration.tools.registry import ToolRegistry

HEAD_KIND = "orchestration.agent"
REVISION_KIND = "orchestration.agent_revision"
AGENT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,49}$")
# Names may carry any id a session could (reads of a longer one are simply NOT_FOUND).
AGENT_NAME = re.compile(r"^agents/([a-z0-9][a-z0-9-]{0,62})(?:@([A-Za-z0-9_-]{1,64}))?$")
REVISION_ID = re.compile(r"^[0-9a-f]{16}$")
MODEL = re.compile(r"^models/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KNOWLEDGE_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
MAX_DISPLAY_NAME = 200
MAX_LABEL = 200
MAX_SYSTEM_PROMPT_BYTES = 32 * 1024
MAX_TOOLS = 32
MAX_KNOWLEDGE_TAGS = 32
# Oldest revisions beyond this many are pruned (AIP-162 allows it), bounding the head.
MAX_REVISIONS = 1000
# Rounds of read-merge-write of an unconditional update that lost a race.
UPDATE_ATTEMPTS = 5
# Persistence calls one list or delete keeps in flight (revisions are one document each).
PARALLEL_CALLS = 16
UPDATABLE = (
    "display_name",
    "role",
    "company",
    "system_prompt",
    "tools",
    "model",
    "knowledge_tags",
)
KEEP_FOREVER = duration_pb2.Duration()
T = TypeVar("T")


def revision_name(agent: pb.Agent) -> str:
    """`agents/{agent}@{revision}` of an agent as `AgentStore` returns it."""
    return f"{agent.name}@{agent.revision_id}"


@dataclass(frozen=True)
class _Head:
    agent: pb.Agent
    revisions: list[str]
    etag: str


class AgentStore:
    """Create, read, update (a new revision each time), list and delete agents of the tenant
    bound to the current context."""

    def __init__(self, persistence: PersistenceClient, tools: ToolRegistry, default_model: str):
        self._persistence = persistence
        self._tools = tools
        self._default_model = default_model
        self._tools_for: Callable[[], Awaitable[ToolRegistry]] | None = None

    def use_tools(self, tools_for: Callable[[], Awaitable[ToolRegistry]]) -> None:
        """Agents may name the tools of `tools_for()` (the bound tenant's registry view: the
        built-ins plus its HTTP tools) rather than only the built-ins."""
        self._tools_for = tools_for

    async def tools(self) -> ToolRegistry:
        """The tools the bound tenant's agents may name."""
        return self._tools if self._tools_for is None else await self._tools_for()

    async def get(self, name: str) -> pb.Agent:
        """`agents/{agent}` at its latest revision or `agents/{agent}@{revision}`; the returned
        agent's `name` is `agents/{agent}` with `revision_id` set. NotFound otherwise (another
        tenant's agents included)."""
        agent_id, revision = parse_agent_name(name, "name")
        if revision is None:
            return (await self._head(agent_id)).agent
        return await self._revision(agent_id, revision)

    async def create(self, agent: pb.Agent, agent_id: str = "") -> pb.Agent:
        """A new agent at its first revision; AlreadyExists when `agent_id` is taken."""
        v = Violations()
        if agent_id and not AGENT_ID.match(agent_id):
            v.add(
                "agent_id", "must be 1-50 lower-case letters, digits or '-', not starting with '-'"
            )
        created = self.writable(agent)
        self.check(v, created, "agent", known_tools=(await self.tools()).names())
        v.raise_if_any()
        agent_id = agent_id or uuid.uuid4().hex
        created.name = f"agents/{agent_id}"
        created.create_time.GetCurrentTime()
        _stamp_revision(created)
        await self._write_revision(created)
        try:
            session = await self._persistence.create_session(
                persistence_pb2.Session(
                    kind=HEAD_KIND,
                    state=_head_state(created, [created.revision_id]),
                    ttl=KEEP_FOREVER,
                ),
                session_id=_head_id(agent_id),
            )
        except sdk.CallistoError as error:
            await self._drop_revisions([created.revision_id])
            raise relayed(error) from None
        created.etag = session.etag
        return created

    async def update(self, agent: pb.Agent, paths: Sequence[str]) -> pb.Agent:
        """The agent with `paths` taken from `agent` (its populated updatable fields when
        empty), as a new revision; with `agent.etag`, only over that exact revision (Aborted
        otherwise, as persistence reports a stale etag)."""
        v = Violations()
        agent_id = _collect_plain_name(v, agent.name, "agent.name")
        for path in paths:
            if path not in UPDATABLE and path != "*":
                v.add("update_mask", f"unknown path {path!r}; known: {', '.join(UPDATABLE)}")
        v.raise_if_any()
        if "*" in paths:
            # AIP-134 full replacement: every updatable field, as `agent` has it.
            chosen = list(UPDATABLE)
        else:
            chosen = list(dict.fromkeys(paths)) or [p for p in UPDATABLE if _populated(agent, p)]
        for attempt in range(UPDATE_ATTEMPTS):
            head = await self._head(agent_id)
            if agent.etag and agent.etag != head.etag:
                raise Aborted(
                    f"agent {head.agent.name!r} was changed since the given etag",
                    reason="ETAG_MISMATCH",
                    metadata={"current_etag": head.etag},
                )
            try:
                return await self._revise(head, agent, chosen, expected=agent.etag or head.etag)
            except sdk.Aborted as error:
                # Unconditional updates apply over whatever won the race.
                if agent.etag or attempt == UPDATE_ATTEMPTS - 1:
                    raise relayed(error) from None
            except sdk.CallistoError as error:
                raise relayed(error) from None
        raise AssertionError("unreachable")

    async def list_agents(self, page_size: int, page_token: str) -> tuple[list[pb.Agent], str]:
        """One page of the tenant's agents, newest first, and the next page's token."""
        v = Violations()
        page_size = check_page_size(v, page_size, default=50)
        v.raise_if_any()
        sessions, token = await session_page(
            self._persistence, HEAD_KIND, page_size, page_token, "agents"
        )
        return [_read_head(session).agent for session in sessions], token

    async def list_revisions(
        self, name: str, page_size: int, page_token: str
    ) -> tuple[list[pb.Agent], str]:
        """One page of an agent's revisions, newest first, each named
        `agents/{agent}@{revision}`, and the next page's token."""
        v = Violations()
        agent_id = _collect_plain_name(v, name, "name")
        page_size = check_page_size(v, page_size, default=50)
        v.raise_if_any()
        head = await self._head(agent_id)
        query = {"revisions": head.agent.name}
        cursor = await page_tokens.decode(page_token, query)
        # The cursor counts the revisions older than the last one returned: new revisions go
        # on the front of the list, so counting from its end stays right while it grows.
        older = cursor.get("r") if cursor is not None else len(head.revisions)
        if not isinstance(older, int) or older < 0:
            raise InvalidArgument.field("page_token", "is not a token this service issued")
        # Pruning may have shortened the list since the token was issued.
        older = min(older, len(head.revisions))
        start = len(head.revisions) - older
        ids = head.revisions[start : start + page_size]
        found = await _bounded(self._revision_or_none(agent_id, r) for r in ids)
        agents = []
        for agent in found:
            if agent is not None:
                agent.name = revision_name(agent)
                agents.append(agent)
        remaining = older - len(ids)
        token = await page_tokens.encode({"r": remaining}, query) if remaining > 0 else ""
        return agents, token

    async def delete(self, name: str) -> None:
        """Removes the agent and every revision; revisions first, so a failure part-way
        leaves the agent in place for a retry to finish."""
        v = Violations()
        agent_id = _collect_plain_name(v, name, "name")
        v.raise_if_any()
        head = await self._head(agent_id)
        await self._drop_revisions(head.revisions)
        try:
            await self._persistence.delete_session(_head_id(agent_id))
        except sdk.NotFound:
            raise _not_found(head.agent.name) from None
        except sdk.CallistoError as error:
            raise relayed(error) from None

    # Reading and writing the documents

    async def _head(self, agent_id: str) -> _Head:
        try:
            session = await self._persistence.get_session(_head_id(agent_id))
        except sdk.NotFound:
            raise _not_found(f"agents/{agent_id}") from None
        except sdk.CallistoError as error:
            raise relayed(error) from None
        if session.kind != HEAD_KIND:
            raise _not_found(f"agents/{agent_id}")
        return _read_head(session)

    async def _revision(self, agent_id: str, revision: str) -> pb.Agent:
        found = await self._revision_or_none(agent_id, revision)
        if found is None:
            raise _not_found(f"agents/{agent_id}@{revision}")
        return found

    async def _revision_or_none(self, agent_id: str, revision: str) -> pb.Agent | None:
        if not REVISION_ID.match(revision):
            return None
        try:
            session = await self._persistence.get_session(_revision_id(revision))
        except sdk.NotFound:
            return None
        except sdk.CallistoError as error:
            raise relayed(error) from None
        agent = _agent_of(session)
        # Revision ids are unique per tenant, not per agent: another agent's is not this one's.
        if session.kind != REVISION_KIND or agent.name != f"agents/{agent_id}":
            return None
        return agent

    async def _revise(
        self, head: _Head, changes: pb.Agent, paths: Sequence[str], *, expected: str
    ) -> pb.Agent:
        revised = pb.Agent()
        revised.CopyFrom(head.agent)
        revised.ClearField("etag")
        for path in paths:
            _copy_field(changes, revised, path)
        if not revised.model:
            revised.model = self._default_model
        known = (await self.tools()).names()
        v = Violations()
        self.check(v, revised, "agent", known_tools=known)
        v.raise_if_any()
        _stamp_revision(revised)
        revisions = [revised.revision_id, *head.revisions]
        kept, pruned = revisions[:MAX_REVISIONS], revisions[MAX_REVISIONS:]
        await self._write_revision(revised)
        try:
            session = await self._persistence.update_session(
                persistence_pb2.Session(
                    name=f"sessions/{_head_id(_agent_id(revised))}",
                    state=_head_state(revised, kept),
                    etag=expected,
                ),
                update_mask=["state"],
            )
        except sdk.NotFound:
            await self._drop_revisions([revised.revision_id])
            raise _not_found(revised.name) from None
        except sdk.CallistoError:
            await self._drop_revisions([revised.revision_id])
            raise
        await self._drop_revisions(pruned)
        revised.etag = session.etag
        return revised

    async def _write_revision(self, agent: pb.Agent) -> None:
        try:
            await self._persistence.create_session(
                persistence_pb2.Session(
                    kind=REVISION_KIND, state=_state({"agent": _json(agent)}), ttl=KEEP_FOREVER
                ),
                session_id=_revision_id(agent.revision_id),
            )
        except sdk.CallistoError as error:
            raise relayed(error) from None

    async def _drop_revisions(self, revisions: Sequence[str]) -> None:
        async def drop(revision: str) -> None:
            with contextlib.suppress(sdk.NotFound):
                await self._persistence.delete_session(_revision_id(revision))

        try:
            await _bounded(drop(r) for r in revisions)
        except sdk.CallistoError as error:
            raise relayed(error) from None

    # Validation

    def writable(self, agent: pb.Agent) -> pb.Agent:
        """The client-settable fields of `agent`, the default model filled in."""
        writable = pb.Agent()
        for path in UPDATABLE:
            _copy_field(agent, writable, path)
        if not writable.model:
            writable.model = self._default_model
        return writable

    def check(
        self,
        v: Violations,
        agent: pb.Agent,
        prefix: str,
        known_tools: Iterable[str] | None = None,
    ) -> None:
        """Adds to `v` what is wrong with `agent`'s writable fields, at `prefix`; its tools
        must be among `known_tools` (the built-ins when None; `await tools()` for the
        tenant's HTTP tools too)."""
        if not agent.display_name.strip():
            v.add(f"{prefix}.display_name", "is required")
        _check_label(v, agent.display_name, MAX_DISPLAY_NAME, f"{prefix}.display_name")
        _check_label(v, agent.role, MAX_LABEL, f"{prefix}.role")
        _check_label(v, agent.company, MAX_LABEL, f"{prefix}.company")
        if not agent.system_prompt.strip():
            v.add(f"{prefix}.system_prompt", "is required")
        elif len(agent.system_prompt.encode()) > MAX_SYSTEM_PROMPT_BYTES:
            v.add(f"{prefix}.system_prompt", f"must be at most {MAX_SYSTEM_PROMPT_BYTES} bytes")
        v.check(len(agent.tools) <= MAX_TOOLS, f"{prefix}.tools", f"at most {MAX_TOOLS} tools")
        known = self._tools.names() if known_tools is None else known_tools
        check_tool_names(v, agent.tools, known, f"{prefix}.tools")
        if not MODEL.match(agent.model):
            v.add(f"{prefix}.model", "must look like models/{model}, e.g. models/llm")
        v.check(
            len(agent.knowledge_tags) <= MAX_KNOWLEDGE_TAGS,
            f"{prefix}.knowledge_tags",
            f"at most {MAX_KNOWLEDGE_TAGS} tags",
        )
        for index, tag in enumerate(agent.knowledge_tags):
            v.check(
                bool(KNOWLEDGE_TAG.match(tag)),
                f"{prefix}.knowledge_tags[{index}]",
                "must be 1-128 letters, digits, '_', '.', ':', '/' or '-', starting with a "
                "letter or digit",
            )


async def _bounded(calls: Iterable[Awaitable[T]]) -> list[T]:
    """The results of `calls` in order, at most `PARALLEL_CALLS` in flight at once."""
    gate = asyncio.Semaphore(PARALLEL_CALLS)

    async def gated(call: Awaitable[T]) -> T:
        async with gate:
            return await call

    return list(await asyncio.gather(*(gated(c) for c in calls)))


def parse_agent_name(name: str, field: str) -> tuple[str, str | None]:
    """(agent id, revision id or None) of `agents/{agent}` or `agents/{agent}@{revision}`."""
    match = AGENT_NAME.match(name)
    if match is None:
        raise InvalidArgument.field(
            field,
            "is required"
            if not name
            else "must look like agents/{agent} or agents/{agent}@{revision}",
        )
    return match.group(1), match.group(2)


def _collect_plain_name(v: Violations, name: str, field: str) -> str:
    match = AGENT_NAME.match(name)
    if not name:
        v.add(field, "is required")
    elif match is None:
        v.add(field, "must look like agents/{agent}")
    elif match.group(2) is not None:
        v.add(field, "names a revision; revisions cannot change, name the agent itself")
    else:
        return match.group(1)
    return ""


def check_tool_names(v: Violations, tools: Sequence[str], known: Iterable[str], field: str) -> None:
    """Each of `tools` is a known tool, named once (violations at `field[i]`)."""
    registered = set(known)
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        if tool not in registered:
            v.add(f"{field}[{index}]", f"unknown tool {tool[:64]!r}; see ListTools")
        elif tool in seen:
            v.add(f"{field}[{index}]", "is a duplicate")
        seen.add(tool)


def _check_label(v: Violations, value: str, limit: int, field: str) -> None:
    if len(value) > limit:
        v.add(field, f"must be at most {limit} characters")
    elif any(unicodedata.category(c) == "Cc" for c in value):
        v.add(field, "must not contain control characters")


def _copy_field(source: pb.Agent, target: pb.Agent, path: str) -> None:
    value = getattr(source, path)
    if isinstance(value, str):
        setattr(target, path, value)
    else:
        repeated = getattr(target, path)
        del repeated[:]
        repeated.extend(value)


def _populated(agent: pb.Agent, path: str) -> bool:
    return len(getattr(agent, path)) > 0


def _not_found(name: str) -> NotFound:
    return NotFound(f"agent {name!r} not found")


def _stamp_revision(agent: pb.Agent) -> None:
    # Random, so a deleted agent's revision names never come back naming something else.
    agent.revision_id = uuid.uuid4().hex[:16]
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    agent.revision_create_time.CopyFrom(stamp)


def _head_id(agent_id: str) -> str:
    return f"agent-{agent_id}"


def _revision_id(revision: str) -> str:
    return f"agentrev-{revision}"


def _agent_id(agent: pb.Agent) -> str:
    return agent.name.removeprefix("agents/")


def _json(agent: pb.Agent) -> dict[str, Any]:
    stored = pb.Agent()
    stored.CopyFrom(agent)
    stored.ClearField("etag")
    result: dict[str, Any] = json_format.MessageToDict(stored)
    return result


def _state(data: dict[str, Any]) -> struct_pb2.Struct:
    state = struct_pb2.Struct()
    state.update(data)
    return state


def _head_state(agent: pb.Agent, revisions: Sequence[str]) -> struct_pb2.Struct:
    return _state({"agent": _json(agent), "revisions": list(revisions)})


def _agent_of(session: persistence_pb2.Session) -> pb.Agent:
    document = json_format.MessageToDict(session.state)
    return json_format.ParseDict(document.get("agent", {}), pb.Agent())


def _read_head(session: persistence_pb2.Session) -> _Head:
    agent = _agent_of(session)
    agent.etag = session.etag
    document = json_format.MessageToDict(session.state)
    revisions = [str(r) for r in document.get("revisions", [])]
    return _Head(agent=agent, revisions=revisions, etag=session.etag)
