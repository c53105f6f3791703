"""A conversation as JSON: the stored conversation, its stored messages and its metrics, in
protobuf's JSON mapping (json_format), with an `export` object that says how many messages the
document holds out of how many (a download is bounded in size; the metrics cover them all)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from google.protobuf import json_format

from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2

CONTENT_TYPE = "application/json"
MAX_JSON_BYTES = 3 * 1024 * 1024
"""Largest JSON document; messages past it are left out (and counted)."""


def render_json(
    conversation: persistence_pb2.Conversation,
    messages: Sequence[persistence_pb2.Message],
    metrics: pb.ConversationMetrics,
    *,
    total_messages: int,
) -> bytes:
    head = {
        "conversation": json_format.MessageToDict(conversation),
        "metrics": json_format.MessageToDict(metrics),
    }
    used = len(json.dumps(head, ensure_ascii=False).encode()) + 512
    included: list[object] = []
    for message in messages:
        item = json_format.MessageToDict(message)
        size = len(json.dumps(item, ensure_ascii=False).encode()) + 2
        if used + size > MAX_JSON_BYTES:
            break
        used += size
        included.append(item)
    export: dict[str, object] = {
        "messages": len(included),
        "totalMessages": total_messages,
        "complete": len(included) == total_messages,
    }
    if len(included) < total_messages:
        export["note"] = (
            f"Only the first {len(included)} of {total_messages} messages fit in a "
            f"{MAX_JSON_BYTES}-byte download; list the rest through persistence's ListMessages."
        )
    document = {**head, "messages": included, "export": export}
    return json.dumps(document, ensure_ascii=False).encode()
