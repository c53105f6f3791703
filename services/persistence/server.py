"""PersistenceService handlers: validate, translate protobuf ⇄ domain, call the store."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf import json_format, message, struct_pb2, timestamp_pb2
from google.protobuf.duration_pb2 import Duration

from callisto.api.common.v1 import common_pb2
from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2_grpc as pb_grpc
from callisto.services.common.errors import (
    CallistoError,
    InvalidArgument,
    status_from_exception,
)
from callisto.services.common.health import DependencyCheck
from callisto.services.common.pagination import page_tokens
from callisto.services.common.server import Runtime, ServiceDefinition
from callisto.services.common.tenancy import current_tenant
from callisto.services.common.validation import (
    MAX_MESSAGE_TEXT_BYTES,
    RESOURCE_ID,
    Violations,
    check_page_size,
    check_resource_id,
    parse_name,
)
from callisto.services.persistence import models
from callisto.services.persistence.models import (
    FOLLOW_POLICY,
    ConversationFields,
    ConversationFilter,
    ConversationStatus,
    Cursor,
    EndOfLog,
    Heartbeat,
    SessionFields,
    StoredEvent,
    StoredMessage,
)
from callisto.services.persistence.redis_store import (
    RedisStore,
    conversation_changes,
    session_changes,
)
from callisto.services.persistence.settings import PersistenceSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PersistenceService"].full_name
Context = grpc.aio.ServicerContext[Any, Any]

MAX_TITLE = 256
MAX_TAGS = 32
MAX_TAG = 64
MAX_PARTICIPANTS = 100
MAX_LABEL = 256
MAX_TEXT_BYTES = MAX_MESSAGE_TEXT_BYTES
MAX_JSON_BYTES = 256 * 1024
MAX_CITATIONS = 100
MAX_REQUEST_ID = 128
MAX_KIND = 64
# Ten years: beyond any sensible retention, and within what PEXPIRE accepts.
MAX_TTL_MS = 10 * 365 * 86400 * 1000
EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
PARTICIPANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
ETAG = re.compile(r'^"([0-9]{1,18})"$')
MESSAGE_POSITION = re.compile(r"[0-9]{1,18}")
# Event types the service writes itself, so a follower can trust them.
RESERVED_EVENT_TYPES = frozenset({"message.created", "conversation.status_changed"})
CONVERSATION_PATHS = ("title", "participants", "tags", "status", "metadata", "ttl")
SESSION_PATHS = ("kind", "state", "ttl")
MESSAGE_PATHS = ("feedback",)
MAX_FEEDBACK_COMMENT = 4096
MAX_AUTHOR = 64
RETENTION_PATHS = ("conversation_ttl", "session_ttl")
ORDERS = {"": False, "create_time desc": False, "create_time": True, "create_time asc": True}
RETENTION_NAME = "retentionPolicy"
MAX_DISPLAY_NAME = 255
ARTIFACT_CONTENT_TYPES = (
    "application/pdf",
    "text/csv",
    "application/json",
    "text/markdown",
    "text/plain",
)
MAX_ARTIFACTS = 100
"""Artifacts one conversation may hold (each up to `artifact_max_bytes`): bounds its memory."""
ARTIFACT_NAME_RULE = "must look like conversations/{conversation}/artifacts/{artifact}"


class PersistenceServicer(pb_grpc.PersistenceServiceServicer):
    """Every RPC of `callisto.persistence.v1.PersistenceService`."""

    def __init__(self, store: RedisStore, settings: PersistenceSettings, runtime: Runtime[Any]):
        self._store = store
        self._settings = settings
        self._runtime = runtime

    # Conversations

    async def CreateConversation(
        self, request: pb.CreateConversationRequest, context: Context
    ) -> pb.CreateConversationResponse:
        v = Violations()
        v.check(request.HasField("conversation"), "conversation", "is required")
        check_resource_id(v, request.conversation_id, "conversation_id")
        _check_request_id(v, request.request_id)
        fields = _conversation_fields(v, request.conversation, CONVERSATION_PATHS)
        v.raise_if_any()
        if fields.status == ConversationStatus.UNSPECIFIED:
            fields = _replace_status(fields, ConversationStatus.ACTIVE)
        conversation_id = request.conversation_id or uuid.uuid4().hex
        created = await self._store.create_conversation(
            current_tenant(), conversation_id, fields, request.request_id
        )
        return pb.CreateConversationResponse(conversation=_conversation_proto(created))

    async def GetConversation(
        self, request: pb.GetConversationRequest, context: Context
    ) -> pb.GetConversationResponse:
        conversation_id = _name(request.name, "conversations", "name")
        found = await self._store.get_conversation(current_tenant(), conversation_id)
        return pb.GetConversationResponse(conversation=_conversation_proto(found))

    async def ListConversations(
        self, request: pb.ListConversationsRequest, context: Context
    ) -> pb.ListConversationsResponse:
        v = Violations()
        page_size = check_page_size(v, request.page_size, default=50)
        order = " ".join(request.order_by.split())
        v.check(order in ORDERS, "order_by", "must be `create_time desc` or `create_time`")
        _check_enum(v, pb.ConversationStatus, request.status, "status")
        _check_tags(v, request.tags, "tags")
        v.check(len(request.participant) <= MAX_LABEL, "participant", "is too long")
        start = (
            _millis(v, request.create_time_start, "create_time_start")
            if request.HasField("create_time_start")
            else None
        )
        end = (
            _millis(v, request.create_time_end, "create_time_end")
            if request.HasField("create_time_end")
            else None
        )
        if start is not None and end is not None:
            v.check(start < end, "create_time_end", "must be after create_time_start")
        v.raise_if_any()
        query = ConversationFilter(
            start_ms=start,
            end_ms=end,
            tags=tuple(request.tags),
            status=ConversationStatus(request.status),
            participant=request.participant,
            ascending=ORDERS[order],
        )
        token_query = {
            "start": start,
            "end": end,
            "tags": sorted(set(request.tags)),
            "status": request.status,
            "participant": request.participant,
            "asc": query.ascending,
        }
        cursor = _cursor(await page_tokens.decode(request.page_token, token_query))
        items, next_cursor = await self._store.list_conversations(
            current_tenant(), query, cursor, page_size
        )
        return pb.ListConversationsResponse(
            conversations=[_conversation_proto(c) for c in items],
            next_page_token=await _cursor_token(next_cursor, token_query),
        )

    async def UpdateConversation(
        self, request: pb.UpdateConversationRequest, context: Context
    ) -> pb.UpdateConversationResponse:
        v = Violations()
        v.check(request.HasField("conversation"), "conversation", "is required")
        conversation_id = _collect_name(
            v, request.conversation.name, "conversations", "conversation.name"
        )
        paths = _mask_paths(v, request.conversation, request.update_mask.paths, CONVERSATION_PATHS)
        version = _etag_version(v, request.conversation.etag, "conversation.etag")
        fields = _conversation_fields(v, request.conversation, paths)
        if "status" in request.update_mask.paths:
            v.check(
                request.conversation.status != pb.CONVERSATION_STATUS_UNSPECIFIED,
                "conversation.status",
                "must be set when listed in update_mask",
            )
        v.raise_if_any()
        status_name = (
            pb.ConversationStatus.Name(_status_proto(fields.status)) if fields.status else ""
        )
        updated = await self._store.update_conversation(
            current_tenant(),
            conversation_id,
            conversation_changes(fields, paths),
            version,
            _struct_json_of({"status": status_name}),
        )
        return pb.UpdateConversationResponse(conversation=_conversation_proto(updated))

    async def DeleteConversation(
        self, request: pb.DeleteConversationRequest, context: Context
    ) -> pb.DeleteConversationResponse:
        v = Violations()
        conversation_id = _collect_name(v, request.name, "conversations", "name")
        version = _etag_version(v, request.etag, "etag")
        v.raise_if_any()
        await self._store.delete_conversation(current_tenant(), conversation_id, version)
        return pb.DeleteConversationResponse()

    async def ExportConversation(
        self, request: pb.ExportConversationRequest, context: Context
    ) -> pb.ExportConversationResponse:
        conversation_id = _name(request.name, "conversations", "name")
        conversation, messages, events = await self._store.export_conversation(
            current_tenant(), conversation_id, request.include_events
        )
        response = pb.ExportConversationResponse(
            conversation=_conversation_proto(conversation),
            messages=[_message_proto(conversation_id, m) for m in messages],
            events=[_event_proto(conversation_id, e) for e in events],
        )
        response.export_time.GetCurrentTime()
        return response

    # Messages

    async def CreateMessage(
        self, request: pb.CreateMessageRequest, context: Context
    ) -> pb.CreateMessageResponse:
        v = Violations()
        conversation_id = _collect_name(v, request.parent, "conversations", "parent")
        v.check(request.HasField("message"), "message", "is required")
        _check_message(v, request.message)
        _check_request_id(v, request.request_id)
        v.raise_if_any()
        body = pb.Message()
        body.CopyFrom(request.message)
        for output_only in ("name", "create_time", "position", "event_sequence"):
            body.ClearField(output_only)
        stored = await self._store.create_message(
            current_tenant(), conversation_id, _to_json(body), request.request_id
        )
        return pb.CreateMessageResponse(message=_message_proto(conversation_id, stored))

    async def GetMessage(
        self, request: pb.GetMessageRequest, context: Context
    ) -> pb.GetMessageResponse:
        v = Violations()
        conversation_id, position = _collect_message_name(v, request.name, "name")
        v.raise_if_any()
        stored = await self._store.get_message(current_tenant(), conversation_id, position)
        return pb.GetMessageResponse(message=_message_proto(conversation_id, stored))

    async def UpdateMessage(
        self, request: pb.UpdateMessageRequest, context: Context
    ) -> pb.UpdateMessageResponse:
        v = Violations()
        v.check(request.HasField("message"), "message", "is required")
        conversation_id, position = _collect_message_name(v, request.message.name, "message.name")
        for path in request.update_mask.paths:
            if path not in MESSAGE_PATHS:
                v.add("update_mask", f"unknown path {path!r}; only feedback may change")
        feedback = pb.Feedback()
        feedback.CopyFrom(request.message.feedback)
        _check_feedback(v, feedback, "message.feedback", request.message.HasField("feedback"))
        v.raise_if_any()
        feedback.update_time.GetCurrentTime()

        def rate(body_json: str) -> str:
            body = json_format.Parse(body_json, pb.Message())
            body.feedback.CopyFrom(feedback)
            return _to_json(body)

        stored = await self._store.update_message(current_tenant(), conversation_id, position, rate)
        return pb.UpdateMessageResponse(message=_message_proto(conversation_id, stored))

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: Context
    ) -> pb.ListMessagesResponse:
        v = Violations()
        conversation_id = _collect_name(v, request.parent, "conversations", "parent")
        page_size = check_page_size(v, request.page_size, default=100)
        v.raise_if_any()
        query = {"parent": request.parent}
        offset = _int_cursor(await page_tokens.decode(request.page_token, query), "o")
        messages, more = await self._store.list_messages(
            current_tenant(), conversation_id, offset, page_size
        )
        token = await page_tokens.encode({"o": offset + len(messages)}, query) if more else ""
        return pb.ListMessagesResponse(
            messages=[_message_proto(conversation_id, m) for m in messages],
            next_page_token=token,
        )

    # Events

    async def CreateEvent(
        self, request: pb.CreateEventRequest, context: Context
    ) -> pb.CreateEventResponse:
        v = Violations()
        conversation_id = _collect_name(v, request.parent, "conversations", "parent")
        v.check(request.HasField("event"), "event", "is required")
        event = request.event
        if not event.type:
            v.add("event.type", "is required")
        elif len(event.type) > 128 or not EVENT_TYPE.match(event.type):
            v.add("event.type", "must be dot-separated lower-case words of at most 128 characters")
        elif event.type in RESERVED_EVENT_TYPES:
            v.add("event.type", "is written by the service itself; use CreateMessage for messages")
        v.check(not event.HasField("message"), "event.message", "use CreateMessage to add messages")
        data = _struct_json(v, event.data, "event.data") if event.HasField("data") else ""
        _check_request_id(v, request.request_id)
        v.raise_if_any()
        stored = await self._store.create_event(
            current_tenant(), conversation_id, event.type, data, request.request_id
        )
        return pb.CreateEventResponse(event=_event_proto(conversation_id, stored))

    async def ListEvents(
        self, request: pb.ListEventsRequest, context: Context
    ) -> pb.ListEventsResponse:
        v = Violations()
        conversation_id = _collect_name(v, request.parent, "conversations", "parent")
        page_size = check_page_size(v, request.page_size, default=100)
        v.check(request.after_sequence >= 0, "after_sequence", "must not be negative")
        v.raise_if_any()
        query = {"parent": request.parent, "after": request.after_sequence}
        cursor = await page_tokens.decode(request.page_token, query)
        after = _int_cursor(cursor, "a") if cursor is not None else request.after_sequence
        events, more = await self._store.list_events(
            current_tenant(), conversation_id, after, page_size
        )
        token = (
            await page_tokens.encode({"a": events[-1].sequence}, query) if more and events else ""
        )
        return pb.ListEventsResponse(
            events=[_event_proto(conversation_id, e) for e in events], next_page_token=token
        )

    async def SubscribeEvents(
        self, request: pb.SubscribeEventsRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeEventsResponse]:
        v = Violations()
        conversation_id = _collect_name(v, request.parent, "conversations", "parent")
        v.check(request.after_sequence >= 0, "after_sequence", "must not be negative")
        v.raise_if_any()
        tenant = current_tenant()
        # A missing conversation fails the call itself; later failures are terminal messages.
        await self._store.get_conversation(tenant, conversation_id)
        delivered = request.after_sequence
        try:
            async for item in self._store.follow_events(
                tenant,
                conversation_id,
                request.after_sequence,
                self._settings.heartbeat_seconds,
                self._runtime.stopping,
            ):
                if isinstance(item, StoredEvent):
                    delivered = item.sequence
                    yield pb.SubscribeEventsResponse(
                        sequence=delivered, event=_event_proto(conversation_id, item)
                    )
                elif isinstance(item, Heartbeat):
                    yield pb.SubscribeEventsResponse(
                        sequence=delivered, heartbeat=pb.Heartbeat(last_sequence=delivered)
                    )
                elif isinstance(item, EndOfLog):
                    yield pb.SubscribeEventsResponse(
                        sequence=delivered,
                        end=pb.EndOfStream(
                            last_sequence=item.last_sequence,
                            status=_status_proto(item.status),
                        ),
                    )
        except CallistoError as error:
            yield pb.SubscribeEventsResponse(sequence=delivered, error=status_from_exception(error))

    # Artifacts

    async def CreateArtifact(
        self, request: pb.CreateArtifactRequest, context: Context
    ) -> pb.CreateArtifactResponse:
        """Stores a file with its conversation; size and SHA-256 are computed here.

        A `request_id` names the attempt, not the bytes: every repeat of it answers the first
        artifact stored, even one that carries other content (a retried tool call re-renders
        its report, and that is still the same report). A finished conversation still takes
        artifacts (reports are made from a run's end)."""
        v = Violations()
        conversation_id = _collect_name(v, request.parent, "conversations", "parent")
        v.check(request.HasField("artifact"), "artifact", "is required")
        fields = _artifact_fields(v, request.artifact)
        content = request.artifact.content
        limit = self._settings.artifact_max_bytes
        if not content:
            v.add("artifact.content", "is required (an artifact holds at least one byte)")
        elif len(content) > limit:
            v.add("artifact.content", f"is {len(content)} bytes; at most {limit} bytes allowed")
        _check_request_id(v, request.request_id)
        v.raise_if_any()
        stored = await self._store.create_artifact(
            current_tenant(),
            conversation_id,
            uuid.uuid4().hex,
            fields,
            content,
            request.request_id,
            max_count=MAX_ARTIFACTS,
        )
        return pb.CreateArtifactResponse(artifact=_artifact_proto(conversation_id, stored))

    async def GetArtifact(
        self, request: pb.GetArtifactRequest, context: Context
    ) -> pb.GetArtifactResponse:
        v = Violations()
        conversation_id, artifact_id = _collect_artifact_name(v, request.name, "name")
        v.raise_if_any()
        stored = await self._store.get_artifact(current_tenant(), conversation_id, artifact_id)
        return pb.GetArtifactResponse(artifact=_artifact_proto(conversation_id, stored))

    async def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: Context
    ) -> pb.ListArtifactsResponse:
        v = Violations()
        conversation_id = _collect_name(v, request.parent, "conversations", "parent")
        page_size = check_page_size(v, request.page_size, default=50)
        v.raise_if_any()
        # Bound to this listing, so another list's token of the same parent is refused.
        query = {"parent": request.parent, "list": "artifacts"}
        cursor = _cursor(await page_tokens.decode(request.page_token, query))
        items, next_cursor = await self._store.list_artifacts(
            current_tenant(), conversation_id, cursor, page_size
        )
        return pb.ListArtifactsResponse(
            artifacts=[_artifact_proto(conversation_id, a) for a in items],
            next_page_token=await _cursor_token(next_cursor, query),
        )

    # Sessions

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Context
    ) -> pb.CreateSessionResponse:
        v = Violations()
        v.check(request.HasField("session"), "session", "is required")
        check_resource_id(v, request.session_id, "session_id")
        fields = _session_fields(v, request.session, SESSION_PATHS)
        v.raise_if_any()
        created = await self._store.create_session(
            current_tenant(), request.session_id or uuid.uuid4().hex, fields
        )
        return pb.CreateSessionResponse(session=_session_proto(created))

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Context
    ) -> pb.GetSessionResponse:
        session_id = _name(request.name, "sessions", "name")
        return pb.GetSessionResponse(
            session=_session_proto(await self._store.get_session(current_tenant(), session_id))
        )

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsResponse:
        v = Violations()
        page_size = check_page_size(v, request.page_size, default=50)
        v.check(len(request.kind) <= MAX_KIND, "kind", f"must be at most {MAX_KIND} characters")
        v.raise_if_any()
        query = {"kind": request.kind}
        cursor = _cursor(await page_tokens.decode(request.page_token, query))
        items, next_cursor = await self._store.list_sessions(
            current_tenant(), request.kind, cursor, page_size
        )
        return pb.ListSessionsResponse(
            sessions=[_session_proto(s) for s in items],
            next_page_token=await _cursor_token(next_cursor, query),
        )

    async def UpdateSession(
        self, request: pb.UpdateSessionRequest, context: Context
    ) -> pb.UpdateSessionResponse:
        v = Violations()
        v.check(request.HasField("session"), "session", "is required")
        session_id = _collect_name(v, request.session.name, "sessions", "session.name")
        paths = _mask_paths(v, request.session, request.update_mask.paths, SESSION_PATHS)
        version = _etag_version(v, request.session.etag, "session.etag")
        fields = _session_fields(v, request.session, paths)
        v.raise_if_any()
        updated = await self._store.update_session(
            current_tenant(), session_id, session_changes(fields, paths), version
        )
        return pb.UpdateSessionResponse(session=_session_proto(updated))

    async def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: Context
    ) -> pb.DeleteSessionResponse:
        v = Violations()
        session_id = _collect_name(v, request.name, "sessions", "name")
        version = _etag_version(v, request.etag, "etag")
        v.raise_if_any()
        await self._store.delete_session(current_tenant(), session_id, version)
        return pb.DeleteSessionResponse()

    # Retention

    async def GetRetentionPolicy(
        self, request: pb.GetRetentionPolicyRequest, context: Context
    ) -> pb.GetRetentionPolicyResponse:
        if request.name != RETENTION_NAME:
            raise InvalidArgument.field("name", f"must be `{RETENTION_NAME}`")
        policy = await self._store.get_retention(current_tenant())
        return pb.GetRetentionPolicyResponse(retention_policy=_retention_proto(policy))

    async def GetCaller(
        self, request: pb.GetCallerRequest, context: Context
    ) -> pb.GetCallerResponse:
        return pb.GetCallerResponse(tenant=current_tenant())

    async def UpdateRetentionPolicy(
        self, request: pb.UpdateRetentionPolicyRequest, context: Context
    ) -> pb.UpdateRetentionPolicyResponse:
        v = Violations()
        v.check(request.HasField("retention_policy"), "retention_policy", "is required")
        policy = request.retention_policy
        v.check(
            policy.name == RETENTION_NAME,
            "retention_policy.name",
            f"must be `{RETENTION_NAME}`",
        )
        paths = _mask_paths(v, policy, request.update_mask.paths, RETENTION_PATHS)
        changes = {
            path: _ttl_millis(v, getattr(policy, path), f"retention_policy.{path}")
            for path in paths
        }
        v.raise_if_any()
        updated = await self._store.update_retention(current_tenant(), changes)
        return pb.UpdateRetentionPolicyResponse(retention_policy=_retention_proto(updated))


