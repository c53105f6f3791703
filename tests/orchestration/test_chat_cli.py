"""`callisto chat` against the test mesh through the real Envoy: an answer streamed with its tool
calls and numbered sources, re-attaching to the run from the start or after an event id,
interactive questions in one conversation, and the refusals (no key, unknown agent)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.deploy import samples_dir
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.samples import conference_agent, ensure_agent, entity_messages
from callisto.orchestration import assistant_start

CALLISTO = str(Path(sys.executable).parent / "callisto")
QUESTION = "Which sessions talk about cold-chain monitoring, and who speaks?"


@dataclass
class Chat:
    """One `callisto chat` run: exit status and output."""

    code: int
    out: str
    err: str

    def events(self) -> list[dict[str, Any]]:
        """The events of a `--json` run."""
        return [json.loads(line) for line in self.out.splitlines() if line.startswith("{")]


@dataclass
class ChatMesh:
    gateway: EnvoyGateway
    key: str
    agent: str
    home: Path

    async def chat(self, *arguments: str, stdin: str | None = None, key: bool = True) -> Chat:
        command = [CALLISTO, "chat", "--target", self.gateway.grpc_target]
        if key:
            command += ["--api-key", self.key]
        env = {**os.environ, "CALLISTO_HOME": str(self.home), "COLUMNS": "200"}
        env.pop("CALLISTO_API_KEY", None)
        process = await asyncio.create_subprocess_exec(
            *command,
            *arguments,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(
            process.communicate(stdin.encode() if stdin is not None else b""), 180
        )
        assert process.returncode is not None
        return Chat(process.returncode, out.decode(), err.decode())


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def chat_mesh(
    mesh_gateway: EnvoyGateway,
    tenant_key: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> ChatMesh:
    """A tenant holding the sample conference's entities and the sample conference assistant."""
    key = await asyncio.to_thread(tenant_key, "chat-cli")
    entities = await asyncio.to_thread(
        entity_messages, samples_dir() / "conference" / "entities.jsonl"
    )
    agent_id = f"conference-assistant-{uuid.uuid4().hex[:6]}"
    async with await callisto.Client.connect(mesh_gateway.grpc_target, api_key=key) as client:
        await client.retrieval.upsert_entities(entities, timeout=300)
        agent = await client.orchestration.create_agent(
            await asyncio.to_thread(conference_agent), agent_id=agent_id
        )
    return ChatMesh(mesh_gateway, key, agent.name, tmp_path_factory.mktemp("chat-home"))


def _kind(event: dict[str, Any]) -> str:
    (kind,) = [k for k in event if k not in ("eventId", "conversation", "createTime", "stepId")]
    return kind


def _conversation(out: str) -> str:
    hint = [line for line in out.splitlines() if "re-attach with --attach" in line]
    assert hint, out
    return hint[-1].rsplit(" ", 1)[1].rstrip(")")


async def test_chat_streams_the_answer_with_its_tool_calls_and_numbered_sources(
    chat_mesh: ChatMesh,
) -> None:
    asked = await chat_mesh.chat("--agent", chat_mesh.agent, QUESTION)
    assert asked.code == 0, asked.err
    assert "(done: completed" in asked.out
    conversation = _conversation(asked.out)
    # The same run's events, re-attached from the start as JSON: what the screen showed.
    replay = await chat_mesh.chat("--attach", conversation, "--json")
    assert replay.code == 0, replay.err
    events = replay.events()
    kinds = [_kind(event) for event in events]
    # The log opens with the question (the human's turn), then the run's events.
    assert kinds[:2] == ["turnEnded", "turnStarted"] and kinds[-1] == "done"
    assert events[0]["turnEnded"]["text"] == QUESTION
    answer = [e["turnEnded"] for e in events if _kind(e) == "turnEnded"][-1]
    assert answer["text"] and answer["text"].split()[0] in asked.out
    lines = asked.out.splitlines()
    calls = [e["toolCall"] for e in events if _kind(e) == "toolCall"]
    assert calls, "the conference question is answered with a search"
    for call in calls:
        assert any(line.strip().startswith(f"· {call['tool']}(") for line in lines), call
    citations = answer.get("citations") or [e["citation"] for e in events if _kind(e) == "citation"]
    if citations:
        sources = lines[lines.index("Sources:") + 1 :]
        for citation in citations:
            expected = f"[{citation.get('marker', 0)}] {citation.get('title', '')}"
            assert any(line.strip().startswith(expected) for line in sources), expected
    # Tool calls show before the answer's tokens: they are printed as they happen.
    first_call = next(i for i, line in enumerate(lines) if line.strip().startswith("· "))
    opening = answer["text"].strip()[:12]
    first_token = next(i for i, line in enumerate(lines) if line.strip().startswith(opening))
    assert first_call < first_token


