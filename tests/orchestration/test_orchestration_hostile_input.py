"""A fixed-seed barrage of hostile requests at every orchestration RPC (the agent RPCs, ListTools,
SubmitFeedback, SuggestAgents, ValidatePlan, approvals, artifacts, webhooks, HTTP tools, the bidi
Converse, RunConversation, StreamConversation, SubmitInput, CancelConversation), from tenant
acme, tenant globex (with and without a forged
`x-callisto-on-behalf-of` naming acme), a key that does not exist and no key at all: each answer
is OK or a client error (never INTERNAL/UNKNOWN/UNIMPLEMENTED),
every run stream ends with exactly one terminal event, the service stays SERVING and still runs,
and tenant acme's agent and conversation are byte-for-byte intact and invisible to globex."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2, struct_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from hostile_support import (
    CODES_BY_NUMBER,
    HUGE,
    Hostile,
    Metadata,
    check_forged_page_tokens,
    check_rpc_error,
    check_status,
    describe,
    send_undecodable,
    stream_requests,
)

from callisto import errors
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.api.persistence.v1 import persistence_pb2, persistence_pb2_grpc
from callisto.client import auth_metadata
from callisto.mesh.processes import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")

SERVICE = pb.DESCRIPTOR.services_by_name["OrchestrationService"]
COLLECTIONS = ("agents", "conversations", "conversations/x/messages", "tenants/globex/agents")
ON_BEHALF_OF = "x-callisto-on-behalf-of"
EXTRAS = "x-callisto-model-extras"
# Model extras a client could send with a run (never a long delay: runs must stay fast).
HOSTILE_EXTRAS = (None, None, "not json", "[]", "{}", '{"max_tokens": -1}', '{"delay_ms": -5}')
ROUNDS = 40
SECRET = "acme-secret-7f3d"
# Longest a hostile run stream may take to end (toy_llm runs take well under a second).
STREAM_S = 30.0
UNARY_S = 15.0
UNARY = (
    "CreateAgent",
    "GetAgent",
    "ListAgents",
    "UpdateAgent",
    "ListAgentRevisions",
    "ListTools",
    "DeleteAgent",
    "SuggestAgents",
    "ValidatePlan",
    "SubmitInput",
    "CancelConversation",
    "SubmitFeedback",
    "ListApprovals",
    "GetApproval",
    "ListArtifacts",
    "DownloadArtifact",
    "CreateWebhook",
    "GetWebhook",
    "ListWebhooks",
    "DeleteWebhook",
    "ListWebhookDeliveries",
    "CreateHttpTool",
    "GetHttpTool",
    "ListHttpTools",
    "DeleteHttpTool",
)
TOOLS = (
    "search_documents",
    "search_entities",
    "calculator",
    "current_time",
    "get_conversation",
    "create_report",
    "send_webhook",
)


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(value)
    return result


def assistant(agent: str, prompt: str, **fields: Any) -> pb.StartConversation:
    return pb.StartConversation(
        agents=[agent], prompt=prompt, mode=pb.CONVERSATION_MODE_ASSISTANT, **fields
    )


def seeds(
    agent: str, runner: str, conversation: str, message: str, watched: str
) -> dict[str, Message]:
    """A valid request per RPC, aimed at the given resources, for the barrage to mutate: the
    runs start with `runner`, StreamConversation watches `watched`."""
    turn = pb.HumanTurn(text="and then?", author="u1")
    return {
        "CreateAgent": pb.CreateAgentRequest(
            agent=pb.Agent(
                display_name="Hostile",
                role="r",
                company="c",
                system_prompt="Be brief.",
                tools=["search_documents"],
                model="models/toy_llm",
                knowledge_tags=["a"],
            ),
            agent_id="hostile-made",
        ),
        "GetAgent": pb.GetAgentRequest(name=agent),
        "ListAgents": pb.ListAgentsRequest(page_size=2),
        "UpdateAgent": pb.UpdateAgentRequest(
            agent=pb.Agent(name=agent, display_name="renamed", tools=["calculator"]),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name", "tools"]),
        ),
        "ListAgentRevisions": pb.ListAgentRevisionsRequest(name=agent, page_size=2),
        "ListTools": pb.ListToolsRequest(),
        "DeleteAgent": pb.DeleteAgentRequest(name=agent),
        "SuggestAgents": pb.SuggestAgentsRequest(scenario="a sales call", agent_count=3),
        "ValidatePlan": pb.ValidatePlanRequest(
            plan=pb.WorkflowPlan(
                steps=[
                    pb.WorkflowStep(id="first", agent=agent, instruction="Look it up."),
                    pb.WorkflowStep(
                        id="then", agent=agent, instruction="Sum up.", depends_on=["first"]
                    ),
                ]
            )
        ),
        "ListApprovals": pb.ListApprovalsRequest(page_size=2, conversation=conversation),
        "GetApproval": pb.GetApprovalRequest(name="approvals/ap-" + "0" * 24),
        "ListArtifacts": pb.ListArtifactsRequest(parent=conversation, page_size=2),
        "DownloadArtifact": pb.DownloadArtifactRequest(name=f"{conversation}/artifacts/a1"),
        "CreateWebhook": pb.CreateWebhookRequest(
            webhook=pb.Webhook(
                url="https://hooks.example.com/callisto",
                secret="s" * 32,
                event_types=["run.done"],
            ),
            webhook_id="hostile-hook",
        ),
        "GetWebhook": pb.GetWebhookRequest(name="webhooks/hostile-hook"),
        "ListWebhooks": pb.ListWebhooksRequest(page_size=2),
        "DeleteWebhook": pb.DeleteWebhookRequest(name="webhooks/hostile-hook"),
        "ListWebhookDeliveries": pb.ListWebhookDeliveriesRequest(
            parent="webhooks/hostile-hook", page_size=2
        ),
        "CreateHttpTool": pb.CreateHttpToolRequest(
            http_tool=pb.HttpTool(
                description="Looks a part up.",
                parameters=struct({"type": "object", "properties": {"part": {"type": "string"}}}),
                url="https://tools.example.com/parts",
                secret="t" * 32,
            ),
            http_tool_id="hostile_tool",
        ),
        "GetHttpTool": pb.GetHttpToolRequest(name="httpTools/hostile_tool"),
        "ListHttpTools": pb.ListHttpToolsRequest(page_size=2),
        "DeleteHttpTool": pb.DeleteHttpToolRequest(name="httpTools/hostile_tool"),
        "SubmitInput": pb.SubmitInputRequest(name=conversation, turn=turn),
        "CancelConversation": pb.CancelConversationRequest(name=conversation, reason="stop"),
        "SubmitFeedback": pb.SubmitFeedbackRequest(
            name=message, rating=persistence_pb2.FEEDBACK_RATING_UP, comment="good"
        ),
        "RunConversation": pb.RunConversationRequest(
            start=assistant(runner, "what is the plan?", title="t", tags=["a"], max_iterations=1)
        ),
        "StreamConversation": pb.StreamConversationRequest(name=watched, after_event_id=0),
        "ConverseStart": pb.ConverseRequest(start=assistant(runner, "hello", max_iterations=1)),
    }


@dataclass
class Caller:
    """Who sends a share of the barrage, and at what."""

    who: str
    metadata: Metadata
    targets: dict[str, Message]
    # Names the hostile values are drawn from: of the unary RPCs and run starts, and of what
    # streams and attaches watch (finished conversations none of the barrage runs again, so
    # every watch ends).
    names: list[str]
    watch_names: list[str]
    replies: list[bytes] = field(default_factory=list)
    # How each RPC answered (method, status code name), to see what the barrage reached.
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)


@dataclass
class Precious:
    """Tenant acme's data the barrage must leave as it is."""

    agent: str
    conversation: str
    message: str


