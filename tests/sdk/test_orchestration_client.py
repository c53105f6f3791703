"""`client.orchestration` against the real orchestration service (toy_llm answers): agents and
their revisions, tools, runs that stream to their terminal event, re-attaching after an event
id, streams and Converse sessions that resume themselves after a connection is cut mid-stream
(a real TCP proxy severs it) with no gap and no duplicate, feedback, tenant isolation, and the
blocking client."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from google.protobuf import json_format
from sdk_test_support import SeveringProxy

import callisto
from callisto import orchestration
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.errors import InvalidArgument, NotFound
from callisto.mesh.processes import ServiceProcess
from callisto.orchestration import assistant_start


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def orch(sdk_orchestration: ServiceProcess, api_key: str) -> AsyncIterator[callisto.Client]:
    async with await callisto.Client.connect(sdk_orchestration.address, api_key=api_key) as client:
        yield client


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _agent(client: callisto.Client, system_prompt: str = "You answer briefly.") -> pb.Agent:
    return await client.orchestration.create_agent(
        agent_id=_id("sdk-agent"), display_name="SDK test agent", system_prompt=system_prompt
    )


@dataclass
class FinishedRun:
    """A run read to its end through `run()`, and the events it yielded."""

    run: orchestration.EventStream
    events: list[pb.ConversationEvent]
    # The conversation's whole log from the start, re-attached directly (the human turn that
    # opened the run comes before the run's own first event).
    log: list[pb.ConversationEvent]

    @property
    def conversation(self) -> str:
        return self.run.conversation


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def finished_run(orch: callisto.Client) -> FinishedRun:
    """One assistant run read to its end (the events later tests replay)."""
    agent = await _agent(orch)
    prompt = "tell me about the harbour tour and the opening keynote of the summit"
    run = orch.orchestration.run(assistant_start(agent.name, prompt))
    events = [event async for event in run]
    log = [event async for event in orch.orchestration.stream(run.conversation)]
    return FinishedRun(run, events, log)


def _ids(events: list[pb.ConversationEvent]) -> list[int]:
    return [event.event_id for event in events]


async def test_agents_are_created_read_listed_revised_and_deleted(orch: callisto.Client) -> None:
    sdk = orch.orchestration
    agent = await _agent(orch, system_prompt="first prompt")
    assert agent.name.startswith("agents/sdk-agent-") and agent.revision_id
    assert (await sdk.get_agent(agent.name.removeprefix("agents/"))).system_prompt == "first prompt"
    names = [a.name async for a in sdk.list_agents(page_size=1)]
    assert names.count(agent.name) == 1

    revised = await sdk.update_agent(
        pb.Agent(name=agent.name, system_prompt="second prompt"), update_mask=["system_prompt"]
    )
    assert revised.system_prompt == "second prompt" and revised.display_name == agent.display_name
    assert revised.revision_id != agent.revision_id
    revisions = [a async for a in sdk.list_agent_revisions(agent.name, page_size=1)]
    assert [r.name for r in revisions] == [
        f"{agent.name}@{revised.revision_id}",
        f"{agent.name}@{agent.revision_id}",
    ]
    old = await sdk.get_agent(f"{agent.name}@{agent.revision_id}")
    assert old.system_prompt == "first prompt"

    await sdk.delete_agent(agent.name)
    with pytest.raises(NotFound):
        await sdk.get_agent(agent.name)


async def test_an_agent_without_a_display_name_is_invalid_argument(orch: callisto.Client) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await orch.orchestration.create_agent(system_prompt="nameless")
    assert "agent.display_name" in raised.value.field_violations


async def test_tools_are_listed_with_their_argument_schemas(orch: callisto.Client) -> None:
    tools = {tool.name: tool for tool in await orch.orchestration.list_tools()}
    assert {"search_documents", "search_entities", "calculator", "current_time"} <= set(tools)
    schema = json_format.MessageToDict(tools["calculator"].parameters)
    assert schema["type"] == "object" and schema["properties"]


async def test_a_run_streams_to_its_terminal_event_with_increasing_ids(
    finished_run: FinishedRun,
) -> None:
    events = finished_run.events
    kinds = [event.WhichOneof("kind") for event in events]
    assert kinds[0] == "turn_started" and kinds[-1] == "done"
    assert "turn_ended" in kinds and kinds.count("done") == 1
    ids = _ids(events)
    assert ids == sorted(set(ids)) and ids[0] >= 1
    assert finished_run.conversation.startswith("conversations/")
    assert all(event.conversation == finished_run.conversation for event in events)
    run = finished_run.run
    assert run.last_event_id == ids[-1]
    assert run.done is not None and run.done.reason == "completed"
    ended = [e.turn_ended for e in events if e.WhichOneof("kind") == "turn_ended"][-1]
    # The tokens the run streamed are the answer the turn stored.
    assert run.text and run.text == ended.text


async def test_stream_re_attaches_after_an_event_id_with_exactly_what_came_after(
    orch: callisto.Client, finished_run: FinishedRun
) -> None:
    events = finished_run.events
    middle = events[len(events) // 2].event_id
    replay = [e async for e in orch.orchestration.stream(finished_run.conversation, middle)]
    assert replay == [e for e in events if e.event_id > middle]
    whole = await orch.orchestration.stream(finished_run.conversation.split("/")[1]).complete()
    assert whole.last_event_id == events[-1].event_id and whole.done == finished_run.run.done
    # From the start, the log holds the run's events after what opened it, and nothing else.
    assert finished_run.log[-len(events) :] == events
    assert all(e.event_id < events[0].event_id for e in finished_run.log[: -len(events)])


async def _proxied_events(
    proxy: SeveringProxy, api_key: str, watch: str, conversation: str
) -> tuple[list[pb.ConversationEvent], int]:
    # Its own subchannel pool: each client opens its own connection through the proxy.
    async with await callisto.Client.connect(
        proxy.address, api_key=api_key, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as client:
        if watch == "stream":
            stream = client.orchestration.stream(conversation)
            return [e async for e in stream], stream.resumes
        async with client.orchestration.converse(attach=conversation) as session:
            return [e async for e in session.events()], session.resumes


@pytest.mark.parametrize("watch", ["stream", "converse"])
async def test_a_stream_cut_mid_way_resumes_from_the_last_event_without_gap_or_duplicate(
    sdk_orchestration: ServiceProcess,
    api_key: str,
    finished_run: FinishedRun,
    watch: str,
) -> None:
    events = finished_run.log
    proxy = await SeveringProxy(sdk_orchestration.host, sdk_orchestration.port).start()
    try:
        whole, resumes = await _proxied_events(proxy, api_key, watch, finished_run.conversation)
        assert whole == events and resumes == 0
        # Cut the next connection half way through the bytes the whole replay took.
        proxy.cut_after = proxy.downstream_bytes[-1] // 2
        cut, resumes = await _proxied_events(proxy, api_key, watch, finished_run.conversation)
    finally:
        await proxy.stop()
    assert proxy.cuts == 1 and resumes >= 1, (proxy.downstream_bytes, proxy.cuts, resumes)
    assert cut == events


async def test_closing_a_converse_session_leaves_the_run_going(orch: callisto.Client) -> None:
    agent = await _agent(orch)
    start = assistant_start(agent.name, "what is on the programme of the first morning")
    async with orch.orchestration.converse(start=start) as session:
        async for _ in session.events():
            break  # watch one event, then walk away
    assert session.conversation
    finished = await orch.orchestration.stream(session.conversation).complete()
    assert finished.done is not None and finished.done.reason == "completed"


async def test_an_answer_can_be_rated(orch: callisto.Client, finished_run: FinishedRun) -> None:
    events = finished_run.events
    message = [e.turn_ended.message for e in events if e.WhichOneof("kind") == "turn_ended"][-1]
    assert message.startswith(f"{finished_run.conversation}/messages/")
    rated = await orch.orchestration.submit_feedback(message, orchestration.UP, "clear answer")
    assert rated.name == message and rated.feedback.comment == "clear answer"
    again = await orch.orchestration.submit_feedback(message, orchestration.DOWN)
    assert again.feedback.rating == orchestration.DOWN


async def test_another_tenants_agents_and_runs_are_not_found(
    sdk_orchestration: ServiceProcess,
    other_api_key: str,
    orch: callisto.Client,
    finished_run: FinishedRun,
) -> None:
    agent = await _agent(orch)
    async with await callisto.Client.connect(
        sdk_orchestration.address, api_key=other_api_key
    ) as globex:
        with pytest.raises(NotFound):
            await globex.orchestration.get_agent(agent.name)
        assert agent.name not in [a.name async for a in globex.orchestration.list_agents()]
        with pytest.raises(NotFound):
            await globex.orchestration.stream(finished_run.conversation).complete()
        with pytest.raises(NotFound):
            await globex.orchestration.cancel(finished_run.conversation)


async def test_the_blocking_client_lists_tools_and_iterates_a_run(
    sdk_orchestration: ServiceProcess, api_key: str, orch: callisto.Client
) -> None:
    agent = await _agent(orch)

    def blocking() -> tuple[list[str], list[str]]:
        with callisto.SyncClient.connect(sdk_orchestration.address, api_key=api_key) as client:
            tools = [tool.name for tool in client.orchestration.list_tools()]
            run = client.orchestration.run(assistant_start(agent.name, "hello there"))
            kinds = [event.WhichOneof("kind") for event in run]
        return tools, kinds

    tools, kinds = await asyncio.to_thread(blocking)
    assert "calculator" in tools
    assert kinds[0] == "turn_started" and kinds[-1] == "done"


def _slow(delay_ms: int) -> tuple[tuple[str, str], ...]:
    """Call metadata that makes each toy_llm token of the run take `delay_ms`."""
    return (("x-callisto-model-extras", json.dumps({"delay_ms": delay_ms})),)


async def test_a_cancel_sent_on_the_converse_stream_ends_the_run_cancelled(
    orch: callisto.Client,
) -> None:
    agent = await _agent(orch)
    start = assistant_start(agent.name, "describe every session of both days in detail")
    async with orch.orchestration.converse(start=start, metadata=_slow(200)) as session:
        kinds = []
        async for event in session.events():
            kinds.append(event.WhichOneof("kind"))
            if kinds[-1] == "token" and kinds.count("token") == 1:
                await session.cancel("enough")
    assert kinds[-1] == "done" and "turn_ended" not in kinds
    assert session.done is not None and session.done.reason == "cancelled"


async def test_a_turn_sent_after_the_run_ended_is_watched_on_the_same_session(
    orch: callisto.Client,
) -> None:
    agent = await _agent(orch)
    async with orch.orchestration.converse(start=assistant_start(agent.name, "hello")) as session:
        first = [event async for event in session.events()]
        assert session.done is not None
        await session.send_turn("and one more thing")
        second = [event async for event in session.events()]
    assert second and second[0].event_id > first[-1].event_id
    assert second[-1].WhichOneof("kind") == "done" and session.done.reason == "completed"
    assert {e.conversation for e in first + second} == {session.conversation}
    asked = [e.turn_ended.text for e in second if e.WhichOneof("kind") == "turn_ended"]
    assert "and one more thing" in asked  # the human turn, then the answer to it
