"""`client.persistence`: conversations, messages, event logs, artifacts, sessions and retention.

Methods return the `callisto.api.persistence.v1.persistence_pb2` messages. Conversation
arguments take a name (`conversations/c1`) or a bare id (`c1`); sessions likewise
(`sessions/s1` or `s1`).

- Reads (`get_*`, `list_*`, `export_conversation`, `get_retention_policy`) are retried on
  UNAVAILABLE / RetryInfo. `create_conversation`, `create_message`, `append_events` and
  `create_artifact` send a `request_id` (a fresh UUID per call unless you pass one) that the
  service deduplicates for 24 h, so they are retried too without ever writing twice (a
  repeated artifact `request_id` answers the first artifact stored under it, even when the
  repeat carries other bytes). `update_message_feedback` sets an
  absolute rating (the last one wins), so it is retried as well. Updates and deletes (etag
  compare-and-set) and `create_session` (no request id in the contract) are not retried, except
  `update_conversation` / `update_session` with an etag and `retry=True`: a compare-and-set
  never applies twice, but a retry after a lost reply answers `Aborted` although the first
  attempt was applied, so that is for callers that reload and merge on `Aborted` anyway (a
  run's checkpoint).
- `list_conversations`, `list_messages`, `list_events`, `list_artifacts` (newest first, without
  content: `get_artifact` has the bytes) and `list_sessions` are async iterators over every
  item, following `next_page_token`; `page_size` is the size of each page fetched.
- `subscribe_events(conversation, after_sequence=0)` yields `Event`s of the log, live, resuming
  by itself after a dropped connection or a service restart from the last sequence it yielded
  (no gap, no duplicate); it ends after the last event of a finished conversation (its
  `EndOfStream` is then in `.end`) and raises `callisto.errors` for non-retryable failures.
"""

# `timeout` is a gRPC deadline sent to the server (and spent across retries), not a local
# cancel scope, so these functions take it the way grpc stubs do.
# ruff: noqa: ASYNC109
from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import status_pb2

from callisto._facade import Facade, Metadata
from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2_grpc as pb_grpc
from callisto.retry import RetryPolicy
from callisto.streams import RESUME_POLICY, paged, resume_stream


def conversation_name(conversation: str) -> str:
    """`conversations/{id}` from a name or a bare id."""
    return conversation if "/" in conversation else f"conversations/{conversation}"


def session_name(session: str) -> str:
    """`sessions/{id}` from a name or a bare id."""
    return session if "/" in session else f"sessions/{session}"


def struct(data: Mapping[str, Any] | struct_pb2.Struct | None) -> struct_pb2.Struct | None:
    """A `Struct` from a JSON-like dict (None stays None)."""
    if data is None or isinstance(data, struct_pb2.Struct):
        return data
    value = struct_pb2.Struct()
    value.update(data)
    return value


def _mask(paths: Sequence[str] | None) -> field_mask_pb2.FieldMask | None:
    return None if paths is None else field_mask_pb2.FieldMask(paths=list(paths))


class EventSubscription:
    """The events of one conversation's log, as an async iterator that resumes by itself."""

    def __init__(
        self,
        stub: pb_grpc.PersistenceServiceAsyncStub,
        parent: str,
        after_sequence: int,
        metadata: Metadata | None,
        policy: RetryPolicy,
    ) -> None:
        self.parent = parent
        # Sequence of the last event yielded.
        self.last_sequence = after_sequence
        # The end marker, once a finished conversation's log was delivered in full.
        self.end: pb.EndOfStream | None = None
        # How many times the stream was reopened.
        self.resumes = 0
        self._stub = stub
        self._metadata = metadata
        self._policy = policy
        self._iterator: AsyncGenerator[pb.Event, None] | None = None

    def _open(self, after: int) -> Any:
        request = pb.SubscribeEventsRequest(parent=self.parent, after_sequence=after)
        return self._stub.SubscribeEvents(request, metadata=self._metadata)

    def _count_resume(self, _after: int, _error: object) -> None:
        self.resumes += 1

    async def _events(self) -> AsyncGenerator[pb.Event, None]:
        responses = resume_stream(
            self._open,
            position=_event_position,
            after=self.last_sequence,
            terminal_error=_subscription_error,
            policy=self._policy,
            on_resume=self._count_resume,
        )
        async for response in responses:
            kind = response.WhichOneof("kind")
            if kind == "event":
                self.last_sequence = response.event.sequence
                yield response.event
            elif kind == "end":
                self.end = response.end
                await responses.aclose()
                return

    def __aiter__(self) -> AsyncIterator[pb.Event]:
        if self._iterator is None:
            self._iterator = self._events()
        return self._iterator

    async def __anext__(self) -> pb.Event:
        return await self.__aiter__().__anext__()

    async def aclose(self) -> None:
        """Stops the subscription (closing the stream; the log is untouched)."""
        if self._iterator is not None:
            await self._iterator.aclose()