# Validation


def _name(name: str, collection: str, field: str) -> str:
    v = Violations()
    resource_id = _collect_name(v, name, collection, field)
    v.raise_if_any()
    return resource_id


def _collect_message_name(v: Violations, name: str, field: str) -> tuple[str, int]:
    """(conversation id, position) of `conversations/{conversation}/messages/{position}`."""
    conversation, _, position = name.rpartition("/messages/")
    # ASCII digits only: str.isdigit() also accepts "²", which int() then refuses.
    if not MESSAGE_POSITION.fullmatch(position) or int(position) < 1:
        v.add(field, "must look like conversations/{conversation}/messages/{position}")
        return "", 0
    return _collect_name(v, conversation, "conversations", field), int(position)


def _collect_artifact_name(v: Violations, name: str, field: str) -> tuple[str, str]:
    """(conversation id, artifact id) of `conversations/{conversation}/artifacts/{artifact}`."""
    if not name:
        v.add(field, "is required")
        return "", ""
    conversation, separator, artifact = name.rpartition("/artifacts/")
    if not separator or not RESOURCE_ID.fullmatch(artifact):
        v.add(field, ARTIFACT_NAME_RULE)
        return "", ""
    return _collect_name(v, conversation, "conversations", field), artifact


def _artifact_fields(v: Violations, artifact: pb.Artifact) -> models.ArtifactFields:
    _check_display_name(v, artifact.display_name, "artifact.display_name")
    if not artifact.content_type:
        v.add("artifact.content_type", "is required")
    elif artifact.content_type not in ARTIFACT_CONTENT_TYPES:
        v.add("artifact.content_type", "must be one of " + ", ".join(ARTIFACT_CONTENT_TYPES))
    metadata = ""
    if artifact.HasField("metadata"):
        metadata = _struct_json(v, artifact.metadata, "artifact.metadata")
    return models.ArtifactFields(artifact.display_name, artifact.content_type, metadata)


