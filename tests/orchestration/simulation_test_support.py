"""Helpers the simulation tests share: agents made through CreateAgent, a simulation start, a
run read to its end, and the stored conversation read back through persistence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from runs_test_support import kind, new_id, read_until

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.api.persistence.v1 import persistence_pb2


async def create_agents(
    client: callisto.Client,
    names: Sequence[str],
    *,
    companies: Sequence[str] = (),
    tools: Sequence[str] = (),
    prefix: str = "sim",
) -> list[str]:
    """One stored agent per display name (of the company at the same index, when given)."""
    created = []
    for index, name in enumerate(names):
        agent = await client.orchestration.create_agent(
            agent_id=new_id(prefix),
            display_name=name,
            role="sales representative" if index == 0 else "buyer",
            company=companies[index] if index < len(companies) else "",
            system_prompt=f"You are {name}. Keep it short.",
            tools=tools,
        )
        created.append(str(agent.name))
    return created


def simulation(
    agents: Sequence[str],
    scenario: str,
    *,
    max_turns: int = 4,
    max_turn_tokens: int = 16,
    **fields: Any,
) -> pb.StartConversation:
    options = fields.pop("options", pb.SimulationOptions())
    options.max_turn_tokens = options.max_turn_tokens or max_turn_tokens
    termination = fields.pop("termination", pb.TerminationPolicy())
    termination.max_turns = termination.max_turns or max_turns
    return pb.StartConversation(
        mode=pb.CONVERSATION_MODE_SIMULATION,
        agents=list(agents),
        prompt=scenario,
        termination=termination,
        simulation=options,
        **fields,
    )


async def run(
    stub: pb_grpc.OrchestrationServiceAsyncStub,
    start: pb.StartConversation,
    metadata: Any = None,
    within_s: float = 180,
) -> list[pb.ConversationEvent]:
    """Every event of a simulation run over RunConversation, to its terminal one."""
    call = stub.RunConversation(pb.RunConversationRequest(start=start), metadata=metadata)
    try:
        return await read_until(call, within_s=within_s)
    finally:
        call.cancel()


def started(events: Sequence[pb.ConversationEvent]) -> list[pb.TurnStarted]:
    return [e.turn_started for e in events if kind(e) == "turn_started"]


def ended(events: Sequence[pb.ConversationEvent]) -> list[pb.TurnEnded]:
    return [e.turn_ended for e in events if kind(e) == "turn_ended"]


async def stored(
    persistence: str, api_key: str, conversation: str, *, within_s: float = 15
) -> tuple[persistence_pb2.Conversation, list[persistence_pb2.Message]]:
    """The conversation and its messages as persistence holds them once the run has ended
    (its status is written just after its `done`: a finished conversation takes no events)."""
    deadline = time.monotonic() + within_s
    async with await callisto.Client.connect(persistence, api_key=api_key) as client:
        while True:
            found = await client.persistence.get_conversation(conversation)
            if found.status != persistence_pb2.CONVERSATION_STATUS_ACTIVE:
                break
            assert time.monotonic() < deadline, "the simulation's status was never written"
            await asyncio.sleep(0.05)
        messages = [m async for m in client.persistence.list_messages(conversation)]
    return found, messages


def metadata_of(item: persistence_pb2.Message | persistence_pb2.Conversation) -> dict[str, Any]:
    return json_format.MessageToDict(item.metadata)


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The field violations of an INVALID_ARGUMENT answer, by field path."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    return {v.field: v.description for v in bad.field_violations}
    return {}
