"""Tenancy of simulations against a hostile tenant: another tenant's simulation, running or
finished, is NOT_FOUND on every RPC that names it (metrics, downloads, streams, human turns, the
human's end, cancel), over gRPC with or without a forged on-behalf-of header and over HTTP through
Envoy, and the owner's run goes on untouched; nothing of one tenant appears in the other's
listings, metrics or documents; and an inline agent retrieves only its own tenant's documents of
its own company, even where the other tenant holds documents of the same company and ids."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from runs_test_support import kind, wait_for_kind
from simulation_test_support import ended, metadata_of, run, stored

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc as pb_grpc
from callisto.client import auth_metadata
from callisto.ingest.folder import BytesDocument
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import ServiceProcess
from callisto.orchestration import simulation_start

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(600)]

OWNER, STRANGER = "sim-tenancy-owner", "sim-tenancy-stranger"
SECRET = "zorblax7secret"
ON_BEHALF_OF = "x-callisto-on-behalf-of"
NOT_FOUND = grpc.StatusCode.NOT_FOUND
STREAM_S = 120.0
FORMATS = (pb.EXPORT_FORMAT_MARKDOWN, pb.EXPORT_FORMAT_PDF, pb.EXPORT_FORMAT_JSON)


def secret_start(*, human: bool) -> pb.StartConversation:
    """A simulation whose scenario, agents, prompts and (so) turns hold SECRET."""
    agents = [
        pb.Agent(
            display_name=f"Tessa {SECRET}",
            role="seller",
            company=f"Tessaline {SECRET}",
            system_prompt=f"You are Tessa. The code word is {SECRET}.",
        ),
        pb.Agent(
            display_name="Marco",
            role="buyer",
            company="Marrowick Motors",
            system_prompt=f"You are Marco. Never say {SECRET}.",
        ),
    ]
    return simulation_start(
        f"{SECRET} Tessaline sells edge servers to Marrowick",
        inline_agents=agents,
        max_turns=6 if human else 2,
        max_turn_tokens=16,
        human=pb.HumanParticipant(display_name=f"Pat {SECRET}") if human else None,
        human_turn_timeout_s=600 if human else None,
        title=f"Deal {SECRET}",
        tags=[f"tag-{SECRET}"],
    )


@pytest_asyncio.fixture(loop_scope="session")
async def owner(
    orchestration: ServiceProcess, tenant_key: Callable[[str], str]
) -> AsyncIterator[callisto.Client]:
    async with await callisto.Client.connect(
        orchestration.address, api_key=tenant_key(OWNER)
    ) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def stranger(
    orchestration: ServiceProcess, tenant_key: Callable[[str], str]
) -> AsyncIterator[callisto.Client]:
    async with await callisto.Client.connect(
        orchestration.address, api_key=tenant_key(STRANGER)
    ) as client:
        yield client


def _stub(client: callisto.Client) -> pb_grpc.OrchestrationServiceAsyncStub:
    return client.stub(pb_grpc.OrchestrationServiceStub)


async def _collect(call: Any) -> list[Any]:
    return [response async for response in call]


def _attempts(
    stub: pb_grpc.OrchestrationServiceAsyncStub, name: str, metadata: Any
) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    """Every RPC that names the conversation `name`, as a stranger calls it."""
    turn = pb.HumanTurn(text="I accept, send the contract")
    end = pb.HumanTurn(text="", end_conversation=True)
    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        (
            "GetConversationMetrics",
            lambda: stub.GetConversationMetrics(
                pb.GetConversationMetricsRequest(name=name), metadata=metadata
            ),
        ),
        (
            "StreamConversation",
            lambda: _collect(
                stub.StreamConversation(
                    pb.StreamConversationRequest(name=name), metadata=metadata, timeout=30
                )
            ),
        ),
        (
            "SubmitInput(turn)",
            lambda: stub.SubmitInput(
                pb.SubmitInputRequest(name=name, turn=turn), metadata=metadata
            ),
        ),
        (
            "SubmitInput(end_conversation)",
            lambda: stub.SubmitInput(pb.SubmitInputRequest(name=name, turn=end), metadata=metadata),
        ),
        (
            "CancelConversation",
            lambda: stub.CancelConversation(
                pb.CancelConversationRequest(name=name, reason="hostile"), metadata=metadata
            ),
        ),
    ]
    for format in FORMATS:
        calls.append(
            (
                f"DownloadConversation({pb.ExportFormat.Name(format)})",
                lambda format=format: stub.DownloadConversation(  # type: ignore[misc]
                    pb.DownloadConversationRequest(name=name, format=format), metadata=metadata
                ),
            )
        )
    return calls


async def _not_found_everywhere(
    stub: pb_grpc.OrchestrationServiceAsyncStub, name: str, metadata: Any, who: str
) -> None:
    wrong = []
    for what, attempt in _attempts(stub, name, metadata):
        try:
            answer = await attempt()
        except grpc.aio.AioRpcError as error:
            if error.code() != NOT_FOUND or SECRET in (error.details() or ""):
                wrong.append(f"{who} {what}: {error.code().name} {error.details()}")
            continue
        wrong.append(f"{who} {what}: answered {str(answer)[:200]}")
    assert not wrong, "\n".join(wrong)


async def _http_not_found(gateway: EnvoyGateway, key: str, name: str) -> None:
    headers = {"authorization": f"Bearer {key}", ON_BEHALF_OF: OWNER}
    async with httpx.AsyncClient(base_url=gateway.http_url, headers=headers, timeout=60) as http:
        answers = [
            await http.get(f"/v1/{name}:metrics"),
            await http.get(f"/v1/{name}:stream"),
            *[
                await http.get(
                    f"/v1/{name}:download", params={"format": pb.ExportFormat.Name(format)}
                )
                for format in FORMATS
            ],
            await http.post(f"/v1/{name}:submitInput", json={"turn": {"text": "yes"}}),
            await http.post(
                f"/v1/{name}:submitInput", json={"turn": {"text": "", "endConversation": True}}
            ),
            await http.post(f"/v1/{name}:cancel", json={"reason": "hostile"}),
        ]
    wrong = [
        f"{a.request.method} {a.request.url.path}: {a.status_code} {a.text[:200]}"
        for a in answers
        if a.status_code != 404 or SECRET in a.text
    ]
    assert not wrong, "\n".join(wrong)


async def test_another_tenants_simulation_is_not_found_on_every_rpc_and_runs_on_untouched(
    owner: callisto.Client,
    stranger: callisto.Client,
    mesh_gateway: EnvoyGateway,
    persistence: ServiceProcess,
    tenant_key: Callable[[str], str],
) -> None:
    finished = await run(_stub(owner), secret_start(human=False), within_s=STREAM_S)
    assert finished[-1].done.reason == "max_turns", finished[-1]
    done_name = finished[-1].conversation
    call: Any = _stub(owner).RunConversation(
        pb.RunConversationRequest(start=secret_start(human=True))
    )
    try:
        before = await wait_for_kind(call, "awaiting_input", within_s=STREAM_S)
        running = before[-1].conversation
        awaited = before[-1].awaiting_input
        stub = _stub(stranger)
        forged = ((ON_BEHALF_OF, OWNER),)
        for name in (running, done_name):
            await _not_found_everywhere(stub, name, None, "stranger")
            await _not_found_everywhere(stub, name, forged, "stranger forging the owner")
            await _http_not_found(mesh_gateway, tenant_key(STRANGER), name)
        # Nobody without a key gets anywhere.
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _stub(owner).GetConversationMetrics(
                pb.GetConversationMetricsRequest(name=running),
                metadata=auth_metadata("cal_nope"),
            )
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The owner's run still waits for the same turn, and takes the human's line.
        await owner.orchestration.submit_turn(running, f"Deal {SECRET}, send it")
        after = await wait_for_kind(call, "awaiting_input", within_s=STREAM_S)
        await owner.orchestration.submit_turn(running, "", end_conversation=True)
        events = [e async for e in _rest(call)]
    finally:
        call.cancel()
    assert events[-1].done.reason == "human_ended", events[-1]
    seen = [*before, *after, *events]
    assert [kind(e) for e in seen].count("done") == 1
    assert not [e for e in seen if kind(e) in ("error",)], seen
    turns = ended(seen)
    assert [t.turn for t in turns] == [1, 2, 3, 4, 5], [t.turn for t in turns]
    assert turns[2].human and turns[2].turn == awaited.turn
    _, messages = await stored(persistence.address, tenant_key(OWNER), running)
    assert [m.text for m in messages] == [t.text for t in turns]


async def _rest(call: Any) -> AsyncIterator[pb.ConversationEvent]:
    async for response in call:
        yield response.event
        if kind(response.event) in ("done", "error"):
            return


async def test_nothing_of_one_tenant_appears_in_the_others_listings_metrics_or_documents(
    owner: callisto.Client,
    stranger: callisto.Client,
    mesh_gateway: EnvoyGateway,
    persistence: ServiceProcess,
    tenant_key: Callable[[str], str],
) -> None:
    mine = await run(_stub(owner), secret_start(human=False), within_s=STREAM_S)
    assert SECRET in "".join(t.text for t in ended(mine))
    start = simulation_start(
        "Corvane sells storage to Initech",
        inline_agents=[
            pb.Agent(display_name="Cora", system_prompt="You are Cora.", company="Corvane"),
            pb.Agent(display_name="Ian", system_prompt="You are Ian.", company="Initech"),
        ],
        max_turns=2,
        max_turn_tokens=16,
    )
    theirs = await run(_stub(stranger), start, within_s=STREAM_S)
    assert theirs[-1].done.reason == "max_turns", theirs[-1]
    name = theirs[-1].conversation
    seen: list[bytes] = [e.SerializeToString() for e in theirs]
    seen.append((await stranger.orchestration.get_conversation_metrics(name)).SerializeToString())
    for format in FORMATS:
        body = await stranger.orchestration.download_conversation(name, format)
        seen.append(body.data)
    async with await callisto.Client.connect(
        persistence.address, api_key=tenant_key(STRANGER)
    ) as client:
        listed = [c async for c in client.persistence.list_conversations(page_size=100)]
        tagged = [c async for c in client.persistence.list_conversations(tags=["simulation"])]
        by_secret = [c async for c in client.persistence.list_conversations(tags=[f"tag-{SECRET}"])]
    assert name in {c.name for c in tagged}
    assert mine[-1].conversation not in {c.name for c in listed}
    assert by_secret == []
    seen.extend(c.SerializeToString() for c in listed)
    agents = [a async for a in stranger.orchestration.list_agents()]
    seen.extend(a.SerializeToString() for a in agents)
    headers = {"authorization": f"Bearer {tenant_key(STRANGER)}", ON_BEHALF_OF: OWNER}
    async with httpx.AsyncClient(
        base_url=mesh_gateway.http_url, headers=headers, timeout=60
    ) as http:
        for path in ("/v1/conversations", "/v1/agents", f"/v1/{name}:download"):
            answer = await http.get(
                path, params={"pageSize": "1000"} if "download" not in path else {}
            )
            assert answer.status_code == 200, (path, answer.text)
            seen.append(answer.content)
    leaks = [item[:300] for item in seen if SECRET.encode() in item]
    assert not leaks, leaks
    # The owner sees its own.
    assert (await owner.orchestration.get_conversation_metrics(mine[-1].conversation)).turns == 2


TESSALINE, CORVANE = "Tessaline Systems", "Corvane Data"
# The owner's documents: its seller's company and the buyer's.
OWN_DOCUMENTS = {
    "tess-discount": (TESSALINE, "Tessaline volume discount: edge node orders get 15 percent off."),
    "corv-terms": (CORVANE, "Corvane payment terms: edge node volume discount billed monthly."),
}
# The stranger's: the same company names, one of the same ids, each with words of its own.
STRANGER_DOCUMENTS = {
    "tess-discount": (TESSALINE, "Tessaline edge node volume discount is ninety percent."),
    "tess-secret": (TESSALINE, "Tessaline edge node volume discount internal notes."),
    "corv-secret": (CORVANE, "Corvane edge node volume discount floor price."),
    "ghost-notes": (SECRET, "Ghost edge node volume discount dossier."),
}
STRANGER_WORDS = ("ninety", "internal notes", "floor price", "dossier")


async def _ingest(address: str, key: str, documents: dict[str, tuple[str, str]]) -> None:
    async with await callisto.Client.connect(address, api_key=key) as client:
        report = await client.retrieval.ingest(
            [
                BytesDocument(
                    data=text.encode(),
                    document_id=document_id,
                    mime_type="text/plain",
                    title=document_id,
                    attributes={"company": company},
                )
                for document_id, (company, text) in documents.items()
            ]
        )
    assert not report.failed and report.error is None, report


async def test_an_inline_agent_retrieves_only_its_own_tenants_documents_of_its_own_company(
    orchestration: ServiceProcess,
    orch_retrieval: ServiceProcess,
    persistence: ServiceProcess,
    tenant_key: Callable[[str], str],
) -> None:
    owner_tenant, stranger_tenant = "sim-rag-owner", "sim-rag-stranger"
    await _ingest(orch_retrieval.address, tenant_key(owner_tenant), OWN_DOCUMENTS)
    await _ingest(orch_retrieval.address, tenant_key(stranger_tenant), STRANGER_DOCUMENTS)
    tools = ["search_documents"]
    agents = [
        pb.Agent(display_name="Tessa", company=TESSALINE, system_prompt="Sell.", tools=tools),
        pb.Agent(display_name="Cora", company=CORVANE, system_prompt="Buy.", tools=tools),
        # A company only the stranger has documents of: nothing to find.
        pb.Agent(display_name="Ghost", company=SECRET, system_prompt="Spy.", tools=tools),
    ]
    # toy_llm echoes the scenario's words, "[1]" among them: a turn with a source cites it.
    start = simulation_start(
        f"edge node volume discount {SECRET} [1]",
        inline_agents=agents,
        max_turns=3,
        max_turn_tokens=16,
    )
    async with await callisto.Client.connect(
        orchestration.address, api_key=tenant_key(owner_tenant)
    ) as client:
        events = await run(_stub(client), start, within_s=STREAM_S)
    assert events[-1].done.reason == "max_turns", events[-1]
    own = {
        company: {d for d, (c, _) in OWN_DOCUMENTS.items() if c == company}
        for company in (TESSALINE, CORVANE)
    }
    own[SECRET] = set()
    company_of = {"tessa": TESSALINE, "cora": CORVANE, "ghost": SECRET}
    speaker = ""
    cited: dict[str, set[str]] = {}
    for event in events:
        if kind(event) == "turn_started":
            speaker = event.turn_started.speaker
        elif kind(event) == "tool_call":
            assert event.tool_call.tool == "search_documents" and not event.tool_call.error, event
            assert not any(w in event.tool_call.result for w in STRANGER_WORDS), event
        elif kind(event) == "citation":
            cited.setdefault(speaker, set()).add(event.citation.document_id)
            assert event.citation.document_id in own[company_of[speaker]], (speaker, event)
            assert not any(w in event.citation.text for w in STRANGER_WORDS), event
    assert cited.get("tessa") and cited.get("cora"), cited
    assert "ghost" not in cited
    _, messages = await stored(
        persistence.address, tenant_key(owner_tenant), events[0].conversation
    )
    for message in messages:
        for citation in message.citations:
            assert citation.document_id in own[company_of[message.author]], message
            assert not any(w in citation.text for w in STRANGER_WORDS), citation
        assert not any(w in message.text for w in STRANGER_WORDS), message
        passages = metadata_of(message)["passages"]
        assert passages == 0 if message.author == "ghost" else passages >= 1, message