def _check_display_name(v: Violations, name: str, field: str) -> None:
    """A file name to offer on download: no path, nothing a terminal or browser would act on."""
    if not name:
        v.add(field, "is required")
    elif len(name) > MAX_DISPLAY_NAME:
        v.add(field, f"must be at most {MAX_DISPLAY_NAME} characters")
    elif "/" in name or "\\" in name:
        v.add(field, "must be a file name, without path separators ('/' or '\\')")
    elif not name.isprintable():
        # Also refuses invisible format characters (a right-to-left override, say).
        v.add(field, "must not contain control or invisible characters")
    elif not name.strip(". "):
        v.add(field, "must name a file (not only dots and spaces)")


def _check_feedback(v: Violations, feedback: pb.Feedback, field: str, present: bool) -> None:
    if not present:
        v.add(field, "is required")
        return
    if feedback.rating == pb.FEEDBACK_RATING_UNSPECIFIED:
        v.add(f"{field}.rating", "is required: FEEDBACK_RATING_UP or FEEDBACK_RATING_DOWN")
    else:
        _check_enum(v, pb.FeedbackRating, feedback.rating, f"{field}.rating")
    _check_length(v, feedback.comment, MAX_FEEDBACK_COMMENT, f"{field}.comment")
    _check_length(v, feedback.author, MAX_AUTHOR, f"{field}.author")