# Checks


def check_error(error: grpc.RpcError, what: str, method: str, request: Message) -> None:
    check_rpc_error(error, what)


async def call_unary(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
    method: str,
    request: Message,
    caller: Caller,
) -> None:
    what = f"{caller.who}: {method}({describe(request)})"
    try:
        reply = await getattr(stub, method)(request, metadata=caller.metadata, timeout=UNARY_S)
    except grpc.aio.AioRpcError as error:
        check_error(error, what, method, request)
        caller.outcomes[method, error.code().name] += 1
        return
    caller.outcomes[method, "OK"] += 1
    caller.replies.append(reply.SerializeToString())


def check_events(
    events: Sequence[pb.ConversationEvent], error: grpc.RpcError | None, what: str, started: bool
) -> None:
    """Every event has a kind; at most one terminal event, and nothing after it. A stream that
    ended OK after starting a run ended with its terminal event."""
    terminals = 0
    for event in events:
        kind = event.WhichOneof("kind")
        assert kind is not None, f"{what}: an event without a kind"
        assert terminals == 0, f"{what}: an event after the terminal one: {kind}"
        assert event.event_id > 0, f"{what}: an event without an id"
        if kind == "error":
            check_status(event.error, what)
        terminals += kind in ("done", "error")
    if error is not None:
        assert terminals == 0, f"{what}: a status after the terminal event: {error.code()}"  # type: ignore[attr-defined]
        return
    if started:
        assert terminals == 1, f"{what}: ended OK with {terminals} terminal events"


async def read_stream(
    call: Any, what: str, method: str, request: Message, started: bool, caller: Caller
) -> list[pb.ConversationEvent]:
    events: list[pb.ConversationEvent] = []
    failure: grpc.RpcError | None = None
    try:
        async for response in call:
            assert response.HasField("event"), f"{what}: a response without an event"
            events.append(response.event)
            caller.replies.append(response.SerializeToString())
            caller.outcomes["event", str(response.event.WhichOneof("kind"))] += 1
    except grpc.aio.AioRpcError as error:
        check_error(error, what, method, request)
        failure = error
    check_events(events, failure, what, started)
    caller.outcomes[method, _ending(events, failure)] += 1
    return events


async def run_conversation(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
    request: pb.RunConversationRequest,
    caller: Caller,
    metadata: Metadata,
) -> None:
    what = f"{caller.who}: RunConversation({describe(request)}) {metadata[len(caller.metadata) :]}"
    call = stub.RunConversation(request, metadata=metadata, timeout=STREAM_S)
    await read_stream(call, what, "RunConversation", request, True, caller)


async def stream_conversation(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
    request: pb.StreamConversationRequest,
    caller: Caller,
) -> None:
    what = f"{caller.who}: StreamConversation({describe(request)})"
    call = stub.StreamConversation(request, metadata=caller.metadata, timeout=STREAM_S)
    await read_stream(call, what, "StreamConversation", request, False, caller)


