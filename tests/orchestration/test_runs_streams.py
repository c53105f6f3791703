"""Run streams against the real mesh: a run streams and finishes; a dropped stream re-attached
over gRPC or over HTTP through Envoy gets exactly the events it missed; a run goes on after its
Converse stream closes and is watched from another connection; turns sent while a run answers
are queued, and a turn after it finished starts the next run; what the stored answer carries."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import pytest_asyncio
from google.protobuf import json_format
from runs_test_support import (
    assert_consecutive,
    create_agent,
    ids,
    kind,
    kinds,
    read_until,
    slow,
    start,
    wait_for_kind,
    watch,
)

import callisto
from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.api.persistence.v1 import persistence_pb2
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def agent(orch_client: callisto.Client) -> str:
    return await create_agent(orch_client, "streams")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def persistence_of_acme(
    persistence: ServiceProcess, api_key: str
) -> AsyncIterator[callisto.Client]:
    async with await callisto.Client.connect(persistence.address, api_key=api_key) as client:
        yield client


async def test_a_run_streams_its_turn_and_finishes_with_done_completed(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    orch_client: callisto.Client,
    agent: str,
) -> None:
    call = orch_stub.RunConversation(
        pb.RunConversationRequest(start=start(agent, "how do runs stream", title="streams"))
    )
    events = await read_until(call)
    assert kind(events[0]) == "turn_started" and kind(events[-1]) == "done"
    first = events[0]
    conversation = first.conversation
    assert conversation.startswith("conversations/")
    assert all(event.conversation == conversation for event in events)
    revision = (await orch_client.orchestration.get_agent(agent)).revision_id
    assert first.turn_started.agent == f"{agent}@{revision}"
    assert first.turn_started.turn == 1 and not first.turn_started.restarted
    assert "token" in kinds(events)
    answer = [e for e in events if kind(e) == "turn_ended"][-1].turn_ended
    tokens = "".join(e.token.text for e in events if kind(e) == "token")
    assert answer.text and answer.message.startswith(conversation + "/messages/")
    assert answer.speaker == first.turn_started.speaker and answer.usage.total_tokens > 0
    assert answer.cost > 0 and answer.generation_ms > 0
    assert tokens.strip()
    done = events[-1].done
    assert done.reason == "completed" and done.turns == 1
    assert done.usage.total_tokens >= answer.usage.total_tokens and done.cost >= answer.cost
    # The stream follows the stored prompt; from the start the log reads the prompt first.
    assert_consecutive(events, events[0].event_id - 1)
    whole = await watch(orch_stub, conversation)
    assert whole[1:] == events
    assert kind(whole[0]) == "turn_ended" and whole[0].turn_ended.text == "how do runs stream"


async def test_a_re_attach_over_grpc_after_a_drop_gets_exactly_the_missed_events(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub, agent: str
) -> None:
    call = orch_stub.Converse(metadata=slow(20))
    await call.write(pb.ConverseRequest(start=start(agent, "drop me and come back")))
    seen = await wait_for_kind(call, "token")
    call.cancel()  # the connection drops mid-turn
    conversation, last = seen[0].conversation, seen[-1].event_id
    rest = await watch(orch_stub, conversation, last)
    assert kind(rest[-1]) == "done" and rest[-1].done.reason == "completed"
    assert_consecutive(seen + rest, seen[0].event_id - 1)
    # The whole log, read again, is what the two halves were.
    assert (await watch(orch_stub, conversation, seen[0].event_id - 1)) == seen + rest


async def test_a_re_attach_over_http_through_envoy_gets_exactly_the_missed_events(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    mesh_gateway: EnvoyGateway,
    api_key: str,
    agent: str,
) -> None:
    call = orch_stub.Converse(metadata=slow(20))
    await call.write(pb.ConverseRequest(start=start(agent, "watch me over http")))
    opening = await read_until(call, 1)
    call.cancel()
    conversation, after = opening[0].conversation, opening[0].event_id - 1
    url = f"/v1/{conversation}:stream"
    received: list[pb.ConversationEvent] = []
    async with httpx.AsyncClient(
        base_url=mesh_gateway.http_url,
        headers={"authorization": f"Bearer {api_key}"},
        timeout=httpx.Timeout(120, connect=5),
    ) as http:
        # Read a few NDJSON events, drop the HTTP stream, come back after the last one.
        for _ in range(50):
            at = received[-1].event_id if received else after
            params = {"afterEventId": at}
            async with http.stream("GET", url, params=params) as response:
                assert response.status_code == 200, await response.aread()
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = pb.ConversationEvent()
                    json_format.ParseDict(json.loads(line)["event"], event)
                    received.append(event)
                    if kind(event) == "done" or len(received) % 3 == 0:
                        break
            if received and kind(received[-1]) == "done":
                break
        else:
            pytest.fail("no done after 50 re-attaches")
    assert_consecutive(received, after)
    assert received == await watch(orch_stub, conversation, after)


async def test_a_run_goes_on_after_converse_closes_and_is_watched_from_another_connection(
    orchestration: ServiceProcess, api_key: str, agent: str
) -> None:
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as first:
        session = first.orchestration.converse(start=start(agent, "outlive my client"))
        async with session:
            async for event in session.events():
                if kind(event) == "turn_started":
                    break
        conversation = session.conversation
    # The first client is gone; another connection sees the run through to its end.
    async with await callisto.Client.connect(orchestration.address, api_key=api_key) as second:
        stub = second.stub(pb_grpc.OrchestrationServiceStub)
        events = await watch(stub, conversation)
    assert kinds(events)[:2] == ["turn_ended", "turn_started"]
    assert kind(events[-1]) == "done" and events[-1].done.reason == "completed"
    assert_consecutive(events, 0)


async def test_turns_sent_while_a_run_answers_are_queued_and_answered_in_order(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub, agent: str
) -> None:
    call = orch_stub.Converse(metadata=slow(10))
    await call.write(pb.ConverseRequest(start=start(agent, "first question")))
    opening = await wait_for_kind(call, "turn_started")
    conversation = opening[0].conversation
    submitted = await orch_stub.SubmitInput(
        pb.SubmitInputRequest(name=conversation, turn=pb.HumanTurn(text="second question"))
    )
    await call.write(pb.ConverseRequest(turn=pb.HumanTurn(text="third question")))
    events = opening + await read_until(call)
    call.cancel()
    assert submitted.event_id in ids(events)
    assert kind(events[-1]) == "done" and events[-1].done.turns == 3
    started = [e.turn_started.turn for e in events if kind(e) == "turn_started"]
    assert started == [1, 2, 3]
    ended = [e.turn_ended for e in events if kind(e) == "turn_ended"]
    humans = [turn.text for turn in ended if turn.speaker == "user"]
    assert humans == ["second question", "third question"]
    assert_consecutive(events, opening[0].event_id - 1)


async def test_a_turn_after_the_run_finished_starts_the_next_run_with_the_same_agent(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub, agent: str
) -> None:
    first = await read_until(
        orch_stub.RunConversation(pb.RunConversationRequest(start=start(agent, "one")))
    )
    conversation = first[0].conversation
    submitted = await orch_stub.SubmitInput(
        pb.SubmitInputRequest(name=conversation, turn=pb.HumanTurn(text="and another"))
    )
    assert submitted.event_id == first[-1].event_id + 1
    second = await watch(orch_stub, conversation, submitted.event_id)
    assert kind(second[0]) == "turn_started"
    assert second[0].turn_started.agent == first[0].turn_started.agent
    assert kind(second[-1]) == "done" and second[-1].done.turns == 1
    # A watch from before the first run's end stops at that end.
    assert (await watch(orch_stub, conversation, first[0].event_id - 1)) == first
    # Continuing it with a new start works too, once no run is going.
    third = await read_until(
        orch_stub.RunConversation(
            pb.RunConversationRequest(start=start(agent, "third", conversation=conversation))
        )
    )
    assert kind(third[-1]) == "done" and third[0].event_id > second[-1].event_id


async def test_the_stored_answer_carries_citations_usage_cost_model_and_agent_revision(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    persistence_of_acme: callisto.Client,
    agent: str,
) -> None:
    events = await read_until(
        orch_stub.RunConversation(pb.RunConversationRequest(start=start(agent, "store me")))
    )
    ended = [e.turn_ended for e in events if kind(e) == "turn_ended"][-1]
    message = await persistence_of_acme.persistence.get_message(ended.message)
    assert message.role == common_pb2.ROLE_ASSISTANT and message.text == ended.text
    assert message.usage == ended.usage
    metadata = json_format.MessageToDict(message.metadata)
    assert metadata["agent"] == events[0].turn_started.agent
    assert metadata["cost"] == pytest.approx(ended.cost)
    assert metadata["model"] and metadata["turn"] == 1
    assert isinstance(metadata["tool_calls"], list)
    messages = [
        m async for m in persistence_of_acme.persistence.list_messages(events[0].conversation)
    ]
    assert [m.role for m in messages] == [common_pb2.ROLE_USER, common_pb2.ROLE_ASSISTANT]
    usage_events = [e.usage for e in events if kind(e) == "usage"]
    assert usage_events and usage_events[-1] == events[-1].done.usage


async def test_token_events_are_coalesced_into_a_few_per_answer(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub, agent: str
) -> None:
    # 2 ms per token: an answer of many tokens, gathered 25 ms at a time after the first.
    call = orch_stub.RunConversation(
        pb.RunConversationRequest(start=start(agent, "coalesce these tokens")), metadata=slow(2)
    )
    events = await read_until(call)
    tokens = [e.token.text for e in events if kind(e) == "token"]
    words = len("".join(tokens).split())
    assert words >= 50, words
    assert 1 < len(tokens) <= words // 4, (len(tokens), words)
    # The first piece went out alone, at once.
    assert len(tokens[0].split()) == 1


async def test_a_turn_whose_generation_fails_ends_the_run_with_an_error_event(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub, agent: str
) -> None:
    fails = (("x-callisto-model-extras", json.dumps({"fail_after": 2})),)
    events = await read_until(
        orch_stub.RunConversation(
            pb.RunConversationRequest(start=start(agent, "fail on me")), metadata=fails
        )
    )
    assert kind(events[-1]) == "error"
    assert events[-1].error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "toy_llm failed" in events[-1].error.message
    assert "turn_ended" not in kinds(events)
    # The conversation goes on: a new start continues it (without the failing extras).
    again = await read_until(
        orch_stub.RunConversation(
            pb.RunConversationRequest(
                start=start(agent, "try again", conversation=events[0].conversation)
            )
        )
    )
    assert kind(again[-1]) == "done" and again[-1].done.reason == "completed"


async def test_a_turn_sent_to_a_conversation_without_runs_starts_its_agent_participants_run(
    orch_stub: pb_grpc.OrchestrationServiceAsyncStub,
    persistence_of_acme: callisto.Client,
    agent: str,
) -> None:
    participant = persistence_pb2.Participant(
        id=agent.removeprefix("agents/"), kind=persistence_pb2.PARTICIPANT_KIND_AGENT
    )
    with_agent = await persistence_of_acme.persistence.create_conversation(
        persistence_pb2.Conversation(title="made elsewhere", participants=[participant])
    )
    submitted = await orch_stub.SubmitInput(
        pb.SubmitInputRequest(name=with_agent.name, turn=pb.HumanTurn(text="anyone there"))
    )
    events = await watch(orch_stub, with_agent.name, submitted.event_id)
    assert kind(events[0]) == "turn_started" and events[0].turn_started.agent.startswith(agent)
    assert kind(events[-1]) == "done" and events[-1].done.reason == "completed"
    nobody = await persistence_of_acme.persistence.create_conversation(title="no agent")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await orch_stub.SubmitInput(
            pb.SubmitInputRequest(name=nobody.name, turn=pb.HumanTurn(text="hello?"))
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Nothing was stored for the refused turn.
    assert [m async for m in persistence_of_acme.persistence.list_messages(nobody.name)] == []