def _collect_name(v: Violations, name: str, collection: str, field: str) -> str:
    if not name:
        v.add(field, "is required")
        return ""
    try:
        return parse_name(name, collection, field)
    except InvalidArgument as error:
        for violation in error.violations:
            v.add(violation.field, violation.description)
        return ""


def _mask_paths(
    v: Violations, resource: message.Message, paths: Sequence[str], known: Sequence[str]
) -> tuple[str, ...]:
    """The fields an update writes: the mask's, or (AIP-134) every populated one without it."""
    for path in paths:
        if path not in known:
            v.add("update_mask", f"unknown path {path!r}; known: {', '.join(known)}")
    if paths:
        return tuple(p for p in dict.fromkeys(paths) if p in known)
    return tuple(p for p in known if _populated(resource, p))


def _populated(resource: message.Message, name: str) -> bool:
    value = getattr(resource, name)
    if isinstance(value, str | bytes | int | float):
        return bool(value)
    if isinstance(value, message.Message):
        return resource.HasField(name)
    return len(value) > 0


def _etag_version(v: Violations, etag: str, field: str) -> int | None:
    if not etag:
        return None
    match = ETAG.match(etag)
    if match is None:
        v.add(field, "is not an etag this service issued")
        return None
    return int(match.group(1))


def _check_request_id(v: Violations, request_id: str) -> None:
    v.check(
        len(request_id) <= MAX_REQUEST_ID and request_id.isprintable() and " " not in request_id,
        "request_id",
        f"must be at most {MAX_REQUEST_ID} printable characters without spaces",
    )


