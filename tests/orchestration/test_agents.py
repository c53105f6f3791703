"""Agents against the real orchestration process over the real persistence service: create,
get, list, update as new revisions (old ones readable by `@revision`), etags, validation with
field paths, tenant isolation, deletion, retention, and ListTools."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2, field_mask_pb2, json_format

import callisto
from callisto import errors
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.api.persistence.v1 import persistence_pb2
from callisto.mesh.processes import ServiceProcess

if TYPE_CHECKING:
    from callisto.api.orchestration.v1.orchestration_pb2_grpc import (
        OrchestrationServiceAsyncStub as Stub,
    )
BUILTIN_TOOLS = {
    "calculator",
    "current_time",
    "get_conversation",
    "search_documents",
    "search_entities",
}


def new_id(prefix: str = "agent") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def sample(**changes: object) -> pb.Agent:
    agent = pb.Agent(
        display_name="Sales assistant",
        role="sales representative",
        company="Tessaline",
        system_prompt="You answer questions about Tessaline's products.",
        tools=["search_documents", "calculator"],
        knowledge_tags=["pricing", "policy"],
    )
    for field, value in changes.items():
        if isinstance(value, list):
            getattr(agent, field).extend(value)
        else:
            setattr(agent, field, value)
    return agent


async def create(stub: Stub, agent: pb.Agent | None = None, agent_id: str = "") -> pb.Agent:
    reply = await stub.CreateAgent(
        pb.CreateAgentRequest(agent=agent or sample(), agent_id=agent_id or new_id())
    )
    return reply.agent


async def get(stub: Stub, name: str) -> pb.Agent:
    return (await stub.GetAgent(pb.GetAgentRequest(name=name))).agent


async def update(stub: Stub, agent: pb.Agent, paths: tuple[str, ...] | None = None) -> pb.Agent:
    mask = field_mask_pb2.FieldMask(paths=list(paths or ()))
    return (await stub.UpdateAgent(pb.UpdateAgentRequest(agent=agent, update_mask=mask))).agent


async def revisions(stub: Stub, name: str, page_size: int = 0) -> list[pb.Agent]:
    found: list[pb.Agent] = []
    token = ""
    while True:
        reply = await stub.ListAgentRevisions(
            pb.ListAgentRevisionsRequest(name=name, page_size=page_size, page_token=token)
        )
        found.extend(reply.agents)
        token = reply.next_page_token
        if not token:
            return found


async def listed(stub: Stub, page_size: int = 0) -> list[pb.Agent]:
    found: list[pb.Agent] = []
    token = ""
    while True:
        reply = await stub.ListAgents(pb.ListAgentsRequest(page_size=page_size, page_token=token))
        found.extend(reply.agents)
        token = reply.next_page_token
        if not token:
            return found


async def failure(call: Awaitable[object]) -> errors.CallistoError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return errors.from_rpc_error(raised.value)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def globex(orchestration: ServiceProcess, other_api_key: str) -> AsyncIterator[Stub]:
    """The orchestration stub as tenant `globex`."""
    async with await callisto.Client.connect(
        orchestration.address, api_key=other_api_key
    ) as client:
        yield client.stub(pb_grpc.OrchestrationServiceStub)


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_tenant(
    orchestration: ServiceProcess, persistence: ServiceProcess, tenant_key: Callable[[str], str]
) -> AsyncIterator[tuple[Stub, callisto.Client]]:
    """A tenant of its own (orchestration stub, persistence client): nothing else lists in it."""
    key = await asyncio.to_thread(tenant_key, new_id("tenant"))
    async with (
        await callisto.Client.connect(orchestration.address, api_key=key) as orch,
        await callisto.Client.connect(persistence.address, api_key=key) as store,
    ):
        yield orch.stub(pb_grpc.OrchestrationServiceStub), store


async def test_a_created_agent_reads_back_with_its_first_revision(orch_stub: Stub) -> None:
    agent_id = new_id()
    created = await create(orch_stub, agent_id=agent_id)
    assert created.name == f"agents/{agent_id}"
    assert created.revision_id and created.etag
    assert created.model == "models/toy_llm"  # the service's default model
    assert created.HasField("create_time") and created.HasField("revision_create_time")
    expected = sample(model="models/toy_llm")
    for field in ("display_name", "role", "company", "system_prompt", "tools", "knowledge_tags"):
        assert getattr(created, field) == getattr(expected, field)
    assert await get(orch_stub, created.name) == created
    pinned = await get(orch_stub, f"{created.name}@{created.revision_id}")
    assert pinned.name == created.name and pinned.revision_id == created.revision_id
    assert pinned.system_prompt == created.system_prompt


async def test_an_agent_without_an_id_gets_one_and_a_taken_id_already_exists(
    orch_stub: Stub,
) -> None:
    unnamed = (await orch_stub.CreateAgent(pb.CreateAgentRequest(agent=sample()))).agent
    assert unnamed.name.startswith("agents/") and len(unnamed.name) > len("agents/")
    agent_id = new_id()
    await create(orch_stub, agent_id=agent_id)
    error = await failure(create(orch_stub, sample(display_name="Other"), agent_id=agent_id))
    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert (await get(orch_stub, f"agents/{agent_id}")).display_name == "Sales assistant"


async def test_updates_make_revisions_and_old_ones_stay_readable(orch_stub: Stub) -> None:
    first = await create(orch_stub)
    second = await update(
        orch_stub, pb.Agent(name=first.name, system_prompt="second prompt"), ("system_prompt",)
    )
    third = await update(
        orch_stub, pb.Agent(name=first.name, tools=["current_time"], role="buyer"), ("tools",)
    )
    assert len({first.revision_id, second.revision_id, third.revision_id}) == 3
    assert (second.system_prompt, second.display_name) == ("second prompt", first.display_name)
    # Only the masked field changes: the role given alongside is ignored.
    assert (list(third.tools), third.role, third.system_prompt) == (
        ["current_time"],
        first.role,
        "second prompt",
    )
    assert third.create_time == first.create_time
    assert third.revision_create_time.ToNanoseconds() > first.revision_create_time.ToNanoseconds()

    latest = await get(orch_stub, first.name)
    assert latest == third
    old = await get(orch_stub, f"{first.name}@{first.revision_id}")
    assert (old.revision_id, old.system_prompt, list(old.tools)) == (
        first.revision_id,
        first.system_prompt,
        list(first.tools),
    )
    middle = await get(orch_stub, f"{first.name}@{second.revision_id}")
    assert middle.system_prompt == "second prompt" and list(middle.tools) == list(first.tools)

    for page_size in (0, 1, 2):
        history = await revisions(orch_stub, first.name, page_size)
        assert [r.name for r in history] == [
            f"{first.name}@{third.revision_id}",
            f"{first.name}@{second.revision_id}",
            f"{first.name}@{first.revision_id}",
        ]
    assert history[2].system_prompt == first.system_prompt


async def test_an_update_without_a_mask_writes_the_fields_it_sets(orch_stub: Stub) -> None:
    first = await create(orch_stub)
    updated = await update(
        orch_stub, pb.Agent(name=first.name, company="Globex", knowledge_tags=["faq"])
    )
    assert (updated.company, list(updated.knowledge_tags)) == ("Globex", ["faq"])
    assert (updated.display_name, updated.system_prompt, list(updated.tools)) == (
        first.display_name,
        first.system_prompt,
        list(first.tools),
    )


async def test_a_wildcard_mask_replaces_every_field(orch_stub: Stub) -> None:
    first = await create(orch_stub, sample(model="models/llm"))
    replaced = await update(
        orch_stub, pb.Agent(name=first.name, display_name="Replaced", system_prompt="p"), ("*",)
    )
    assert (replaced.display_name, replaced.system_prompt, replaced.model) == (
        "Replaced",
        "p",
        "models/toy_llm",
    )
    assert (replaced.role, replaced.company, list(replaced.tools)) == ("", "", [])
    assert list(replaced.knowledge_tags) == []
    assert replaced.create_time == first.create_time


async def test_clearing_the_model_by_mask_restores_the_default(orch_stub: Stub) -> None:
    first = await create(orch_stub, sample(model="models/llm"))
    assert first.model == "models/llm"
    cleared = await update(orch_stub, pb.Agent(name=first.name), ("model", "knowledge_tags"))
    assert (cleared.model, list(cleared.knowledge_tags)) == ("models/toy_llm", [])


async def test_a_stale_etag_is_aborted_and_the_current_one_updates(orch_stub: Stub) -> None:
    first = await create(orch_stub)
    second = await update(
        orch_stub, pb.Agent(name=first.name, role="buyer", etag=first.etag), ("role",)
    )
    assert second.etag and second.etag != first.etag
    error = await failure(
        update(orch_stub, pb.Agent(name=first.name, role="seller", etag=first.etag), ("role",))
    )
    assert error.code == grpc.StatusCode.ABORTED
    assert error.metadata.get("current_etag") == second.etag
    assert (await get(orch_stub, first.name)).role == "buyer"
    assert len(await revisions(orch_stub, first.name)) == 2


async def test_concurrent_unconditional_updates_all_land_as_revisions(orch_stub: Stub) -> None:
    first = await create(orch_stub)
    names = [f"Assistant {i}" for i in range(4)]
    results = await asyncio.gather(
        *(
            update(orch_stub, pb.Agent(name=first.name, display_name=n), ("display_name",))
            for n in names
        )
    )
    assert sorted(r.display_name for r in results) == names
    history = await revisions(orch_stub, first.name)
    assert len(history) == 5
    assert {r.revision_id for r in results} | {first.revision_id} == {
        r.name.split("@")[1] for r in history
    }
    assert (await get(orch_stub, first.name)).revision_id == history[0].name.split("@")[1]


LONG = "x" * 201


@pytest.mark.parametrize(
    ("agent", "agent_id", "field"),
    [
        (sample(display_name=""), "", "agent.display_name"),
        (sample(display_name="   "), "", "agent.display_name"),
        (sample(display_name=LONG), "", "agent.display_name"),
        (sample(display_name="line\nbreak"), "", "agent.display_name"),
        (sample(system_prompt=""), "", "agent.system_prompt"),
        (sample(system_prompt="é" * (16 * 1024 + 1)), "", "agent.system_prompt"),
        (sample(role=LONG), "", "agent.role"),
        (sample(company=LONG), "", "agent.company"),
        (sample(tools=["no_such_tool"]), "", "agent.tools[2]"),
        (sample(tools=["calculator"]), "", "agent.tools[2]"),
        (sample(model="llm"), "", "agent.model"),
        (sample(model="models/"), "", "agent.model"),
        (sample(knowledge_tags=["-bad"]), "", "agent.knowledge_tags[2]"),
        (sample(knowledge_tags=["has space"]), "", "agent.knowledge_tags[2]"),
        (sample(knowledge_tags=["t" * 129]), "", "agent.knowledge_tags[2]"),
        (sample(), "Upper", "agent_id"),
        (sample(), "-dash", "agent_id"),
        (sample(), "a" * 51, "agent_id"),
        (None, "", "agent"),
    ],
)
async def test_invalid_agents_name_the_field(
    orch_stub: Stub, agent: pb.Agent | None, agent_id: str, field: str
) -> None:
    request = pb.CreateAgentRequest(agent_id=agent_id)
    if agent is not None:
        request.agent.CopyFrom(agent)
    error = await failure(orch_stub.CreateAgent(request))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.field_violations, error.field_violations


async def test_every_violation_is_reported_at_once(orch_stub: Stub) -> None:
    bad = pb.Agent(tools=["nope"], model="x", knowledge_tags=["ok", "not ok"])
    error = await failure(orch_stub.CreateAgent(pb.CreateAgentRequest(agent=bad)))
    assert {
        "agent.display_name",
        "agent.system_prompt",
        "agent.tools[0]",
        "agent.model",
        "agent.knowledge_tags[1]",
    } <= set(error.field_violations)


async def test_a_system_prompt_of_exactly_32_kib_is_accepted(orch_stub: Stub) -> None:
    created = await create(orch_stub, sample(system_prompt="p" * 32 * 1024))
    assert len((await get(orch_stub, created.name)).system_prompt) == 32 * 1024


async def test_invalid_updates_and_reads_name_the_field(orch_stub: Stub) -> None:
    first = await create(orch_stub)
    cases: list[tuple[Awaitable[object], str]] = [
        (update(orch_stub, pb.Agent(name=first.name, role="r"), ("role", "etag")), "update_mask"),
        (update(orch_stub, pb.Agent(name=first.name, display_name=""), ("display_name",)),
         "agent.display_name"),
        (update(orch_stub, pb.Agent(name=first.name, tools=["nope"]), ("tools",)),
         "agent.tools[0]"),
        (update(orch_stub, pb.Agent(name=f"{first.name}@{first.revision_id}", role="r")),
         "agent.name"),
        (update(orch_stub, pb.Agent(role="r")), "agent.name"),
        (orch_stub.UpdateAgent(pb.UpdateAgentRequest()), "agent"),
        (get(orch_stub, ""), "name"),
        (get(orch_stub, "agent/x"), "name"),
        (get(orch_stub, "agents/UPPER"), "name"),
        (orch_stub.DeleteAgent(pb.DeleteAgentRequest(name=f"{first.name}@x")), "name"),
        (revisions(orch_stub, first.name, page_size=-1), "page_size"),
        (revisions(orch_stub, first.name, page_size=1001), "page_size"),
        (orch_stub.ListAgents(pb.ListAgentsRequest(page_size=-1)), "page_size"),
        (orch_stub.ListAgents(pb.ListAgentsRequest(page_token="forged")), "page_token"),
        (
            orch_stub.ListAgentRevisions(
                pb.ListAgentRevisionsRequest(name=first.name, page_token="forged")
            ),
            "page_token",
        ),
    ]  # fmt: skip
    for call, field in cases:
        error = await failure(call)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in error.field_violations, (field, error.field_violations)
    assert await get(orch_stub, first.name) == first


async def test_a_revision_token_of_one_agent_is_refused_for_another(orch_stub: Stub) -> None:
    one, other = await create(orch_stub), await create(orch_stub)
    await update(orch_stub, pb.Agent(name=one.name, role="r2"), ("role",))
    page = await orch_stub.ListAgentRevisions(
        pb.ListAgentRevisionsRequest(name=one.name, page_size=1)
    )
    assert page.next_page_token
    error = await failure(
        orch_stub.ListAgentRevisions(
            pb.ListAgentRevisionsRequest(name=other.name, page_token=page.next_page_token)
        )
    )
    assert "page_token" in error.field_violations


async def test_unknown_agents_and_revisions_are_not_found(orch_stub: Stub) -> None:
    first = await create(orch_stub)
    other = await create(orch_stub)
    for name in (
        f"agents/{new_id()}",
        f"{first.name}@0123456789abcdef",
        f"{first.name}@not-a-revision",
        # A revision of another agent is not one of this agent's.
        f"{first.name}@{other.revision_id}",
    ):
        error = await failure(get(orch_stub, name))
        assert error.code == grpc.StatusCode.NOT_FOUND, name
    for call in (
        update(orch_stub, pb.Agent(name=f"agents/{new_id()}", role="r")),
        revisions(orch_stub, f"agents/{new_id()}"),
        orch_stub.DeleteAgent(pb.DeleteAgentRequest(name=f"agents/{new_id()}")),
    ):
        assert (await failure(call)).code == grpc.StatusCode.NOT_FOUND


async def test_another_tenants_agents_are_not_found_and_not_listed(
    orch_stub: Stub, globex: Stub
) -> None:
    mine = await create(orch_stub)
    pinned = f"{mine.name}@{mine.revision_id}"
    for call in (
        get(globex, mine.name),
        get(globex, pinned),
        update(globex, pb.Agent(name=mine.name, role="taken over"), ("role",)),
        update(globex, pb.Agent(name=mine.name, role="x", etag=mine.etag), ("role",)),
        revisions(globex, mine.name),
        globex.DeleteAgent(pb.DeleteAgentRequest(name=mine.name)),
    ):
        assert (await failure(call)).code == grpc.StatusCode.NOT_FOUND
    assert mine.name not in [a.name for a in await listed(globex)]
    # Their namesake is their own agent.
    theirs = await create(globex, sample(display_name="Globex agent"), mine.name.split("/")[1])
    assert theirs.name == mine.name and theirs.revision_id != mine.revision_id
    assert await get(orch_stub, mine.name) == mine
    assert (await get(globex, mine.name)).display_name == "Globex agent"
    error = await failure(get(globex, pinned))
    assert error.code == grpc.StatusCode.NOT_FOUND


async def test_a_deleted_agent_and_its_revisions_are_gone(orch_stub: Stub) -> None:
    first = await create(orch_stub)
    second = await update(orch_stub, pb.Agent(name=first.name, role="r2"), ("role",))
    await orch_stub.DeleteAgent(pb.DeleteAgentRequest(name=first.name))
    for call in (
        get(orch_stub, first.name),
        get(orch_stub, f"{first.name}@{first.revision_id}"),
        get(orch_stub, f"{first.name}@{second.revision_id}"),
        revisions(orch_stub, first.name),
        orch_stub.DeleteAgent(pb.DeleteAgentRequest(name=first.name)),
    ):
        assert (await failure(call)).code == grpc.StatusCode.NOT_FOUND
    assert first.name not in [a.name for a in await listed(orch_stub)]
    # The id is free again; the old revision names do not come back.
    again = await create(orch_stub, agent_id=first.name.split("/")[1])
    assert again.revision_id not in (first.revision_id, second.revision_id)
    assert [r.name for r in await revisions(orch_stub, again.name)] == [
        f"{again.name}@{again.revision_id}"
    ]


async def test_agents_list_newest_first_across_pages(
    fresh_tenant: tuple[Stub, callisto.Client],
) -> None:
    stub, _ = fresh_tenant
    assert await listed(stub) == []
    created = [await create(stub, sample(display_name=f"Agent {i}")) for i in range(5)]
    revised = await update(stub, pb.Agent(name=created[0].name, role="r2"), ("role",))
    expected = [a.name for a in reversed(created)]
    for page_size in (0, 1, 2, 5):
        found = await listed(stub, page_size)
        assert [a.name for a in found] == expected
    # Listed at their latest revision, etag included.
    first = next(a for a in await listed(stub) if a.name == created[0].name)
    assert first == revised


async def test_agents_outlive_the_tenants_session_retention(
    fresh_tenant: tuple[Stub, callisto.Client],
) -> None:
    stub, store = fresh_tenant
    policy = persistence_pb2.RetentionPolicy(session_ttl=duration_pb2.Duration(seconds=1))
    await store.persistence.update_retention_policy(policy, ["session_ttl"])
    first = await create(stub)
    second = await update(stub, pb.Agent(name=first.name, role="r2"), ("role",))
    await asyncio.sleep(2.5)
    assert await get(stub, first.name) == second
    assert (await get(stub, f"{first.name}@{first.revision_id}")).role == first.role
    assert len(await revisions(stub, first.name)) == 2


async def test_list_tools_gives_every_builtin_with_its_schema(orch_stub: Stub) -> None:
    tools = (await orch_stub.ListTools(pb.ListToolsRequest())).tools
    by_name = {tool.name: tool for tool in tools}
    assert set(by_name) >= BUILTIN_TOOLS
    assert [t.name for t in tools] == sorted(by_name)
    for tool in tools:
        schema = json_format.MessageToDict(tool.parameters)
        assert schema["type"] == "object", tool.name
        assert tool.description, tool.name
        assert tool.timeout.ToNanoseconds() > 0, tool.name
    search = json_format.MessageToDict(by_name["search_documents"].parameters)
    assert "query" in search["properties"]
    assert not by_name["search_documents"].side_effects
    # Every listed tool can be given to an agent.
    created = await create(orch_stub)
    given = await update(orch_stub, pb.Agent(name=created.name, tools=sorted(by_name)), ("tools",))
    assert list(given.tools) == sorted(by_name)


async def test_suggested_agents_are_not_stored_and_create_agent_accepts_them(
    orch_stub: Stub,
) -> None:
    reply = await orch_stub.SuggestAgents(
        pb.SuggestAgentsRequest(scenario="Tessaline Systems sells edge servers to Marrowick Motors")
    )
    assert len(reply.agents) == 3
    for suggested in reply.agents:
        assert suggested.name == ""
        created = await create(orch_stub, suggested)
        assert (created.display_name, created.company, created.system_prompt) == (
            suggested.display_name,
            suggested.company,
            suggested.system_prompt,
        )
        assert list(created.tools) == list(suggested.tools)
        await orch_stub.DeleteAgent(pb.DeleteAgentRequest(name=created.name))