def converse(
    stub: pb_grpc.OrchestrationServiceStub,
    requests: Sequence[pb.ConverseRequest],
    caller: Caller,
    metadata: Metadata,
) -> None:
    """A Converse stream of `requests` on a blocking channel (see
    hostile_support.stream_requests), its answers checked."""
    what = f"{caller.who}: Converse(" + ", ".join(describe(r)[:300] for r in requests) + ")"
    responses, error = stream_requests(stub.Converse, requests, metadata, STREAM_S)
    events = []
    for response in responses:
        assert isinstance(response, pb.ConverseResponse)
        assert response.HasField("event"), f"{what}: a response without an event"
        events.append(response.event)
        caller.replies.append(response.SerializeToString())
    first = requests[0] if requests else pb.ConverseRequest()
    if error is not None:
        check_error(error, what, "Converse", first)
    started = first.WhichOneof("action") == "start" and error is None
    check_events(events, error, what, started)
    caller.outcomes["Converse", _ending(events, error)] += 1


def _ending(events: Sequence[pb.ConversationEvent], error: grpc.RpcError | None) -> str:
    if error is not None:
        return str(error.code().name)  # type: ignore[attr-defined]
    if not events:
        return "OK empty"
    last = events[-1]
    if last.WhichOneof("kind") == "error":
        return f"OK error {CODES_BY_NUMBER[last.error.code].name} {last.error.message[:80]}"
    return f"OK {last.WhichOneof('kind')}"


# Hostile values of the run RPCs


def hostile_extras(source: Hostile, metadata: Metadata) -> Metadata:
    extras = source.rng.choice(HOSTILE_EXTRAS)
    return metadata if extras is None else (*metadata, (EXTRAS, extras))


def hostile_start(source: Hostile, seed: pb.RunConversationRequest) -> pb.StartConversation:
    """Mostly a valid start with a field or two made hostile (or continuing one of the
    caller's targets); sometimes hostile through."""
    roll = source.rng.random()
    if roll < 0.1 and source.names:
        start = pb.StartConversation()
        start.CopyFrom(seed.start)
        start.conversation = source.choice(source.names)
        return start
    if roll < 0.25:
        request = source.request(pb.RunConversationRequest(), huge=1)
    elif roll < 0.55:
        # A valid start whose prompt is hostile text, so it reaches the run and the model.
        start = pb.StartConversation()
        start.CopyFrom(seed.start)
        start.prompt = source.string()[:4000] or "?"
        return start
    else:
        request = source.mutate(seed, huge=1)
    assert isinstance(request, pb.RunConversationRequest)
    return request.start


def hostile_converse(
    source: Hostile, seed: pb.ConverseRequest, watching: Hostile
) -> list[pb.ConverseRequest]:
    """A malformed Converse stream: turns before any start, two starts, attaches to strangers'
    conversations (drawn by `watching`), cancels of nothing, approvals without workflows,
    empty messages."""
    requests: list[pb.ConverseRequest] = []
    for _ in range(source.rng.randrange(0, 5)):
        roll = source.rng.random()
        if roll < 0.3:
            mutated = source.mutate(seed, huge=1) if source.rng.random() < 0.7 else seed
            assert isinstance(mutated, pb.ConverseRequest)
            requests.append(mutated)
        elif roll < 0.45:
            after = watching.rng.choice((0, 0, 1, 3, -1, 2**62, -(2**63)))
            attach = pb.AttachConversation(conversation=watching.name(), after_event_id=after)
            requests.append(pb.ConverseRequest(attach=attach))
        elif roll < 0.6:
            turn = source.request(pb.HumanTurn(), huge=1)
            assert isinstance(turn, pb.HumanTurn)
            requests.append(pb.ConverseRequest(turn=turn))
        elif roll < 0.7:
            approval = source.request(pb.Approval(), huge=0)
            assert isinstance(approval, pb.Approval)
            requests.append(pb.ConverseRequest(approval=approval))
        elif roll < 0.85:
            requests.append(pb.ConverseRequest(cancel=pb.Cancel(reason=source.string())))
        elif roll < 0.92:
            requests.append(pb.ConverseRequest())
        else:
            anything = source.request(pb.ConverseRequest(), huge=1)
            assert isinstance(anything, pb.ConverseRequest)
            requests.append(anything)
    return requests


def hostile_stream_request(
    source: Hostile, seed: pb.StreamConversationRequest
) -> pb.StreamConversationRequest:
    request = source.mutate(seed, huge=0)
    assert isinstance(request, pb.StreamConversationRequest)
    if source.rng.random() < 0.4:
        request.after_event_id = source.rng.choice((-1, -(2**63), 1, 2, 10**6))
    return request


# The barrage


