"""All of the persistence service's Redis I/O; no protobuf here.

Key layout, every key of a tenant under the hash tag `{t:<tenant>}` so they share one cluster
slot and the Lua scripts below may touch several of them:

    callisto:{t:T}:conv:C            hash    conversation fields, `version`, `last_seq`, counters
    callisto:{t:T}:conv:C:msgs       list    messages, "<position> <sequence> <ms> <body json>"
                                             (the body is rewritten only by feedback; the
                                             `message.created` entry keeps the original)
    callisto:{t:T}:conv:C:events     stream  the event log, entry id `<sequence>-0`
    callisto:{t:T}:conv:C:req        hash    request ids of messages (`m:<id>`), events (`e:<id>`),
                                             artifacts (`a:<id>`)
    callisto:{t:T}:conv:C:arts       hash    artifacts: `<id>` → "<ms> <record json>", and
                                             `<id>:c` → the content's raw bytes
    callisto:{t:T}:conv:C:artidx     zset    artifact ids scored by create time (ms)
    callisto:{t:T}:convs             zset    conversation ids scored by create time (ms)
    callisto:{t:T}:convreq:R         string  conversation id a CreateConversation request id made
    callisto:{t:T}:sess:S            hash    session fields, `version`
    callisto:{t:T}:sessions          zset    session ids scored by create time (ms)
    callisto:{t:T}:retention         hash    `conversation_ttl`, `session_ttl` (ms), `update`

Every write is one script, so a message, its `message.created` event, the counters and the
retention refresh land together or not at all, and etag checks are compare-and-set. Scripts
read the clock with TIME so every replica and AOF replay agrees on it. Every key of a
conversation (artifacts included) is expired, refreshed and deleted together.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.client import NEVER_DECODE
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from callisto.services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    PreconditionViolation,
    ResourceExhausted,
    Unavailable,
)
from callisto.services.common.redis_client import PoolExhausted, queued_client
from callisto.services.persistence.models import (
    FINISHED,
    FOLLOW_POLICY,
    ArtifactFields,
    Conversation,
    ConversationFields,
    ConversationFilter,
    ConversationStatus,
    Cursor,
    EndOfLog,
    Heartbeat,
    Participant,
    RetentionPolicy,
    Session,
    SessionFields,
    StoredArtifact,
    StoredEvent,
    StoredMessage,
)

T = TypeVar("T")

# Longest single XREAD BLOCK: bounds how late a follower notices a deletion or a shutdown.
_FOLLOW_SLICE_SECONDS = 1.0
_REPLAY_BATCH = 256
# The log entry of a conversation's status change (the end of a finished one's log).
_STATUS_CHANGED = "conversation.status_changed"
# Compare-and-set rounds of a message update before it gives up as ABORTED.
_REPLACE_ATTEMPTS = 8
# Connections of one process for ordinary commands. Redis runs one command at a time, so more
# would not serve more; calls beyond them queue for a free one, for at most the wait below.
_CONNECTIONS = 128
_CONNECTION_WAIT_SECONDS = 5.0
# Connections for the followers' blocking XREADs: one per live subscriber (each holds its
# connection for at most a slice). Beyond them a follower polls its log once a slice instead.
_FOLLOW_CONNECTIONS = 1024

# The finished statuses as a Lua set, from the one Python definition.
_FINISHED_LUA = ", ".join(f"[{int(status)}] = true" for status in sorted(FINISHED))
_PRELUDE = (
    "local FINISHED = {"
    + _FINISHED_LUA
    + """}
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- A resource's own ttl (ms) when it has one (>= 0), else the tenant policy's.
local function effective_ttl(own, policy, field)
  own = tonumber(own)
  if own ~= nil and own >= 0 then return own end
  local p = redis.call('HGET', policy, field)
  if p then return tonumber(p) end
  return 0
end
-- Expires every key of a resource together (or keeps them forever); returns the expire time.
local function apply_ttl(ttl, now, keys)
  for _, key in ipairs(keys) do
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
  end
  if ttl > 0 then return now + ttl end
  return 0
end
-- Refreshes a conversation's retention from its last write.
-- KEYS: conv msgs events req policy arts artidx
local function touch_conversation(now)
  local ttl = effective_ttl(redis.call('HGET', KEYS[1], 'ttl'), KEYS[5], 'conversation_ttl')
  redis.call('HSET', KEYS[1], 'update', now)
  local expire = apply_ttl(ttl, now, {KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[7]})
  redis.call('HSET', KEYS[1], 'expire', expire)
end
-- Finished conversations (COMPLETED, CANCELLED, FAILED) hold their last event for good.
local function is_finished(status)
  return FINISHED[tonumber(status)] == true
end
-- Appends to the log with the next gap-free sequence as the stream id.
local function append_event(now, ...)
  local seq = redis.call('HINCRBY', KEYS[1], 'last_seq', 1)
  redis.call('XADD', KEYS[3], seq .. '-0', 'ms', now, ...)
  return seq
end
"""
)

# KEYS: conv msgs events req policy arts artidx index convreq
# ARGV: id title participants tags status metadata ttl has_request_id request_ttl_s
_CREATE_CONVERSATION = """
if ARGV[8] == '1' then
  local existing = redis.call('GET', KEYS[9])
  if existing then
    redis.call('SET', KEYS[9], existing, 'KEEPTTL')  -- a write, for the WAIT (see _write)
    return {'DUPLICATE', existing}
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'EXISTS'} end
-- Leftovers of an expired namesake must not leak into the new conversation.
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[7])
local now = now_ms()
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'title', ARGV[2], 'participants', ARGV[3],
  'tags', ARGV[4], 'status', ARGV[5], 'metadata', ARGV[6], 'ttl', ARGV[7], 'create', now,
  'version', 1, 'message_count', 0, 'last_seq', 0)