def _check_enum(v: Violations, enum: Any, value: int, field: str) -> None:
    v.check(value in enum.values(), field, f"unknown value {value}")


def _check_tags(v: Violations, tags: Sequence[str], field: str) -> None:
    v.check(len(tags) <= MAX_TAGS, field, f"at most {MAX_TAGS} tags")
    for index, tag in enumerate(tags):
        v.check(
            0 < len(tag) <= MAX_TAG, f"{field}[{index}]", f"must be 1-{MAX_TAG} characters long"
        )


def _check_length(v: Violations, value: str, limit: int, field: str) -> None:
    v.check(len(value) <= limit, field, f"must be at most {limit} characters")


def _conversation_fields(
    v: Violations, conversation: pb.Conversation, paths: Sequence[str]
) -> ConversationFields:
    """The writable fields of `conversation`, validating those named by `paths`."""
    if "title" in paths:
        _check_length(v, conversation.title, MAX_TITLE, "conversation.title")
    participants: list[models.Participant] = []
    if "participants" in paths:
        v.check(
            len(conversation.participants) <= MAX_PARTICIPANTS,
            "conversation.participants",
            f"at most {MAX_PARTICIPANTS} participants",
        )
        seen: set[str] = set()
        for index, p in enumerate(conversation.participants):
            field = f"conversation.participants[{index}]"
            if not p.id:
                v.add(f"{field}.id", "is required")
            elif not PARTICIPANT_ID.match(p.id):
                v.add(f"{field}.id", "must be 1-64 letters, digits, '_', '.', ':' or '-'")
            elif p.id in seen:
                v.add(f"{field}.id", "is a duplicate")
            seen.add(p.id)
            _check_enum(v, pb.ParticipantKind, p.kind, f"{field}.kind")
            for attribute in ("display_name", "role", "company"):
                _check_length(v, getattr(p, attribute), MAX_LABEL, f"{field}.{attribute}")
            participants.append(
                models.Participant(p.id, p.display_name, int(p.kind), p.role, p.company)
            )
    if "tags" in paths:
        _check_tags(v, conversation.tags, "conversation.tags")
    if "status" in paths:
        _check_enum(v, pb.ConversationStatus, conversation.status, "conversation.status")
    metadata = ""
    if "metadata" in paths and conversation.HasField("metadata"):
        metadata = _struct_json(v, conversation.metadata, "conversation.metadata")
    ttl = FOLLOW_POLICY
    if "ttl" in paths and conversation.HasField("ttl"):
        ttl = _ttl_millis(v, conversation.ttl, "conversation.ttl")
    known_status = conversation.status in pb.ConversationStatus.values()
    return ConversationFields(
        title=conversation.title,
        participants=tuple(participants),
        tags=tuple(dict.fromkeys(conversation.tags)),
        status=ConversationStatus(conversation.status if known_status else 0),
        metadata_json=metadata,
        ttl_ms=ttl,
    )


