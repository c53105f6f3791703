"""The sync facade: the same calls, blocking, from code without an event loop."""

from __future__ import annotations

import threading

import pytest

import callisto
from callisto import errors
from callisto.api.persistence.v1 import persistence_pb2 as pb
from callisto.mesh.processes import ServiceProcess


def blocking_script(address: str, api_key: str) -> list[object]:
    """What a script does: create, append, list, subscribe, fail, all without asyncio."""
    with callisto.SyncClient.connect(address, api_key=api_key) as client:
        conversation = client.persistence.create_conversation(title="sync")
        client.persistence.append_events(conversation.name, [("a", {"x": 1}), ("b", None)])
        client.persistence.create_message(conversation.name, pb.Message(role=1, text="hi"))
        messages = [m.text for m in client.persistence.list_messages(conversation.name)]
        client.persistence.update_conversation(
            pb.Conversation(name=conversation.name, status=pb.CONVERSATION_STATUS_COMPLETED),
            ["status"],
        )
        subscription = client.persistence.subscribe_events(conversation.name)
        types = [event.type for event in subscription]
        with pytest.raises(errors.NotFound):
            client.persistence.get_conversation("conversations/sync-missing")
        return [messages, types[:2], subscription.end.last_sequence == len(types)]


def test_sync_client_runs_the_sdk_without_an_event_loop(
    persistence: ServiceProcess, api_key: str
) -> None:
    # A plain thread, as a script's main thread would be: no running loop there.
    results: list[object] = []
    worker = threading.Thread(
        target=lambda: results.extend(blocking_script(persistence.address, api_key))
    )
    worker.start()
    worker.join(60)
    assert results == [["hi"], ["a", "b"], True]


def test_connect_sync_is_the_sync_client(persistence: ServiceProcess, api_key: str) -> None:
    holder: list[object] = []

    def run() -> None:
        client = callisto.Client.connect_sync(persistence.address, api_key=api_key)
        try:
            holder.append(client.persistence.get_retention_policy().name)
        finally:
            client.close()

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(30)
    assert holder == ["retentionPolicy"]