async def barrage(
    stubs: dict[str, pb_grpc.OrchestrationServiceAsyncStub],
    blocking: dict[str, pb_grpc.OrchestrationServiceStub],
    callers: list[Caller],
) -> None:
    sources = {
        caller.who: (
            Hostile(seed, COLLECTIONS, caller.names),
            Hostile(100 + seed, COLLECTIONS, caller.watch_names),
        )
        for seed, caller in enumerate(callers)
    }
    for round_index in range(ROUNDS):
        calls: list[Awaitable[object]] = []
        for caller in callers:
            source, streams = sources[caller.who]
            stub = stubs[caller.who]
            huge = 1 if round_index % 3 == 0 else 0
            for method in UNARY:
                if round_index % 2:
                    request = source.mutate(caller.targets[method], huge=huge)
                else:
                    request = source.request(type(caller.targets[method])(), huge=huge)
                calls.append(call_unary(stub, method, request, caller))
            start = hostile_start(source, caller.targets["RunConversation"])  # type: ignore[arg-type]
            calls.append(
                run_conversation(
                    stub,
                    pb.RunConversationRequest(start=start),
                    caller,
                    hostile_extras(streams, caller.metadata),
                )
            )
            calls.append(
                stream_conversation(
                    stub,
                    hostile_stream_request(streams, caller.targets["StreamConversation"]),  # type: ignore[arg-type]
                    caller,
                )
            )
            requests = hostile_converse(
                source,
                caller.targets["ConverseStart"],  # type: ignore[arg-type]
                streams,
            )
            calls.append(
                asyncio.to_thread(
                    converse,
                    blocking[caller.who],
                    requests,
                    caller,
                    hostile_extras(streams, caller.metadata),
                )
            )
        await asyncio.gather(*calls)


# Fixtures


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def channel(orchestration: ServiceProcess) -> AsyncIterator[grpc.aio.Channel]:
    """A plain channel: each call carries its caller's metadata."""
    async with grpc.aio.insecure_channel(orchestration.address) as opened:
        yield opened


@pytest.fixture(scope="session")
def plain_blocking(orchestration: ServiceProcess) -> Iterator[grpc.Channel]:
    """A blocking channel for the Converse streams (see hostile_support.stream_requests)."""
    with grpc.insecure_channel(orchestration.address) as opened:
        yield opened


@pytest.fixture(scope="session")
def blocking_stub(plain_blocking: grpc.Channel) -> pb_grpc.OrchestrationServiceStub:
    return pb_grpc.OrchestrationServiceStub(plain_blocking)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def persistence_raw(
    persistence: ServiceProcess,
) -> AsyncIterator[persistence_pb2_grpc.PersistenceServiceAsyncStub]:
    async with grpc.aio.insecure_channel(persistence.address) as opened:
        yield persistence_pb2_grpc.PersistenceServiceStub(opened)  # type: ignore[no-untyped-call]


async def _agent(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
    auth: Metadata,
    agent_id: str,
    name: str,
    tools: Sequence[str] = (),
    model: str = "",
) -> str:
    created = await stub.CreateAgent(
        pb.CreateAgentRequest(
            agent=pb.Agent(
                display_name=name, system_prompt=f"Be brief. {name}", tools=tools, model=model
            ),
            agent_id=agent_id,
        ),
        metadata=auth,
    )
    return str(created.agent.name)


async def _run(
    stub: pb_grpc.OrchestrationServiceAsyncStub, auth: Metadata, start: pb.StartConversation
) -> list[pb.ConversationEvent]:
    call = stub.RunConversation(pb.RunConversationRequest(start=start), metadata=auth)
    events = [response.event async for response in call]
    assert events[-1].WhichOneof("kind") == "done", events[-1]
    return events