async def test_attach_after_an_event_id_shows_only_the_later_events(chat_mesh: ChatMesh) -> None:
    asked = await chat_mesh.chat("--agent", chat_mesh.agent, "--json", QUESTION)
    assert asked.code == 0, asked.err
    events = asked.events()
    conversation = events[0]["conversation"]
    middle = int(events[len(events) // 2]["eventId"])
    later = await chat_mesh.chat("--attach", conversation, "--after", str(middle), "--json")
    assert later.code == 0, later.err
    assert later.events() == [e for e in events if int(e["eventId"]) > middle]
    shown = await chat_mesh.chat("--attach", conversation, "--after", str(middle))
    assert shown.code == 0 and "(done: completed" in shown.out


async def test_interactive_chat_asks_each_question_in_one_conversation(
    chat_mesh: ChatMesh,
) -> None:
    session = await chat_mesh.chat(
        "--agent", chat_mesh.agent, stdin="Who speaks about cold chains?\n\nAnd exhibitors?\nexit\n"
    )
    assert session.code == 0, session.err
    assert session.out.count("(done: completed") == 2
    assert session.out.count("re-attach with --attach") == 1
    assert _conversation(session.out).startswith("conversations/")


async def test_an_unknown_agent_is_reported_with_the_services_reason(chat_mesh: ChatMesh) -> None:
    failed = await chat_mesh.chat("--agent", f"agents/missing-{uuid.uuid4().hex[:6]}", "hello")
    assert failed.code == 2 and not failed.out
    assert failed.err.startswith("chat failed: INVALID_ARGUMENT") and "no such agent" in failed.err


async def test_chat_without_a_key_says_how_to_give_one(chat_mesh: ChatMesh) -> None:
    refused = await chat_mesh.chat("--agent", chat_mesh.agent, "hello", key=False)
    assert refused.code == 2 and "--api-key" in refused.err
    missing_tenant = await chat_mesh.chat(
        "--agent", chat_mesh.agent, "--tenant", "nobody", "hello", key=False
    )
    assert missing_tenant.code == 2 and "no saved key" in missing_tenant.err


async def test_sample_agents_are_created_once_and_revised_only_when_changed(
    chat_mesh: ChatMesh,
) -> None:
    wanted = await asyncio.to_thread(conference_agent)
    agent_id = f"sample-{uuid.uuid4().hex[:6]}"
    async with await callisto.Client.connect(
        chat_mesh.gateway.grpc_target, api_key=chat_mesh.key
    ) as client:
        created, first = await ensure_agent(client, agent_id, wanted)
        same, second = await ensure_agent(client, agent_id, wanted)
        assert (first, second) == ("created", "unchanged")
        assert same.revision_id == created.revision_id
        changed = pb.Agent()
        changed.CopyFrom(wanted)
        changed.system_prompt += " Answer in English."
        revised, third = await ensure_agent(client, agent_id, changed)
        assert third == "updated" and revised.revision_id != created.revision_id
        assert revised.system_prompt == changed.system_prompt
        revisions = [a async for a in client.orchestration.list_agent_revisions(agent_id)]
        assert len(revisions) == 2


async def test_ctrl_c_cancels_the_run_being_watched(chat_mesh: ChatMesh) -> None:
    # A slow run (every toy_llm token takes 200 ms), started and left going by the SDK.
    slow = (("x-callisto-model-extras", json.dumps({"delay_ms": 200})),)
    start = assistant_start(chat_mesh.agent, "describe every session of both days in detail")
    async with await callisto.Client.connect(
        chat_mesh.gateway.grpc_target, api_key=chat_mesh.key
    ) as client:
        async with client.orchestration.converse(start=start, metadata=slow) as session:
            async for _ in session.events():
                break
    process = await asyncio.create_subprocess_exec(
        CALLISTO, "chat", "--target", chat_mesh.gateway.grpc_target, "--api-key", chat_mesh.key,
        "--attach", session.conversation,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CALLISTO_HOME": str(chat_mesh.home)},
    )  # fmt: skip
    assert process.stdout is not None
    shown = []
    async with asyncio.timeout(120):
        while not any(line.startswith("  ·") for line in shown):
            shown.append((await process.stdout.readline()).decode())
        process.send_signal(signal.SIGINT)
        rest, err = await process.communicate()
    out = "".join(shown) + rest.decode()
    assert process.returncode == 0, err.decode()
    assert "(cancelling…)" in out and "(done: cancelled" in out