touch_conversation(now)
redis.call('ZADD', KEYS[8], now, ARGV[1])
if ARGV[8] == '1' then redis.call('SET', KEYS[9], ARGV[1], 'EX', ARGV[9]) end
return {'OK', redis.call('HGETALL', KEYS[1])}
"""

# KEYS: conv msgs events req policy   ARGV: expected_version status_event_data field value ...
_UPDATE_CONVERSATION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOT_FOUND'} end
local version = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] ~= '' and ARGV[1] ~= version then return {'ETAG', version} end
local before = redis.call('HGET', KEYS[1], 'status')
-- A finished conversation keeps its status: a change would log an event after its end.
if is_finished(before) then
  for i = 3, #ARGV, 2 do
    if ARGV[i] == 'status' and ARGV[i + 1] ~= before then return {'FINISHED', before} end
  end
end
local now = now_ms()
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
-- A status change is logged so followers wake up (and can end on a finished conversation).
if redis.call('HGET', KEYS[1], 'status') ~= before then
  append_event(now, 't', 'conversation.status_changed', 'd', ARGV[2])
end
redis.call('HINCRBY', KEYS[1], 'version', 1)
touch_conversation(now)
return {'OK', redis.call('HGETALL', KEYS[1])}
"""

# KEYS: conv msgs events req policy arts artidx index   ARGV: id expected_version
_DELETE_CONVERSATION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOT_FOUND'} end
local version = redis.call('HGET', KEYS[1], 'version')
if ARGV[2] ~= '' and ARGV[2] ~= version then return {'ETAG', version} end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[7])
redis.call('ZREM', KEYS[8], ARGV[1])
return {'OK'}
"""

# KEYS: conv msgs events req policy   ARGV: body request_id
_CREATE_MESSAGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOT_FOUND'} end
if ARGV[2] ~= '' then
  local seen = redis.call('HGET', KEYS[4], 'm:' .. ARGV[2])
  if seen then
    redis.call('HSET', KEYS[4], 'm:' .. ARGV[2], seen)  -- a write, for the WAIT (see _write)
    return {'DUPLICATE', redis.call('LINDEX', KEYS[2], tonumber(seen) - 1)}
  end
end
local status = redis.call('HGET', KEYS[1], 'status')
if is_finished(status) then return {'FINISHED', status} end
local now = now_ms()
local pos = redis.call('LLEN', KEYS[2]) + 1
local seq = redis.call('HGET', KEYS[1], 'last_seq') + 1
local record = pos .. ' ' .. seq .. ' ' .. now .. ' ' .. ARGV[1]
append_event(now, 't', 'message.created', 'm', record)
redis.call('RPUSH', KEYS[2], record)
redis.call('HSET', KEYS[1], 'message_count', pos)
if ARGV[2] ~= '' then redis.call('HSET', KEYS[4], 'm:' .. ARGV[2], pos) end
touch_conversation(now)
return {'OK', record}
"""

# KEYS: conv msgs events req policy   ARGV: index expected_record new_record
# Compare-and-set of one message record; finished conversations still take feedback.
_REPLACE_MESSAGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOT_FOUND'} end
local current = redis.call('LINDEX', KEYS[2], tonumber(ARGV[1]))
if not current then return {'NO_MESSAGE'} end
if current ~= ARGV[2] then return {'CHANGED'} end
redis.call('LSET', KEYS[2], tonumber(ARGV[1]), ARGV[3])
touch_conversation(now_ms())
return {'OK'}
"""

# KEYS: conv msgs events req policy   ARGV: type data request_id
_CREATE_EVENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOT_FOUND'} end
local seq
if ARGV[3] ~= '' then seq = redis.call('HGET', KEYS[4], 'e:' .. ARGV[3]) end
if seq then
  redis.call('HSET', KEYS[4], 'e:' .. ARGV[3], seq)  -- a write, for the WAIT (see _write)
else
  local status = redis.call('HGET', KEYS[1], 'status')
  if is_finished(status) then return {'FINISHED', status} end
  local now = now_ms()
  seq = append_event(now, 't', ARGV[1], 'd', ARGV[2])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[4], 'e:' .. ARGV[3], seq) end
  touch_conversation(now)
end
return {'OK', redis.call('XRANGE', KEYS[3], seq .. '-0', seq .. '-0')}
"""

# KEYS: conv msgs events req policy arts artidx   ARGV: id record content request_id max_count
# A finished conversation still takes artifacts: a report is often made from its end. The
# record is stored as "<ms> <json>", the time read here like every other.
_CREATE_ARTIFACT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOT_FOUND'} end
if ARGV[4] ~= '' then
  local seen = redis.call('HGET', KEYS[4], 'a:' .. ARGV[4])
  if seen then
    local first = redis.call('HGET', KEYS[6], seen)
    if first then
      redis.call('HSET', KEYS[4], 'a:' .. ARGV[4], seen)  -- a write, for the WAIT (see _write)
      return {'DUPLICATE', first}
    end
  end
end
local count = redis.call('ZCARD', KEYS[7])
if count >= tonumber(ARGV[5]) then return {'FULL', count} end
local now = now_ms()
local stored = now .. ' ' .. ARGV[2]
redis.call('HSET', KEYS[6], ARGV[1], stored, ARGV[1] .. ':c', ARGV[3])
redis.call('ZADD', KEYS[7], now, ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[4], 'a:' .. ARGV[4], ARGV[1]) end
touch_conversation(now)
return {'OK', stored}
"""

# KEYS: session policy index   ARGV: id kind state ttl
_CREATE_SESSION = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'EXISTS'} end
local now = now_ms()
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'kind', ARGV[2], 'state', ARGV[3], 'ttl', ARGV[4],
  'version', 1, 'create', now, 'update', now)
local ttl = effective_ttl(ARGV[4], KEYS[2], 'session_ttl')
redis.call('HSET', KEYS[1], 'expire', apply_ttl(ttl, now, {KEYS[1]}))
redis.call('ZADD', KEYS[3], now, ARGV[1])
return {'OK', redis.call('HGETALL', KEYS[1])}
"""