def _replace_status(fields: ConversationFields, status: ConversationStatus) -> ConversationFields:
    return ConversationFields(
        fields.title,
        fields.participants,
        fields.tags,
        status,
        fields.metadata_json,
        fields.ttl_ms,
    )


def _session_fields(v: Violations, session: pb.Session, paths: Sequence[str]) -> SessionFields:
    if "kind" in paths:
        _check_length(v, session.kind, MAX_KIND, "session.kind")
    state = ""
    if "state" in paths and session.HasField("state"):
        state = _struct_json(v, session.state, "session.state")
    ttl = FOLLOW_POLICY
    if "ttl" in paths and session.HasField("ttl"):
        ttl = _ttl_millis(v, session.ttl, "session.ttl")
    return SessionFields(kind=session.kind, state_json=state, ttl_ms=ttl)


def _check_message(v: Violations, msg: pb.Message) -> None:
    if msg.role == common_pb2.ROLE_UNSPECIFIED:
        v.add("message.role", "is required")
    else:
        _check_enum(v, common_pb2.Role, msg.role, "message.role")
    _check_length(v, msg.author, 64, "message.author")
    v.check(
        len(msg.text.encode()) <= MAX_TEXT_BYTES,
        "message.text",
        f"must be at most {MAX_TEXT_BYTES} bytes",
    )
    v.check(
        len(msg.citations) <= MAX_CITATIONS,
        "message.citations",
        f"at most {MAX_CITATIONS} citations",
    )
    if msg.HasField("sentiment"):
        _check_enum(v, common_pb2.SentimentLabel, msg.sentiment.label, "message.sentiment.label")
        v.check(
            -1.0 <= msg.sentiment.score <= 1.0,
            "message.sentiment.score",
            "must be between -1 and 1",
        )
    if msg.HasField("usage"):
        for attribute in ("prompt_tokens", "completion_tokens", "total_tokens"):
            v.check(
                getattr(msg.usage, attribute) >= 0,
                f"message.usage.{attribute}",
                "must not be negative",
            )
    if msg.HasField("metadata"):
        _struct_json(v, msg.metadata, "message.metadata")
    # The whole stored body is bounded too, so citations cannot smuggle megabytes in.
    v.check(
        msg.ByteSize() <= MAX_TEXT_BYTES + MAX_JSON_BYTES,
        "message",
        f"must be at most {MAX_TEXT_BYTES + MAX_JSON_BYTES} bytes",
    )