def _event_position(response: pb.SubscribeEventsResponse) -> int | None:
    return response.sequence if response.WhichOneof("kind") == "event" else None


def _subscription_error(response: pb.SubscribeEventsResponse) -> status_pb2.Status | None:
    return response.error if response.WhichOneof("kind") == "error" else None


class PersistenceClient(Facade):
    """The persistence service (`callisto.persistence.v1.PersistenceService`)."""

    @property
    def stub(self) -> pb_grpc.PersistenceServiceAsyncStub:
        return pb_grpc.PersistenceServiceStub(self._client.channel)

    # Conversations

    async def create_conversation(
        self,
        conversation: pb.Conversation | None = None,
        *,
        conversation_id: str = "",
        title: str = "",
        tags: Sequence[str] = (),
        data: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.Conversation:
        """Creates a conversation (`title`, `tags`, `data` fill a missing `conversation`)."""
        if conversation is None:
            conversation = pb.Conversation(title=title, tags=list(tags), metadata=struct(data))
        request = pb.CreateConversationRequest(
            conversation=conversation,
            conversation_id=conversation_id,
            request_id=request_id or uuid.uuid4().hex,
        )
        response = await self._unary(
            self.stub.CreateConversation,
            request,
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.CreateConversationResponse,
        )
        return response.conversation

    async def get_conversation(
        self, conversation: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> pb.Conversation:
        response = await self._unary(
            self.stub.GetConversation,
            pb.GetConversationRequest(name=conversation_name(conversation)),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.GetConversationResponse,
        )
        return response.conversation

    def list_conversations(
        self,
        *,
        page_size: int = 0,
        tags: Sequence[str] = (),
        status: pb.ConversationStatus.ValueType = pb.CONVERSATION_STATUS_UNSPECIFIED,
        participant: str = "",
        order_by: str = "",
        request: pb.ListConversationsRequest | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[pb.Conversation]:
        """Every matching conversation (`request` gives the time-range filters too)."""
        base = request or pb.ListConversationsRequest(
            page_size=page_size,
            tags=list(tags),
            status=status,
            participant=participant,
            order_by=order_by,
        )

        async def fetch(token: str) -> pb.ListConversationsResponse:
            page = pb.ListConversationsRequest()
            page.CopyFrom(base)
            page.page_token = token
            return await self._unary(
                self.stub.ListConversations,
                page,
                idempotent=True,
                timeout=timeout,
                metadata=metadata,
                response_type=pb.ListConversationsResponse,
            )

        return paged(fetch, lambda r: r.conversations, lambda r: r.next_page_token)

    async def update_conversation(
        self,
        conversation: pb.Conversation,
        update_mask: Sequence[str] | None = None,
        *,
        retry: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.Conversation:
        """Updates `update_mask` fields (set fields when None); with `etag`, only if unchanged.
        With an etag and `retry`, UNAVAILABLE is retried (see the module's notes)."""
        response = await self._unary(
            self.stub.UpdateConversation,
            pb.UpdateConversationRequest(conversation=conversation, update_mask=_mask(update_mask)),
            idempotent=retry and bool(conversation.etag),
            timeout=timeout,
            metadata=metadata,
            response_type=pb.UpdateConversationResponse,
        )
        return response.conversation

    async def delete_conversation(
        self,
        conversation: str,
        *,
        etag: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> None:
        await self._unary(
            self.stub.DeleteConversation,
            pb.DeleteConversationRequest(name=conversation_name(conversation), etag=etag),
            idempotent=False,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.DeleteConversationResponse,
        )

    async def export_conversation(
        self,
        conversation: str,
        *,
        include_events: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.ExportConversationResponse:
        return await self._unary(
            self.stub.ExportConversation,
            pb.ExportConversationRequest(
                name=conversation_name(conversation), include_events=include_events
            ),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.ExportConversationResponse,
        )

    # Messages

    async def create_message(
        self,
        conversation: str,
        message: pb.Message,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.Message:
        response = await self._unary(
            self.stub.CreateMessage,
            pb.CreateMessageRequest(
                parent=conversation_name(conversation),
                message=message,
                request_id=request_id or uuid.uuid4().hex,
            ),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.CreateMessageResponse,
        )
        return response.message

    async def get_message(
        self, name: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> pb.Message:
        response = await self._unary(
            self.stub.GetMessage,
            pb.GetMessageRequest(name=name),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.GetMessageResponse,
        )
        return response.message

    async def update_message_feedback(
        self,
        name: str,
        rating: pb.FeedbackRating.ValueType,
        comment: str = "",
        *,
        author: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.Message:
        """Sets the rating of message `name` (`conversations/{c}/messages/{position}`); the
        last rating wins, so a retry writes the same thing."""
        feedback = pb.Feedback(rating=rating, comment=comment, author=author)
        response = await self._unary(
            self.stub.UpdateMessage,
            pb.UpdateMessageRequest(
                message=pb.Message(name=name, feedback=feedback),
                update_mask=field_mask_pb2.FieldMask(paths=["feedback"]),
            ),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.UpdateMessageResponse,
        )
        return response.message

    def list_messages(
        self,
        conversation: str,
        *,
        page_size: int = 0,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[pb.Message]:
        """Every message of the conversation, oldest first."""

        async def fetch(token: str) -> pb.ListMessagesResponse:
            return await self._unary(
                self.stub.ListMessages,
                pb.ListMessagesRequest(
                    parent=conversation_name(conversation), page_size=page_size, page_token=token
                ),
                idempotent=True,
                timeout=timeout,
                metadata=metadata,
                response_type=pb.ListMessagesResponse,
            )

        return paged(fetch, lambda r: r.messages, lambda r: r.next_page_token)

    # Events

    async def append_event(
        self,
        conversation: str,
        type: str,
        data: Mapping[str, Any] | struct_pb2.Struct | None = None,
        *,
        request_id: str | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.Event:
        """Appends one event of `type` with JSON `data`; returns it with its sequence."""
        response = await self._unary(
            self.stub.CreateEvent,
            pb.CreateEventRequest(
                parent=conversation_name(conversation),
                event=pb.Event(type=type, data=struct(data)),
                request_id=request_id or uuid.uuid4().hex,
            ),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.CreateEventResponse,
        )
        return response.event

    async def append_events(
        self,
        conversation: str,
        events: Sequence[pb.Event | tuple[str, Mapping[str, Any] | None]],
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> list[pb.Event]:
        """Appends events in order (`Event`s or `(type, data)` pairs); each is deduplicated by its
        own request id, so a retried append never doubles one."""
        stored = []
        for event in events:
            data: Mapping[str, Any] | struct_pb2.Struct | None
            if isinstance(event, pb.Event):
                type_, data = event.type, event.data if event.HasField("data") else None
            else:
                type_, data = event
            stored.append(
                await self.append_event(
                    conversation, type_, data, timeout=timeout, metadata=metadata
                )
            )
        return stored

    def list_events(
        self,
        conversation: str,
        *,
        after_sequence: int = 0,
        page_size: int = 0,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[pb.Event]:
        """Every event now in the log after `after_sequence`, in order."""

        async def fetch(token: str) -> pb.ListEventsResponse:
            return await self._unary(
                self.stub.ListEvents,
                pb.ListEventsRequest(
                    parent=conversation_name(conversation),
                    after_sequence=after_sequence,
                    page_size=page_size,
                    page_token=token,
                ),
                idempotent=True,
                timeout=timeout,
                metadata=metadata,
                response_type=pb.ListEventsResponse,
            )

        return paged(fetch, lambda r: r.events, lambda r: r.next_page_token)

    def subscribe_events(
        self,
        conversation: str,
        *,
        after_sequence: int = 0,
        metadata: Metadata | None = None,
        policy: RetryPolicy = RESUME_POLICY,
    ) -> EventSubscription:
        """The log's events after `after_sequence`, live, resuming across failures."""
        return EventSubscription(
            self.stub, conversation_name(conversation), after_sequence, metadata, policy
        )

    # Artifacts

    async def create_artifact(
        self,
        conversation: str,
        artifact: pb.Artifact | None = None,
        *,
        display_name: str = "",
        content_type: str = "",
        content: bytes = b"",
        data: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.Artifact:
        """Stores a file with the conversation (`display_name`, `content_type`, `content` and
        `data`, its metadata, fill a missing `artifact`); returns it without its content."""
        if artifact is None:
            artifact = pb.Artifact(
                display_name=display_name,
                content_type=content_type,
                content=content,
                metadata=struct(data),
            )
        response = await self._unary(
            self.stub.CreateArtifact,
            pb.CreateArtifactRequest(
                parent=conversation_name(conversation),
                artifact=artifact,
                request_id=request_id or uuid.uuid4().hex,
            ),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.CreateArtifactResponse,
        )
        return response.artifact

    async def get_artifact(
        self, name: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> pb.Artifact:
        """The artifact `conversations/{c}/artifacts/{a}` with its content."""
        response = await self._unary(
            self.stub.GetArtifact,
            pb.GetArtifactRequest(name=name),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.GetArtifactResponse,
        )
        return response.artifact

    def list_artifacts(
        self,
        conversation: str,
        *,
        page_size: int = 0,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[pb.Artifact]:
        """Every artifact of the conversation, newest first, without content."""

        async def fetch(token: str) -> pb.ListArtifactsResponse:
            return await self.list_artifacts_page(
                conversation,
                page_size=page_size,
                page_token=token,
                timeout=timeout,
                metadata=metadata,
            )

        return paged(fetch, lambda r: r.artifacts, lambda r: r.next_page_token)

    async def list_artifacts_page(
        self,
        conversation: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.ListArtifactsResponse:
        """One page of the conversation's artifacts, for callers that hand out page tokens."""
        return await self._unary(
            self.stub.ListArtifacts,
            pb.ListArtifactsRequest(
                parent=conversation_name(conversation), page_size=page_size, page_token=page_token
            ),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.ListArtifactsResponse,
        )

    # Sessions

    async def create_session(
        self,
        session: pb.Session | None = None,
        *,
        session_id: str = "",
        kind: str = "",
        state: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.Session:
        """Creates a session (`kind`, `state` fill a missing `session`); never retried."""
        if session is None:
            session = pb.Session(kind=kind, state=struct(state))
        response = await self._unary(
            self.stub.CreateSession,
            pb.CreateSessionRequest(session=session, session_id=session_id),
            idempotent=False,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.CreateSessionResponse,
        )
        return response.session

    async def get_session(
        self, session: str, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> pb.Session:
        response = await self._unary(
            self.stub.GetSession,
            pb.GetSessionRequest(name=session_name(session)),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.GetSessionResponse,
        )
        return response.session

    def list_sessions(
        self,
        *,
        kind: str = "",
        page_size: int = 0,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[pb.Session]:
        async def fetch(token: str) -> pb.ListSessionsResponse:
            return await self._unary(
                self.stub.ListSessions,
                pb.ListSessionsRequest(kind=kind, page_size=page_size, page_token=token),
                idempotent=True,
                timeout=timeout,
                metadata=metadata,
                response_type=pb.ListSessionsResponse,
            )

        return paged(fetch, lambda r: r.sessions, lambda r: r.next_page_token)

    async def list_sessions_page(
        self,
        *,
        kind: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.ListSessionsResponse:
        """One page of sessions, newest first, for callers that hand out page tokens."""
        return await self._unary(
            self.stub.ListSessions,
            pb.ListSessionsRequest(kind=kind, page_size=page_size, page_token=page_token),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.ListSessionsResponse,
        )

    async def update_session(
        self,
        session: pb.Session,
        update_mask: Sequence[str] | None = None,
        *,
        retry: bool = False,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.Session:
        """Writes the session; with its `etag`, only over that exact version (else Aborted).
        With an etag and `retry`, UNAVAILABLE is retried (see the module's notes)."""
        response = await self._unary(
            self.stub.UpdateSession,
            pb.UpdateSessionRequest(session=session, update_mask=_mask(update_mask)),
            idempotent=retry and bool(session.etag),
            timeout=timeout,
            metadata=metadata,
            response_type=pb.UpdateSessionResponse,
        )
        return response.session

    async def delete_session(
        self,
        session: str,
        *,
        etag: str = "",
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> None:
        await self._unary(
            self.stub.DeleteSession,
            pb.DeleteSessionRequest(name=session_name(session), etag=etag),
            idempotent=False,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.DeleteSessionResponse,
        )

    # Retention

    async def get_caller(
        self, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> str:
        """The tenant this client's credential acts for."""
        response = await self._unary(
            self.stub.GetCaller,
            pb.GetCallerRequest(),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.GetCallerResponse,
        )
        return response.tenant

    async def get_retention_policy(
        self, *, timeout: float | None = None, metadata: Metadata | None = None
    ) -> pb.RetentionPolicy:
        response = await self._unary(
            self.stub.GetRetentionPolicy,
            pb.GetRetentionPolicyRequest(name="retentionPolicy"),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.GetRetentionPolicyResponse,
        )
        return response.retention_policy

    async def update_retention_policy(
        self,
        policy: pb.RetentionPolicy,
        update_mask: Sequence[str] | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> pb.RetentionPolicy:
        """Sets the tenant's retention; absolute values, so a retry writes the same thing."""
        if not policy.name:
            named = pb.RetentionPolicy()
            named.CopyFrom(policy)
            named.name = "retentionPolicy"
            policy = named
        response = await self._unary(
            self.stub.UpdateRetentionPolicy,
            pb.UpdateRetentionPolicyRequest(
                retention_policy=policy, update_mask=_mask(update_mask)
            ),
            idempotent=True,
            timeout=timeout,
            metadata=metadata,
            response_type=pb.UpdateRetentionPolicyResponse,
        )
        return response.retention_policy