# KEYS: session policy   ARGV: expected_version field value ...
_UPDATE_SESSION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOT_FOUND'} end
local version = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] ~= '' and ARGV[1] ~= version then return {'ETAG', version} end
local now = now_ms()
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'update', now)
local ttl = effective_ttl(redis.call('HGET', KEYS[1], 'ttl'), KEYS[2], 'session_ttl')
redis.call('HSET', KEYS[1], 'expire', apply_ttl(ttl, now, {KEYS[1]}))
return {'OK', redis.call('HGETALL', KEYS[1])}
"""

# KEYS: session index   ARGV: id expected_version
_DELETE_SESSION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'NOT_FOUND'} end
local version = redis.call('HGET', KEYS[1], 'version')
if ARGV[2] ~= '' and ARGV[2] ~= version then return {'ETAG', version} end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return {'OK'}
"""

# KEYS: policy   ARGV: field value ...
_UPDATE_RETENTION = """
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'update', now_ms())
return {'OK', redis.call('HGETALL', KEYS[1])}
"""


class _Keys:
    """Key names of one tenant."""

    def __init__(self, tenant: str) -> None:
        self.prefix = f"callisto:{{t:{tenant}}}"
        self.conversations = f"{self.prefix}:convs"
        self.sessions = f"{self.prefix}:sessions"
        self.retention = f"{self.prefix}:retention"

    def conversation(self, conversation_id: str) -> list[str]:
        """conv, msgs, events, req, retention, arts, artidx: the KEYS prefix of every
        conversation script."""
        base = f"{self.prefix}:conv:{conversation_id}"
        return [
            base,
            f"{base}:msgs",
            f"{base}:events",
            f"{base}:req",
            self.retention,
            f"{base}:arts",
            f"{base}:artidx",
        ]

    def conversation_request(self, request_id: str) -> str:
        return f"{self.prefix}:convreq:{request_id}"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}:sess:{session_id}"


# What a dead, restarting or unreachable Redis raises (BusyLoadingError is a ConnectionError;
# through Sentinel, so are a demoted primary's READONLY and a primary nobody names yet).
_LOST = (RedisConnectionError, RedisTimeoutError, OSError)


def _unavailable(what: str = "") -> Unavailable:
    suffix = f", {what}" if what else ""
    return Unavailable(f"storage is unavailable{suffix}", retry_after=1.0)


def _busy() -> Unavailable:
    return Unavailable("storage is busy, nothing was written or read", retry_after=0.2)


