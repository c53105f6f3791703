"""A conversation's figures (`ConversationMetrics`), computed from its stored messages and its
metadata only, so a live run's `done`, GetConversationMetrics and a replay always agree."""

from __future__ import annotations

from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2


def conversation_metrics(
    conversation: persistence_pb2.Conversation,
    messages: list[persistence_pb2.Message],
) -> pb.ConversationMetrics:
    """The figures of `conversation` from its messages, oldest first."""
    raise NotImplementedError