def _struct_json(v: Violations, struct: struct_pb2.Struct, field: str) -> str:
    try:
        text = _to_json(struct)
    except ValueError:
        # NaN and infinities have no JSON form (they would read back as strings).
        v.add(field, "numbers must be finite: NaN and infinities have no JSON form")
        return ""
    v.check(
        len(text.encode()) <= MAX_JSON_BYTES,
        field,
        f"must be at most {MAX_JSON_BYTES} bytes as JSON",
    )
    return text


def _ttl_millis(v: Violations, duration: Duration, field: str) -> int:
    if duration.seconds < 0 or duration.nanos < 0:
        v.add(field, "must not be negative")
        return 0
    # Rounded up, so a tiny positive ttl never turns into "keep forever".
    millis = duration.seconds * 1000 + math.ceil(duration.nanos / 1_000_000)
    if millis > MAX_TTL_MS:
        v.add(field, "must be at most 3650 days")
    return millis


# Translation


def _to_json(value: message.Message) -> str:
    return json_format.MessageToJson(value, indent=None, sort_keys=True)


def _struct_json_of(data: dict[str, Any]) -> str:
    struct = struct_pb2.Struct()
    struct.update(data)
    return _to_json(struct)


def _millis(v: Violations, timestamp: timestamp_pb2.Timestamp, field: str) -> int | None:
    """Milliseconds since the epoch; a violation (and None) outside 0001-01-01..9999-12-31."""
    try:
        return int(timestamp.ToMilliseconds())
    except ValueError:
        v.add(field, "must be a valid timestamp between 0001-01-01 and 9999-12-31")
        return None