def _answer(events: Sequence[pb.ConversationEvent]) -> str:
    return next(
        event.turn_ended.message
        for event in reversed(events)
        if event.WhichOneof("kind") == "turn_ended"
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def precious(channel: grpc.aio.Channel, api_key: str) -> Precious:
    """Acme's agent (two revisions) and a finished conversation with it."""
    stub = pb_grpc.OrchestrationServiceStub(channel)
    auth = auth_metadata(api_key)
    agent = await _agent(stub, auth, "hostile-precious", SECRET)
    await stub.UpdateAgent(
        pb.UpdateAgentRequest(
            agent=pb.Agent(name=agent, role=SECRET),
            update_mask=field_mask_pb2.FieldMask(paths=["role"]),
        ),
        metadata=auth,
    )
    events = await _run(stub, auth, assistant(agent, f"{SECRET} question", title=SECRET))
    return Precious(agent, events[0].conversation, _answer(events))


async def acme_snapshot(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
    persistence_raw: persistence_pb2_grpc.PersistenceServiceAsyncStub,
    auth: Metadata,
    precious: Precious,
) -> list[bytes]:
    """The agent, its revisions, the conversation with its messages and events, and its run
    events, serialised deterministically."""
    agent = await stub.GetAgent(pb.GetAgentRequest(name=precious.agent), metadata=auth)
    revisions = await stub.ListAgentRevisions(
        pb.ListAgentRevisionsRequest(name=precious.agent), metadata=auth
    )
    export = await persistence_raw.ExportConversation(
        persistence_pb2.ExportConversationRequest(name=precious.conversation, include_events=True),
        metadata=auth,
    )
    export.ClearField("export_time")
    call = stub.StreamConversation(
        pb.StreamConversationRequest(name=precious.conversation), metadata=auth, timeout=STREAM_S
    )
    events = [response.SerializeToString(deterministic=True) async for response in call]
    return [
        agent.SerializeToString(deterministic=True),
        revisions.SerializeToString(deterministic=True),
        export.SerializeToString(deterministic=True),
        *events,
    ]


# Tests


async def test_hostile_requests_get_client_errors_and_leave_acme_intact(
    channel: grpc.aio.Channel,
    blocking_stub: pb_grpc.OrchestrationServiceStub,
    persistence_raw: persistence_pb2_grpc.PersistenceServiceAsyncStub,
    orchestration: ServiceProcess,
    precious: Precious,
    api_key: str,
    other_api_key: str,
) -> None:
    stub = pb_grpc.OrchestrationServiceStub(channel)
    acme, globex = auth_metadata(api_key), auth_metadata(other_api_key)
    # Acme aims at scratch data of its own (an agent the barrage may change or delete, one
    # that runs, a conversation and answer it may add to) and at globex's; the others at acme's.
    scratch = await _agent(stub, acme, "hostile-scratch", "scratch")
    # Every tool, so hostile prompts reach the tools' arguments (toy_llm plans with the words).
    runner = await _agent(stub, acme, "hostile-runner", "runner", TOOLS)
    ran = await _run(stub, acme, assistant(runner, "scratch question"))
    scratch_conversation, scratch_message = ran[0].conversation, _answer(ran)
    # A finished conversation only the run streams look at (nothing re-runs it).
    watched = (await _run(stub, acme, assistant(runner, "watched question")))[0].conversation
    theirs_agent = await _agent(stub, globex, "hostile-globex", "globex agent")
    theirs_run = await _run(stub, globex, assistant(theirs_agent, "globex question"))
    theirs = theirs_run[0].conversation
    before = await acme_snapshot(stub, persistence_raw, acme, precious)

    # Globex runs its own agent, into acme's conversation when a start names it.
    at_acme = seeds(
        precious.agent, theirs_agent, precious.conversation, precious.message, precious.conversation
    )
    mine = seeds(scratch, runner, scratch_conversation, scratch_message, watched)
    acme_names = [scratch, scratch_conversation, scratch_message, theirs_agent, theirs]
    strangers = [precious.agent, precious.conversation, precious.message]
    callers = [
        Caller("acme", acme, mine, acme_names, [watched, theirs, _answer(theirs_run)]),
        Caller("globex", globex, at_acme, strangers, strangers),
        Caller(
            "globex-forging-acme", (*globex, (ON_BEHALF_OF, "acme")), at_acme, strangers, strangers
        ),
        Caller("anonymous", auth_metadata("cal_nope"), at_acme, strangers, strangers),
        Caller("none", (), at_acme, strangers, strangers),
    ]
    loop = asyncio.get_running_loop()
    began = loop.time()
    await barrage({c.who: stub for c in callers}, {c.who: blocking_stub for c in callers}, callers)
    took = loop.time() - began
    print(f"orchestration hostile barrage: {ROUNDS} rounds in {took:.1f}s")
    for caller in callers:
        print(caller.who, sorted(caller.outcomes.items()))

    # Still alive, serving and running; acme's data unchanged and invisible to globex.
    orchestration.check_alive()
    assert orchestration.health() == health_pb2.HealthCheckResponse.SERVING
    after = await acme_snapshot(stub, persistence_raw, acme, precious)
    assert after == before
    for caller in callers[1:]:
        for reply in caller.replies:
            assert SECRET.encode() not in reply, f"{caller.who} saw acme's data: {reply[:300]!r}"
    for forged in (globex, (*globex, (ON_BEHALF_OF, "acme"))):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GetAgent(pb.GetAgentRequest(name=precious.agent), metadata=forged)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        listed = await stub.ListAgents(pb.ListAgentsRequest(page_size=1000), metadata=forged)
        assert SECRET.encode() not in listed.SerializeToString()
    await _run(stub, acme, assistant(runner, "still there?"))


async def test_a_forged_on_behalf_of_header_from_a_tenant_key_is_ignored(
    channel: grpc.aio.Channel, precious: Precious, api_key: str, other_api_key: str
) -> None:
    stub = pb_grpc.OrchestrationServiceStub(channel)
    acme, globex = auth_metadata(api_key), auth_metadata(other_api_key)
    forged = (*globex, (ON_BEHALF_OF, "acme"))
    # What globex creates "on behalf of acme" is globex's.
    made = await _agent(stub, forged, "hostile-forged", "forged")
    assert (await stub.GetAgent(pb.GetAgentRequest(name=made), metadata=globex)).agent.name == made
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.GetAgent(pb.GetAgentRequest(name=made), metadata=acme)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    # And acme's stays out of reach, on every RPC that names it.
    attempts: list[Awaitable[object]] = [
        stub.GetAgent(pb.GetAgentRequest(name=precious.agent), metadata=forged),
        stub.DeleteAgent(pb.DeleteAgentRequest(name=precious.agent), metadata=forged),
        stub.ListAgentRevisions(pb.ListAgentRevisionsRequest(name=precious.agent), metadata=forged),
        stub.SubmitInput(
            pb.SubmitInputRequest(name=precious.conversation, turn=pb.HumanTurn(text="hi")),
            metadata=forged,
        ),
        stub.CancelConversation(
            pb.CancelConversationRequest(name=precious.conversation), metadata=forged
        ),
        stub.SubmitFeedback(
            pb.SubmitFeedbackRequest(
                name=precious.message, rating=persistence_pb2.FEEDBACK_RATING_DOWN
            ),
            metadata=forged,
        ),
        _collect(
            stub.StreamConversation(
                pb.StreamConversationRequest(name=precious.conversation), metadata=forged
            )
        ),
    ]
    for attempt in attempts:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await attempt
        assert error.value.code() == grpc.StatusCode.NOT_FOUND, error.value
    # Acme's key naming globex acts for acme still.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.GetAgent(
            pb.GetAgentRequest(name=made), metadata=(*acme, (ON_BEHALF_OF, "globex"))
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def _collect(call: Any) -> list[Any]:
    return [response async for response in call]


def _violations(error: grpc.RpcError) -> dict[str, str]:
    return errors.from_rpc_error(error).field_violations


def _converse(
    stub: pb_grpc.OrchestrationServiceStub,
    requests: Sequence[pb.ConverseRequest],
    metadata: Metadata,
) -> tuple[list[pb.ConversationEvent], grpc.RpcError | None]:
    responses, error = stream_requests(stub.Converse, requests, metadata, STREAM_S)
    return [r.event for r in responses], error  # type: ignore[attr-defined]


async def test_malformed_converse_streams_get_one_clear_answer(
    channel: grpc.aio.Channel,
    plain_blocking: grpc.Channel,
    blocking_stub: pb_grpc.OrchestrationServiceStub,
    precious: Precious,
    api_key: str,
    other_api_key: str,
) -> None:
    stub = pb_grpc.OrchestrationServiceStub(channel)
    acme, globex = auth_metadata(api_key), auth_metadata(other_api_key)
    agent = await _agent(stub, acme, "hostile-converse", "converse")
    start = pb.ConverseRequest(start=assistant(agent, "hello", max_iterations=1))
    turn = pb.ConverseRequest(turn=pb.HumanTurn(text="and then?"))
    cancel = pb.ConverseRequest(cancel=pb.Cancel(reason="stop"))
    attach_theirs = pb.ConverseRequest(
        attach=pb.AttachConversation(conversation=precious.conversation)
    )
    huge_prompt = pb.ConverseRequest(start=assistant(agent, "x" * (2 * HUGE)))
    huge_turn = pb.ConverseRequest(turn=pb.HumanTurn(text="y" * (2 * HUGE)))
    deep = Hostile(5, COLLECTIONS).request(pb.ConverseRequest(), huge=0)
    expected: list[tuple[str, list[pb.ConverseRequest], Metadata, grpc.StatusCode, str]] = [
        ("a turn before the start", [turn, start], acme, grpc.StatusCode.INVALID_ARGUMENT, ""),
        ("an empty first message", [pb.ConverseRequest()], acme, _INVALID, "action"),
        ("a cancel of nothing", [cancel], acme, _INVALID, "action"),
        ("a huge prompt", [huge_prompt], acme, _INVALID, "start.prompt"),
        ("another tenant's run", [attach_theirs, turn], globex, grpc.StatusCode.NOT_FOUND, ""),
        (
            "a forged tenant",
            [attach_theirs],
            (*globex, (ON_BEHALF_OF, "acme")),
            grpc.StatusCode.NOT_FOUND,
            "",
        ),
        (
            "a negative after_event_id",
            [
                pb.ConverseRequest(
                    attach=pb.AttachConversation(
                        conversation=precious.conversation, after_event_id=-1
                    )
                )
            ],
            acme,
            _INVALID,
            "attach.after_event_id",
        ),
        ("two starts", [start, start], acme, _INVALID, "action"),
        ("a huge turn", [start, huge_turn], acme, _INVALID, "turn.text"),
    ]
    for what, requests, metadata, code, violation in expected:
        if requests[0].HasField("start"):
            # Slow tokens, so the bad second message is read long before the run could end.
            metadata = (*metadata, (EXTRAS, json.dumps({"delay_ms": 50})))
        events, error = await asyncio.to_thread(_converse, blocking_stub, requests, metadata)
        assert error is not None, f"{what}: accepted, {[e.WhichOneof('kind') for e in events]}"
        assert error.code() == code, f"{what}: {error.code()} {error.details()}"  # type: ignore[attr-defined]
        check_rpc_error(error, what)
        if violation:
            assert violation in _violations(error), f"{what}: {_violations(error)}"
        check_events(events, error, what, False)
    # A deep, hostile message first, and an empty stream: a client error, or nothing at all.
    for requests in ([deep], []):
        events, error = await asyncio.to_thread(_converse, blocking_stub, requests, acme)
        if error is not None:
            check_error(error, "Converse(deep)", "Converse", requests[0])
        check_events(events, error, "Converse(deep or empty)", False)
    # An undecodable message after a valid start: a client error, after any events of the run.
    raw = [start.SerializeToString(), b"\x0f"]
    call = plain_blocking.stream_stream(f"/{SERVICE.full_name}/Converse")
    replies, error = await asyncio.to_thread(stream_requests, call, raw, acme, STREAM_S)
    events = [pb.ConverseResponse.FromString(reply).event for reply in replies]  # type: ignore[arg-type]
    if error is not None:
        check_rpc_error(error, "Converse(start, undecodable)")
    check_events(events, error, "Converse(start, undecodable)", error is None)
    # A cancel of a finished run changes nothing: the attach replays the run to its end.
    events, error = await asyncio.to_thread(
        _converse,
        blocking_stub,
        [
            pb.ConverseRequest(attach=pb.AttachConversation(conversation=precious.conversation)),
            cancel,
        ],
        acme,
    )
    assert error is None, error
    check_events(events, None, "attach and cancel a finished run", True)


_INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def test_stream_positions_out_of_range_end_the_stream(
    channel: grpc.aio.Channel,
    blocking_stub: pb_grpc.OrchestrationServiceStub,
    precious: Precious,
    api_key: str,
    other_api_key: str,
) -> None:
    stub = pb_grpc.OrchestrationServiceStub(channel)
    acme = auth_metadata(api_key)

    async def stream(
        name: str, after: int, metadata: Metadata = acme, within_s: float = 10.0
    ) -> Any:
        request = pb.StreamConversationRequest(name=name, after_event_id=after)
        call = stub.StreamConversation(request, metadata=metadata, timeout=within_s)
        return await _collect(call)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stream(precious.conversation, -1)
    assert error.value.code() == _INVALID and "after_event_id" in _violations(error.value)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stream(precious.conversation, 0, auth_metadata(other_api_key))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    # Past the end of a finished run: nothing left to deliver (or refused as out of range).
    try:
        assert await stream(precious.conversation, 2**63 - 1) == []
    except grpc.aio.AioRpcError as refused:
        assert refused.code() in (_INVALID, grpc.StatusCode.OUT_OF_RANGE), refused
        check_rpc_error(refused, "StreamConversation(after_event_id=2**63-1) of a finished run")
    # Past the end of a running one: the stream is refused at once, or ends with the run; it
    # does not wait on for an event id the log never reaches. (Fails until RunManager.watch
    # refuses an after_event_id past the log's end: today the stream stays open for good.)
    agent = await _agent(stub, acme, "hostile-slow", "slow")
    slow = (*acme, (EXTRAS, json.dumps({"delay_ms": 20})))
    call = stub.RunConversation(
        pb.RunConversationRequest(start=assistant(agent, "take your time", max_iterations=1)),
        metadata=slow,
        timeout=STREAM_S,
    )
    first = await anext(aiter(call))
    clock = asyncio.get_running_loop().time
    began = clock()

    async def run_end() -> float:
        async for response in call:
            if response.event.WhichOneof("kind") in ("done", "error"):
                break
        return clock() - began

    ended = asyncio.create_task(run_end())
    conversation = first.event.conversation

    async def watch(after: int) -> tuple[str, list[Any], grpc.RpcError | None]:
        try:
            return "StreamConversation", await stream(conversation, after, acme, 15.0), None
        except grpc.aio.AioRpcError as raised:
            return "StreamConversation", [], raised

    async def attach(after: int) -> tuple[str, list[Any], grpc.RpcError | None]:
        request = pb.ConverseRequest(
            attach=pb.AttachConversation(conversation=conversation, after_event_id=after)
        )
        events, raised = await asyncio.to_thread(
            stream_requests, blocking_stub.Converse, [request], acme, 15.0
        )
        return "Converse attach", events, raised

    afters = (2**62, 2**63 - 1)
    outcomes = await asyncio.gather(*(watch(a) for a in afters), *(attach(a) for a in afters))
    run_took = await ended
    for (method, events, raised), after in zip(outcomes, afters * 2, strict=True):
        what = f"{method}(after_event_id={after}) of a running run"
        assert events == [], f"{what}: {events}"
        if raised is not None:
            code = raised.code()  # type: ignore[attr-defined]
            assert code in (_INVALID, grpc.StatusCode.OUT_OF_RANGE), (
                f"{what}: {code.name} after {clock() - began:.1f}s, the run having ended after "
                f"{run_took:.1f}s"
            )
            check_rpc_error(raised, what)


async def test_only_answers_are_rated_and_an_unserved_model_fails_cleanly(
    channel: grpc.aio.Channel, precious: Precious, api_key: str
) -> None:
    stub = pb_grpc.OrchestrationServiceStub(channel)
    acme = auth_metadata(api_key)
    # Message 1 is the user's own prompt, not an answer.
    prompt = precious.message.rsplit("/", 1)[0] + "/1"
    assert prompt != precious.message
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.SubmitFeedback(
            pb.SubmitFeedbackRequest(name=prompt, rating=persistence_pb2.FEEDBACK_RATING_UP),
            metadata=acme,
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION, error.value
    # An agent on a model nobody serves: refused when made, or its run ends with a client error.
    try:
        agent = await _agent(stub, acme, "hostile-unserved", "unserved", model="models/nope")
    except grpc.aio.AioRpcError as refused:
        check_rpc_error(refused, "CreateAgent(models/nope)")
        return
    call = stub.RunConversation(
        pb.RunConversationRequest(start=assistant(agent, "hello")), metadata=acme, timeout=STREAM_S
    )
    events = [response.event async for response in call]
    check_events(events, None, "a run on models/nope", True)


async def test_forged_page_tokens_are_refused(
    channel: grpc.aio.Channel, precious: Precious, api_key: str, other_api_key: str
) -> None:
    stub = pb_grpc.OrchestrationServiceStub(channel)
    acme, globex = auth_metadata(api_key), auth_metadata(other_api_key)
    await _agent(stub, acme, "hostile-paged", "paged")
    agents = await stub.ListAgents(pb.ListAgentsRequest(page_size=1), metadata=acme)
    revisions = await stub.ListAgentRevisions(
        pb.ListAgentRevisionsRequest(name=precious.agent, page_size=1), metadata=acme
    )
    listing = pb.ListAgentsRequest(page_size=1)
    await check_forged_page_tokens(stub, "ListAgents", listing, agents.next_page_token, acme)
    of_revisions = pb.ListAgentRevisionsRequest(name=precious.agent, page_size=1)
    await check_forged_page_tokens(
        stub, "ListAgentRevisions", of_revisions, revisions.next_page_token, acme
    )
    # A token of one listing is not a token of the other.
    crossed = pb.ListAgentsRequest(page_size=1, page_token=revisions.next_page_token)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.ListAgents(crossed, metadata=acme)
    assert error.value.code() == _INVALID and "page_token" in _violations(error.value)
    # Acme's genuine tokens mean nothing to globex.
    for method, request, token in (
        ("ListAgents", listing, agents.next_page_token),
        ("ListAgentRevisions", of_revisions, revisions.next_page_token),
    ):
        attempt = type(request)()
        attempt.CopyFrom(request)
        attempt.page_token = token
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await getattr(stub, method)(attempt, metadata=globex)
        check_rpc_error(error.value, f"globex {method}(acme's token)")
        assert error.value.code() in (_INVALID, grpc.StatusCode.NOT_FOUND)


async def test_undecodable_request_bodies_are_invalid_argument_for_every_rpc(
    orchestration: ServiceProcess, api_key: str
) -> None:
    calls = await asyncio.to_thread(
        send_undecodable, orchestration.address, SERVICE, auth_metadata(api_key)
    )
    assert calls >= len(SERVICE.methods)
    # Without a valid key the body is never looked at.
    anonymous = auth_metadata("cal_nope")
    await asyncio.to_thread(send_undecodable, orchestration.address, SERVICE, anonymous, False)
    orchestration.check_alive()


async def test_concurrent_turns_starts_and_cancels_on_one_conversation(
    channel: grpc.aio.Channel, api_key: str
) -> None:
    stub = pb_grpc.OrchestrationServiceStub(channel)
    acme = auth_metadata(api_key)
    agent = await _agent(stub, acme, "hostile-crossfire", "crossfire")
    conversation = (await _run(stub, acme, assistant(agent, "first")))[0].conversation
    outcomes: Counter[str] = Counter()

    async def attempt(what: str, call: Awaitable[Any]) -> None:
        try:
            await call
            outcomes[f"{what} OK"] += 1
        except grpc.aio.AioRpcError as error:
            outcomes[f"{what} {error.code().name}"] += 1
            check_rpc_error(error, what)

    async def run_again(index: int) -> None:
        start = assistant(agent, f"again {index}", conversation=conversation)
        call = stub.RunConversation(
            pb.RunConversationRequest(start=start), metadata=acme, timeout=STREAM_S
        )
        events = [response.event async for response in call]
        check_events(events, None, f"RunConversation(again {index})", True)

    calls = [
        *(
            attempt(
                "SubmitInput",
                stub.SubmitInput(
                    pb.SubmitInputRequest(name=conversation, turn=pb.HumanTurn(text=f"t{i}")),
                    metadata=acme,
                    timeout=UNARY_S,
                ),
            )
            for i in range(8)
        ),
        *(attempt("RunConversation", run_again(i)) for i in range(4)),
        *(
            attempt(
                "CancelConversation",
                stub.CancelConversation(
                    pb.CancelConversationRequest(name=conversation), metadata=acme, timeout=UNARY_S
                ),
            )
            for _ in range(4)
        ),
    ]
    await asyncio.gather(*calls)
    assert outcomes["SubmitInput OK"] >= 1, outcomes
    # Whatever ran, the conversation's last run ends, once.
    call = stub.StreamConversation(
        pb.StreamConversationRequest(name=conversation), metadata=acme, timeout=STREAM_S
    )
    events = [response.event async for response in call]
    assert events and events[-1].WhichOneof("kind") in ("done", "error")


async def test_the_longest_valid_prompt_of_any_characters_runs_to_its_end(
    channel: grpc.aio.Channel, api_key: str
) -> None:
    stub = pb_grpc.OrchestrationServiceStub(channel)
    acme = auth_metadata(api_key)
    tooled = await _agent(stub, acme, "hostile-long", "long", TOOLS)
    plain = await _agent(stub, acme, "hostile-long-plain", "long plain")
    # A prompt the service accepts is one its runs can answer: refused up front, or answered
    # (today an agent without tools fails its run when the prompt overflows the model's
    # context window, with an error naming `messages`, a field the client never sent).
    longest = 16384  # CALLISTO_ORCHESTRATION_MAX_PROMPT_CHARS's default
    failures = []
    # Words of a few characters, as a model's tokens are (toy_llm answers with the prompt's
    # words: one giant word would make giant tokens no model makes).
    words = ("xy ", "é\t", "😀\n", "\x00 ", '" ', "\\\\ ")
    for agent, word in itertools.product((plain, tooled), words):
        text = word * (longest // len(word))
        start = assistant(agent, text, max_iterations=1)
        call = stub.RunConversation(
            pb.RunConversationRequest(start=start), metadata=acme, timeout=STREAM_S
        )
        what = f"a prompt of {len(text)} chars of {word!r}"
        try:
            events = [response.event async for response in call]
        except grpc.aio.AioRpcError as refused:
            check_rpc_error(refused, what)
            assert "start.prompt" in _violations(refused), f"{what}: {refused}"
            continue
        check_events(events, None, what, True)
        last = events[-1]
        if last.WhichOneof("kind") != "done":
            kinds = [event.WhichOneof("kind") for event in events]
            failures.append(f"{agent} {word!r}: {last.error.message[:160]} after {kinds}")
    assert not failures, "\n".join(failures)