class RedisStore:
    """Conversations, messages, event logs, artifacts, sessions and retention policies in
    Redis."""

    def __init__(
        self,
        url: str,
        *,
        request_id_ttl_seconds: int = 86400,
        connections: int = _CONNECTIONS,
        follow_connections: int = _FOLLOW_CONNECTIONS,
        min_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        """`url` is a Redis or Sentinel URL (services/common/redis_client.py); with
        `min_replicas` > 0 every write is acknowledged only once that many replicas have it
        (WAIT for at most `wait_timeout_ms`)."""
        if min_replicas < 0 or wait_timeout_ms < 0:
            raise ValueError("min_replicas and wait_timeout_ms must not be negative")
        # No automatic retries: a write replayed after a lost reply could duplicate a message.
        # Dead pooled connections are replaced at checkout, so a restarted Redis (or, through
        # Sentinel, the primary after a failover) is picked up.
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": 2.0,
            "retry": Retry(NoBackoff(), 0),
        }
        # A write's reply comes after its WAIT: the socket timeout must outlast the wait.
        write_timeout = 5.0 + (wait_timeout_ms / 1000 if min_replicas else 0.0)
        self._redis: Redis = queued_client(
            url,
            max_connections=connections,
            wait_seconds=_CONNECTION_WAIT_SECONDS,
            socket_timeout=write_timeout,
            **options,
        )
        # Blocking XREADs hold their connection for a while; their own pool keeps them from
        # starving ordinary calls. A follower waits at most one slice for a connection.
        self._blocking: Redis = queued_client(
            url,
            max_connections=follow_connections,
            wait_seconds=_FOLLOW_SLICE_SECONDS,
            socket_timeout=_FOLLOW_SLICE_SECONDS + 5.0,
            **options,
        )
        self._request_id_ttl = request_id_ttl_seconds
        self._min_replicas = min_replicas
        self._wait_timeout_ms = wait_timeout_ms
        register = self._redis.register_script
        self._create_conversation = register(_PRELUDE + _CREATE_CONVERSATION)
        self._update_conversation = register(_PRELUDE + _UPDATE_CONVERSATION)
        self._delete_conversation = register(_PRELUDE + _DELETE_CONVERSATION)
        self._create_message = register(_PRELUDE + _CREATE_MESSAGE)
        self._replace_message = register(_PRELUDE + _REPLACE_MESSAGE)
        self._create_event = register(_PRELUDE + _CREATE_EVENT)
        self._create_artifact = register(_PRELUDE + _CREATE_ARTIFACT)
        self._create_session = register(_PRELUDE + _CREATE_SESSION)
        self._update_session = register(_PRELUDE + _UPDATE_SESSION)
        self._delete_session = register(_PRELUDE + _DELETE_SESSION)
        self._update_retention = register(_PRELUDE + _UPDATE_RETENTION)

    async def ping(self) -> bool:
        return bool(await self._read(self._redis.ping))

    async def _write(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        args: Sequence[str | int | bytes],
        *,
        dedupes: bool = False,
    ) -> Any:
        """Runs one write script, never replayed: a lost reply might hide an applied script.

        With min replicas, the script and a WAIT go down one connection together (WAIT counts
        the replicas that have every write of its connection so far); too few acknowledgements
        and the write is answered UNAVAILABLE although the primary has it. `dedupes` says the
        write carries a request id, so retrying it answers the first write instead of making
        another (the duplicate paths rewrite their request-id marker, so the retry's own WAIT
        also covers the first write)."""
        if not self._min_replicas:
            return await self._guarded(script(keys=keys, args=args))
        for attempt in range(2):
            try:
                reply, acknowledged = await self._guarded(self._script_and_wait(script, keys, args))
                break
            except NoScriptError:
                # A new primary (or a restarted Redis) has an empty script cache; NOSCRIPT
                # means nothing ran, so loading the script and running it again is safe.
                if attempt:
                    raise _unavailable() from None
                await self._guarded(self._redis.script_load(script.script))
        if int(acknowledged) < self._min_replicas:
            hint = "retry with the same request id" if dedupes else "read it back before retrying"
            raise Unavailable(
                f"written on the primary, not yet confirmed by a replica; {hint}",
                retry_after=1.0,
            )
        return reply

    async def _script_and_wait(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int | bytes]
    ) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.wait(self._min_replicas, self._wait_timeout_ms)
            result: list[Any] = await pipe.execute()
        return result

    async def _guarded(self, call: Awaitable[T]) -> T:
        """Maps what a lost, refusing or busy Redis raises to UNAVAILABLE."""
        try:
            return await call
        except PoolExhausted as error:  # busy, not lost: the pooled connections are fine
            raise _busy() from error
        except _LOST as error:
            await self._forget_connections()
            raise _unavailable() from error
        except ReadOnlyError as error:  # a replica (a direct URL to a demoted primary)
            await self._forget_connections()
            raise _unavailable("it is a read-only replica now") from error
        except ResponseError as error:
            # A primary with min-replicas-to-write and too few replicas refuses every write.
            if "NOREPLICAS" in str(error):  # (a pipeline prefixes its errors)
                raise _unavailable("too few replicas to write, nothing was written") from error
            raise

    async def _read(self, call: Callable[[], Awaitable[T]]) -> T:
        """Runs one read, once more on a fresh connection if the pooled one was dead."""
        try:
            return await call()
        except PoolExhausted as error:
            raise _busy() from error
        except _LOST:
            await self._forget_connections()
        try:
            return await call()
        except PoolExhausted as error:
            raise _busy() from error
        except _LOST as error:
            raise _unavailable() from error

    async def _transaction(self, build: Callable[[Pipeline], object]) -> list[Any]:
        """A read-only MULTI/EXEC: one consistent snapshot of several keys."""

        async def run() -> list[Any]:
            async with self._redis.pipeline(transaction=True) as pipe:
                build(pipe)
                return await pipe.execute()

        return await self._read(run)

    async def _forget_connections(self) -> None:
        # Pooled connections to a Redis that went away fail on their next use (the socket
        # looks healthy until written to), so after one failure drop every idle one.
        for client in (self._redis, self._blocking):
            await client.connection_pool.disconnect(inuse_connections=False)

    async def close(self) -> None:
        await self._redis.aclose()
        await self._blocking.aclose()

    # Conversations

    async def create_conversation(
        self, tenant: str, conversation_id: str, fields: ConversationFields, request_id: str
    ) -> Conversation:
        keys = _Keys(tenant)
        reply = await self._write(
            self._create_conversation,
            keys=[
                *keys.conversation(conversation_id),
                keys.conversations,
                keys.conversation_request(request_id),
            ],
            args=[
                conversation_id,
                *_conversation_args(fields),
                "1" if request_id else "",
                self._request_id_ttl,
            ],
            dedupes=bool(request_id),
        )
        if reply[0] == "DUPLICATE":
            return await self.get_conversation(tenant, reply[1])
        if reply[0] == "EXISTS":
            raise AlreadyExists(f"conversation {conversation_id!r} already exists")
        return _conversation(_pairs(reply[1]))

    async def get_conversation(self, tenant: str, conversation_id: str) -> Conversation:
        key = _Keys(tenant).conversation(conversation_id)[0]
        stored = await self._read(lambda: self._redis.hgetall(key))
        if not stored:
            raise _conversation_not_found(conversation_id)
        return _conversation(stored)

    async def update_conversation(
        self,
        tenant: str,
        conversation_id: str,
        changes: dict[str, str],
        expected_version: int | None,
        status_event_data: str,
    ) -> Conversation:
        """Writes the `changes` (stored field name → value) with compare-and-set on the version."""
        flat = [item for pair in changes.items() for item in pair]
        reply = await self._write(
            self._update_conversation,
            keys=_Keys(tenant).conversation(conversation_id),
            args=[_version_arg(expected_version), status_event_data, *flat],
        )
        _check_reply(reply, f"conversation {conversation_id!r}", f"conversations/{conversation_id}")
        return _conversation(_pairs(reply[1]))

    async def delete_conversation(
        self, tenant: str, conversation_id: str, expected_version: int | None
    ) -> None:
        keys = _Keys(tenant)
        reply = await self._write(
            self._delete_conversation,
            keys=[*keys.conversation(conversation_id), keys.conversations],
            args=[conversation_id, _version_arg(expected_version)],
        )
        _check_reply(reply, f"conversation {conversation_id!r}", f"conversations/{conversation_id}")

    async def list_conversations(
        self, tenant: str, query: ConversationFilter, cursor: Cursor | None, page_size: int
    ) -> tuple[list[Conversation], Cursor | None]:
        keys = _Keys(tenant)

        async def load(ids: Sequence[str]) -> list[Conversation | None]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for conversation_id in ids:
                    pipe.hgetall(keys.conversation(conversation_id)[0])
                rows = await pipe.execute()
            return [_conversation(row) if row else None for row in rows]

        return await self._scan_index(
            keys.conversations,
            load,
            query.matches,
            cursor=cursor,
            page_size=page_size,
            ascending=query.ascending,
            start_ms=query.start_ms,
            end_ms=query.end_ms,
        )

    # Messages and events

    async def create_message(
        self, tenant: str, conversation_id: str, body_json: str, request_id: str
    ) -> StoredMessage:
        reply = await self._write(
            self._create_message,
            keys=_Keys(tenant).conversation(conversation_id),
            args=[body_json, request_id],
            dedupes=bool(request_id),
        )
        _check_reply(reply, f"conversation {conversation_id!r}", f"conversations/{conversation_id}")
        return _message(reply[1])

    async def get_message(self, tenant: str, conversation_id: str, position: int) -> StoredMessage:
        conv, msgs = _Keys(tenant).conversation(conversation_id)[:2]

        def read(pipe: Pipeline) -> None:
            pipe.exists(conv)
            pipe.lindex(msgs, position - 1)

        exists, record = await self._transaction(read)
        if not exists:
            raise _conversation_not_found(conversation_id)
        if record is None:
            raise _message_not_found(conversation_id, position)
        return _message(record)

    async def update_message(
        self,
        tenant: str,
        conversation_id: str,
        position: int,
        change: Callable[[str], str],
    ) -> StoredMessage:
        """Rewrites a message's body as `change(body_json)`; position, sequence and time stay.

        Read, change, compare-and-set: a concurrent update makes the script refuse, and the
        change is applied again over the newer body (the last writer wins, none is lost)."""
        keys = _Keys(tenant).conversation(conversation_id)
        for _ in range(_REPLACE_ATTEMPTS):
            current = await self.get_message(tenant, conversation_id, position)
            record = _record(replace(current, body_json=change(current.body_json)))
            reply = await self._write(
                self._replace_message,
                keys=keys,
                args=[position - 1, _record(current), record],
            )
            if reply[0] == "NO_MESSAGE":
                raise _message_not_found(conversation_id, position)
            if reply[0] != "CHANGED":
                _check_reply(reply, f"conversation {conversation_id!r}")
                return _message(record)
        raise Aborted(
            f"message {position} of conversation {conversation_id!r} kept changing; retry",
            reason="CONCURRENT_UPDATE",
        )

    async def list_messages(
        self, tenant: str, conversation_id: str, offset: int, count: int
    ) -> tuple[list[StoredMessage], bool]:
        """Messages from 0-based `offset`, and whether more follow."""
        conv, msgs = _Keys(tenant).conversation(conversation_id)[:2]

        def read(pipe: Pipeline) -> None:
            pipe.exists(conv)
            pipe.lrange(msgs, offset, offset + count)

        exists, records = await self._transaction(read)
        if not exists:
            raise _conversation_not_found(conversation_id)
        return [_message(r) for r in records[:count]], len(records) > count

    async def create_event(
        self, tenant: str, conversation_id: str, event_type: str, data_json: str, request_id: str
    ) -> StoredEvent:
        reply = await self._write(
            self._create_event,
            keys=_Keys(tenant).conversation(conversation_id),
            args=[event_type, data_json, request_id],
            dedupes=bool(request_id),
        )
        _check_reply(reply, f"conversation {conversation_id!r}", f"conversations/{conversation_id}")
        return _event(reply[1][0])

    async def list_events(
        self, tenant: str, conversation_id: str, after_sequence: int, count: int
    ) -> tuple[list[StoredEvent], bool]:
        """Events after `after_sequence` in order, and whether more exist now."""
        keys = _Keys(tenant).conversation(conversation_id)

        def read(pipe: Pipeline) -> None:
            pipe.exists(keys[0])
            pipe.xrange(keys[2], f"{after_sequence + 1}-0", "+", count=count + 1)

        exists, entries = await self._transaction(read)
        if not exists:
            raise _conversation_not_found(conversation_id)
        return [_event(e) for e in entries[:count]], len(entries) > count

    async def export_conversation(
        self, tenant: str, conversation_id: str, include_events: bool
    ) -> tuple[Conversation, list[StoredMessage], list[StoredEvent]]:
        """One consistent snapshot (MULTI) of a conversation, its messages and its log."""
        conv, msgs, events = _Keys(tenant).conversation(conversation_id)[:3]

        def snapshot(pipe: Pipeline) -> None:
            pipe.hgetall(conv)
            pipe.lrange(msgs, 0, -1)
            if include_events:
                pipe.xrange(events, "-", "+")

        replies = await self._transaction(snapshot)
        if not replies[0]:
            raise _conversation_not_found(conversation_id)
        return (
            _conversation(replies[0]),
            [_message(r) for r in replies[1]],
            [_event(e) for e in replies[2]] if include_events else [],
        )

    async def follow_events(
        self,
        tenant: str,
        conversation_id: str,
        after_sequence: int,
        heartbeat_seconds: float,
        stopping: asyncio.Event,
    ) -> AsyncIterator[StoredEvent | Heartbeat | EndOfLog]:
        """Replays the log after `after_sequence`, then follows it live.

        Reads always restart from the last delivered sequence, so nothing is skipped or repeated
        whatever wakes the loop. Ends with EndOfLog once a finished conversation is fully
        delivered; raises NotFound when the conversation disappears and Unavailable on
        shutdown or a lost Redis, both naming the sequence to resume from.

        Live, one blocking XREAD both waits for and fetches what comes next; the status is read
        only when it may have changed (at the start, after a status change was delivered, after
        a wait that brought nothing), so a busy log costs one command per batch of events.
        """
        conv, _, events = _Keys(tenant).conversation(conversation_id)[:3]
        loop = asyncio.get_running_loop()
        delivered = after_sequence
        idle_since = loop.time()
        # Entries after `delivered` in hand: None when the log must be read (XRANGE) first.
        arrived: list[Any] | None = None
        check_status = True
        try:
            if not await self._read(lambda: self._redis.exists(conv)):
                raise _conversation_not_found(conversation_id)
            while True:
                if stopping.is_set():
                    raise Unavailable(
                        f"server shutting down, resume from sequence {delivered}",
                        retry_after=1.0,
                    )
                if arrived is None:
                    start = f"{delivered + 1}-0"
                    arrived = await self._read(
                        partial(self._redis.xrange, events, start, "+", count=_REPLAY_BATCH)
                    )
                if arrived:
                    for entry in arrived:
                        event = _event(entry)
                        delivered = event.sequence
                        check_status = check_status or event.type == _STATUS_CHANGED
                        yield event
                    idle_since = loop.time()
                    # A full batch may have more behind it: read on at once.
                    full, arrived = len(arrived) >= _REPLAY_BATCH, None
                    if full:
                        continue
                if check_status:
                    status_raw, last_raw = await self._read(
                        lambda: self._redis.hmget(conv, ["status", "last_seq"])
                    )
                    if status_raw is None:
                        raise NotFound(f"conversation {conversation_id!r} was deleted")
                    status = ConversationStatus(int(status_raw))
                    last_sequence = int(last_raw or 0)
                    if status.finished and delivered >= last_sequence:
                        yield EndOfLog(last_sequence, status)
                        return
                    if delivered < last_sequence:
                        arrived = None  # appended meanwhile: read it before waiting
                        check_status = False
                        continue
                    check_status = False
                waited = loop.time() - idle_since
                if waited >= heartbeat_seconds:
                    yield Heartbeat(delivered)
                    idle_since, waited = loop.time(), 0.0
                block = min(_FOLLOW_SLICE_SECONDS, heartbeat_seconds - waited)
                arrived = await self._wait_after(events, delivered, max(1, int(block * 1000)))
                if not arrived:
                    # Nothing came (or no follow connection was free): read the log and the
                    # status again, which also notices a deletion or an expiry.
                    arrived, check_status = None, True
        except Unavailable as error:
            if stopping.is_set():  # the shutdown notice already names the resume point
                raise
            raise _unavailable(f"resume from sequence {delivered}") from error

    async def _wait_after(self, events: str, delivered: int, block_ms: int) -> list[Any]:
        """Entries of the log after `delivered`, waiting up to `block_ms` for the first; none
        when the wait ran out or no follow connection was free within a slice."""

        async def wait() -> list[Any]:
            try:
                reply: Any = await self._blocking.xread(
                    {events: f"{delivered}-0"}, count=_REPLAY_BATCH, block=block_ms
                )
            except PoolExhausted:
                return []
            if not reply:
                return []
            streams = reply.values() if isinstance(reply, dict) else (e for _, e in reply)
            return [entry for entries in streams for entry in entries]

        return await self._read(wait)

    # Artifacts

    async def create_artifact(
        self,
        tenant: str,
        conversation_id: str,
        artifact_id: str,
        fields: ArtifactFields,
        content: bytes,
        request_id: str,
        *,
        max_count: int,
    ) -> StoredArtifact:
        """Stores an artifact (its size and SHA-256 computed here); with `request_id`, a repeat
        returns the artifact the first request stored, whatever this one carries."""
        record = json.dumps(
            {
                "id": artifact_id,
                "display_name": fields.display_name,
                "content_type": fields.content_type,
                "metadata": fields.metadata_json,
                "size": len(content),
                "sha256": hashlib.sha256(content).hexdigest(),
            },
            separators=(",", ":"),
        )
        reply = await self._write(
            self._create_artifact,
            keys=_Keys(tenant).conversation(conversation_id),
            args=[artifact_id, record, content, request_id, max_count],
            dedupes=bool(request_id),
        )
        if reply[0] == "FULL":
            raise ResourceExhausted(
                f"conversation {conversation_id!r} holds {reply[1]} artifacts, the most it may",
                reason="ARTIFACT_LIMIT",
                metadata={"limit": str(max_count)},
            )
        _check_reply(reply, f"conversation {conversation_id!r}", f"conversations/{conversation_id}")
        return _artifact(reply[1])

    async def get_artifact(
        self, tenant: str, conversation_id: str, artifact_id: str
    ) -> StoredArtifact:
        """The artifact with its content."""
        keys = _Keys(tenant).conversation(conversation_id)
        # The content is raw bytes: read without the client's UTF-8 decoding.
        record, content = await self._read(
            partial(
                self._redis.execute_command,
                "HMGET",
                keys[5],
                artifact_id,
                f"{artifact_id}:c",
                **{NEVER_DECODE: []},
            )
        )
        # Deleting or expiring a conversation takes its artifacts with it, so an artifact
        # found belongs to a live conversation.
        if record is None or content is None:
            if not await self._read(lambda: self._redis.exists(keys[0])):
                raise _conversation_not_found(conversation_id)
            raise NotFound(
                f"artifact {artifact_id!r} of conversation {conversation_id!r} not found"
            )
        return replace(_artifact(record.decode()), content=bytes(content))

    async def list_artifacts(
        self, tenant: str, conversation_id: str, cursor: Cursor | None, page_size: int
    ) -> tuple[list[StoredArtifact], Cursor | None]:
        """One page of the conversation's artifacts, newest first, without content."""
        keys = _Keys(tenant).conversation(conversation_id)
        if not await self._read(lambda: self._redis.exists(keys[0])):
            raise _conversation_not_found(conversation_id)

        async def load(ids: Sequence[str]) -> list[StoredArtifact | None]:
            records = await self._redis.hmget(keys[5], list(ids))
            return [_artifact(str(r)) if r is not None else None for r in records]

        return await self._scan_index(
            keys[6], load, lambda _: True, cursor=cursor, page_size=page_size, ascending=False
        )

    # Sessions

    async def create_session(self, tenant: str, session_id: str, fields: SessionFields) -> Session:
        keys = _Keys(tenant)
        reply = await self._write(
            self._create_session,
            keys=[keys.session(session_id), keys.retention, keys.sessions],
            args=[session_id, fields.kind, fields.state_json, fields.ttl_ms],
        )
        if reply[0] == "EXISTS":
            raise AlreadyExists(f"session {session_id!r} already exists")
        return _session(_pairs(reply[1]))

    async def get_session(self, tenant: str, session_id: str) -> Session:
        key = _Keys(tenant).session(session_id)
        stored = await self._read(lambda: self._redis.hgetall(key))
        if not stored:
            raise NotFound(f"session {session_id!r} not found")
        return _session(stored)

    async def update_session(
        self, tenant: str, session_id: str, changes: dict[str, str], expected_version: int | None
    ) -> Session:
        keys = _Keys(tenant)
        flat = [item for pair in changes.items() for item in pair]
        reply = await self._write(
            self._update_session,
            keys=[keys.session(session_id), keys.retention],
            args=[_version_arg(expected_version), *flat],
        )
        _check_reply(reply, f"session {session_id!r}")
        return _session(_pairs(reply[1]))

    async def delete_session(
        self, tenant: str, session_id: str, expected_version: int | None
    ) -> None:
        keys = _Keys(tenant)
        reply = await self._write(
            self._delete_session,
            keys=[keys.session(session_id), keys.sessions],
            args=[session_id, _version_arg(expected_version)],
        )
        _check_reply(reply, f"session {session_id!r}")

    async def list_sessions(
        self, tenant: str, kind: str, cursor: Cursor | None, page_size: int
    ) -> tuple[list[Session], Cursor | None]:
        keys = _Keys(tenant)

        async def load(ids: Sequence[str]) -> list[Session | None]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for session_id in ids:
                    pipe.hgetall(keys.session(session_id))
                rows = await pipe.execute()
            return [_session(row) if row else None for row in rows]

        return await self._scan_index(
            keys.sessions,
            load,
            lambda s: not kind or s.fields.kind == kind,
            cursor=cursor,
            page_size=page_size,
            ascending=False,
        )

    # Retention

    async def get_retention(self, tenant: str) -> RetentionPolicy:
        key = _Keys(tenant).retention
        return _retention(await self._read(lambda: self._redis.hgetall(key)))

    async def update_retention(self, tenant: str, changes: dict[str, int]) -> RetentionPolicy:
        flat = [item for pair in changes.items() for item in pair]
        reply = await self._write(
            self._update_retention,
            keys=[_Keys(tenant).retention],
            args=flat,
        )
        return _retention(_pairs(reply[1]))

    # Listing

    async def _scan_index(
        self,
        index: str,
        load: Callable[[Sequence[str]], Awaitable[Sequence[T | None]]],
        accept: Callable[[T], bool],
        *,
        cursor: Cursor | None,
        page_size: int,
        ascending: bool,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> tuple[list[T], Cursor | None]:
        """One page of a time index after `cursor`, and the cursor of the next page.

        The cursor is the (score, id) of the last item returned, so items inserted or deleted
        meanwhile never shift a page. Ids whose resource expired are dropped from the index.
        """
        low = str(start_ms) if start_ms is not None else "-inf"
        high = f"({end_ms}" if end_ms is not None else "+inf"
        batch = min(max(page_size * 2, 64), 1000)
        found: list[tuple[Cursor, T]] = []
        position, offset = cursor, 0
        while len(found) <= page_size:
            if ascending:
                start = str(position.score) if position else low
                rows: list[Any] = await self._read(
                    partial(
                        self._redis.zrange,
                        index,
                        start,
                        high,
                        byscore=True,
                        offset=offset,
                        num=batch,
                        withscores=True,
                    )
                )
            else:
                start = str(position.score) if position else high
                rows = await self._read(
                    partial(
                        self._redis.zrange,
                        index,
                        start,
                        low,
                        desc=True,
                        byscore=True,
                        offset=offset,
                        num=batch,
                        withscores=True,
                    )
                )
            fresh = [
                Cursor(int(score), str(member))
                for member, score in rows
                if position is None or _after(Cursor(int(score), member), position, ascending)
            ]
            if fresh:
                # Restart from the last row seen: ties on its score are filtered by id above.
                position, offset = fresh[-1], 0
                ids = [c.id for c in fresh]
                items = await self._read(partial(load, ids))
                gone = [c.id for c, item in zip(fresh, items, strict=True) if item is None]
                if gone:
                    await self._guarded(self._redis.zrem(index, *gone))
                found.extend(
                    (c, item)
                    for c, item in zip(fresh, items, strict=True)
                    if item is not None and accept(item)
                )
            else:
                offset += len(rows)
            if len(rows) < batch:
                break
        page = found[:page_size]
        next_cursor = page[-1][0] if len(found) > page_size else None
        return [item for _, item in page], next_cursor


def _after(candidate: Cursor, position: Cursor, ascending: bool) -> bool:
    key = (candidate.score, candidate.id)
    mark = (position.score, position.id)
    return key > mark if ascending else key < mark


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _version_arg(expected_version: int | None) -> str:
    return "" if expected_version is None else str(expected_version)


def _check_reply(reply: Sequence[Any], what: str, name: str = "") -> None:
    if reply[0] == "NOT_FOUND":
        raise NotFound(f"{what} not found")
    if reply[0] == "FINISHED":
        status = ConversationStatus(int(reply[1])).name
        raise FailedPrecondition(
            f"{what} is {status}: a finished conversation takes no more messages, events or "
            "status changes",
            reason="CONVERSATION_FINISHED",
            metadata={"status": status},
            preconditions=[
                PreconditionViolation(
                    "STATUS", name, "the conversation must be ACTIVE or PAUSED to be written to"
                )
            ],
        )
    if reply[0] == "ETAG":
        raise Aborted(
            f"{what} was changed since the given etag (now at version {reply[1]})",
            reason="ETAG_MISMATCH",
            metadata={"current_etag": f'"{reply[1]}"'},
        )


def _conversation_not_found(conversation_id: str) -> NotFound:
    return NotFound(f"conversation {conversation_id!r} not found")


def _message_not_found(conversation_id: str, position: int) -> NotFound:
    return NotFound(f"message {position} of conversation {conversation_id!r} not found")


def _conversation_args(fields: ConversationFields) -> list[str | int]:
    return [
        fields.title,
        json.dumps([p.__dict__ for p in fields.participants], separators=(",", ":")),
        json.dumps(list(fields.tags), separators=(",", ":")),
        int(fields.status),
        fields.metadata_json,
        fields.ttl_ms,
    ]


def conversation_changes(fields: ConversationFields, paths: Sequence[str]) -> dict[str, str]:
    """The stored hash fields for the update-mask `paths` of a conversation."""
    title, participants, tags, status, metadata, ttl = (str(v) for v in _conversation_args(fields))
    stored = {
        "title": ("title", title),
        "participants": ("participants", participants),
        "tags": ("tags", tags),
        "status": ("status", status),
        "metadata": ("metadata", metadata),
        "ttl": ("ttl", ttl),
    }
    return dict(stored[path] for path in paths)


def session_changes(fields: SessionFields, paths: Sequence[str]) -> dict[str, str]:
    """The stored hash fields for the update-mask `paths` of a session."""
    stored = {"kind": fields.kind, "state": fields.state_json, "ttl": str(fields.ttl_ms)}
    return {path: stored[path] for path in paths}


def _conversation(stored: Mapping[Any, Any]) -> Conversation:
    return Conversation(
        id=stored["id"],
        fields=ConversationFields(
            title=stored.get("title", ""),
            participants=tuple(Participant(**p) for p in json.loads(stored["participants"])),
            tags=tuple(json.loads(stored["tags"])),
            status=ConversationStatus(int(stored["status"])),
            metadata_json=stored.get("metadata", ""),
            ttl_ms=int(stored.get("ttl", FOLLOW_POLICY)),
        ),
        create_ms=int(stored["create"]),
        update_ms=int(stored["update"]),
        expire_ms=int(stored.get("expire", 0)),
        version=int(stored["version"]),
        message_count=int(stored.get("message_count", 0)),
        last_sequence=int(stored.get("last_seq", 0)),
    )


def _message(record: str) -> StoredMessage:
    position, sequence, millis, body = record.split(" ", 3)
    return StoredMessage(int(position), int(sequence), int(millis), body)


def _record(stored: StoredMessage) -> str:
    return f"{stored.position} {stored.event_sequence} {stored.create_ms} {stored.body_json}"


def _event(entry: Sequence[Any]) -> StoredEvent:
    entry_id, raw = entry
    fields = raw if isinstance(raw, dict) else _pairs(raw)
    sequence = int(str(entry_id).split("-", 1)[0])
    message = _message(fields["m"]) if "m" in fields else None
    return StoredEvent(
        sequence=sequence,
        type=fields["t"],
        create_ms=int(fields["ms"]),
        message=message,
        data_json=fields.get("d"),
    )


def _artifact(stored: str) -> StoredArtifact:
    millis, body = stored.split(" ", 1)
    record = json.loads(body)
    return StoredArtifact(
        id=record["id"],
        fields=ArtifactFields(
            display_name=record["display_name"],
            content_type=record["content_type"],
            metadata_json=record["metadata"],
        ),
        size_bytes=int(record["size"]),
        sha256=record["sha256"],
        create_ms=int(millis),
    )


def _session(stored: Mapping[Any, Any]) -> Session:
    return Session(
        id=stored["id"],
        fields=SessionFields(
            kind=stored.get("kind", ""),
            state_json=stored.get("state", ""),
            ttl_ms=int(stored.get("ttl", FOLLOW_POLICY)),
        ),
        version=int(stored["version"]),
        create_ms=int(stored["create"]),
        update_ms=int(stored["update"]),
        expire_ms=int(stored.get("expire", 0)),
    )


def _retention(stored: Mapping[Any, Any]) -> RetentionPolicy:
    return RetentionPolicy(
        conversation_ttl_ms=int(stored.get("conversation_ttl", 0)),
        session_ttl_ms=int(stored.get("session_ttl", 0)),
        update_ms=int(stored.get("update", 0)),
    )