def _timestamp(millis: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(millis)
    return stamp


def _status_proto(status: ConversationStatus) -> pb.ConversationStatus.ValueType:
    return pb.ConversationStatus.ValueType(int(status))


def _conversation_proto(c: models.Conversation) -> pb.Conversation:
    result = pb.Conversation(
        name=f"conversations/{c.id}",
        title=c.fields.title,
        participants=[
            pb.Participant(
                id=p.id,
                display_name=p.display_name,
                kind=pb.ParticipantKind.ValueType(p.kind),
                role=p.role,
                company=p.company,
            )
            for p in c.fields.participants
        ],
        tags=c.fields.tags,
        status=_status_proto(c.fields.status),
        create_time=_timestamp(c.create_ms),
        update_time=_timestamp(c.update_ms),
        message_count=c.message_count,
        last_sequence=c.last_sequence,
        etag=f'"{c.version}"',
    )
    if c.fields.metadata_json:
        json_format.Parse(c.fields.metadata_json, result.metadata)
    if c.expire_ms:
        result.expire_time.CopyFrom(_timestamp(c.expire_ms))
    return result


def _message_proto(conversation_id: str, stored: StoredMessage) -> pb.Message:
    result = json_format.Parse(stored.body_json, pb.Message())
    result.name = f"conversations/{conversation_id}/messages/{stored.position}"
    result.position = stored.position
    result.event_sequence = stored.event_sequence
    result.create_time.CopyFrom(_timestamp(stored.create_ms))
    return result


def _event_proto(conversation_id: str, stored: StoredEvent) -> pb.Event:
    result = pb.Event(
        sequence=stored.sequence, type=stored.type, create_time=_timestamp(stored.create_ms)
    )
    if stored.message is not None:
        result.message.CopyFrom(_message_proto(conversation_id, stored.message))
    elif stored.data_json:
        json_format.Parse(stored.data_json, result.data)
    return result


def _artifact_proto(conversation_id: str, stored: models.StoredArtifact) -> pb.Artifact:
    result = pb.Artifact(
        name=f"conversations/{conversation_id}/artifacts/{stored.id}",
        display_name=stored.fields.display_name,
        content_type=stored.fields.content_type,
        size_bytes=stored.size_bytes,
        sha256=stored.sha256,
        create_time=_timestamp(stored.create_ms),
    )
    if stored.fields.metadata_json:
        json_format.Parse(stored.fields.metadata_json, result.metadata)
    if stored.content is not None:
        result.content = stored.content
    return result


def _session_proto(s: models.Session) -> pb.Session:
    result = pb.Session(
        name=f"sessions/{s.id}",
        kind=s.fields.kind,
        version=s.version,
        etag=f'"{s.version}"',
        create_time=_timestamp(s.create_ms),
        update_time=_timestamp(s.update_ms),
    )
    if s.fields.state_json:
        json_format.Parse(s.fields.state_json, result.state)
    if s.expire_ms:
        result.expire_time.CopyFrom(_timestamp(s.expire_ms))
    return result


def _retention_proto(policy: models.RetentionPolicy) -> pb.RetentionPolicy:
    result = pb.RetentionPolicy(name=RETENTION_NAME)
    result.conversation_ttl.FromMilliseconds(policy.conversation_ttl_ms)
    result.session_ttl.FromMilliseconds(policy.session_ttl_ms)
    if policy.update_ms:
        result.update_time.CopyFrom(_timestamp(policy.update_ms))
    return result


def _cursor(raw: dict[str, Any] | None) -> Cursor | None:
    if raw is None:
        return None
    score, cursor_id = raw.get("s"), raw.get("i")
    if not isinstance(score, int) or not isinstance(cursor_id, str):
        raise InvalidArgument.field("page_token", "is not a token this service issued")
    return Cursor(score, cursor_id)


async def _cursor_token(cursor: Cursor | None, query: dict[str, Any]) -> str:
    return (
        ""
        if cursor is None
        else await page_tokens.encode({"s": cursor.score, "i": cursor.id}, query)
    )


def _int_cursor(raw: dict[str, Any] | None, key: str) -> int:
    if raw is None:
        return 0
    value = raw.get(key)
    if not isinstance(value, int) or value < 0:
        raise InvalidArgument.field("page_token", "is not a token this service issued")
    return value


# Bootstrap


async def build(runtime: Runtime[PersistenceSettings]) -> ServiceDefinition:
    settings = runtime.settings
    store = RedisStore(
        settings.redis_url,
        request_id_ttl_seconds=settings.request_id_ttl_seconds,
        min_replicas=settings.redis_min_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
    servicer = PersistenceServicer(store, settings, runtime)
    return ServiceDefinition(
        service_names=[SERVICE_NAME],
        register=lambda server: pb_grpc.add_PersistenceServiceServicer_to_server(servicer, server),
        checks=[DependencyCheck("redis", store.ping)],
        on_stop=[store.close],
    )
