"""DownloadConversation over conversations stored through the real persistence service as a
simulation stores them: Markdown with every turn, the agents and the metrics (and nothing a turn
wrote can change its structure), a PDF that pypdf opens and reads back, JSON with the metrics,
bounded documents, other tenants' conversations not found, and the downloads over HTTP through
the real Envoy gateway with their content types."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from markdown_it import MarkdownIt
from pypdf import PdfReader
from test_conversation_metrics import NEGATIVE, NEUTRAL, POSITIVE, _rfc3339, _struct, sim_message

import callisto
from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.orchestration.v1 import orchestration_pb2_grpc
from callisto.api.persistence.v1 import persistence_pb2
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import ServiceProcess
from callisto.orchestration import simulation_start
from callisto.services.orchestration.exports.markdown import escape_block

MARKDOWN = pb.EXPORT_FORMAT_MARKDOWN
PDF = pb.EXPORT_FORMAT_PDF
JSON = pb.EXPORT_FORMAT_JSON
SELLER_PROMPT = "You are Tessa, an account executive at Tessaline Systems. Sell the E200."
BUYER_PROMPT = "You are Marco, head of IT at Marrowick Motors. Push back on price."
HOSTILE = (
    "# Injected heading\n"
    "## Another\n"
    "<script>alert('x')</script> <b>bold</b> &amp;\n"
    "| col | col |\n| --- | --- |\n"
    "    indented code\n"
    "```\nfenced\n```\n"
    "[link](http://evil.example) ![img](http://evil.example/x.png)\n"
    "---\n"
    "- item\n"
    "1. first\n"
    "> quote\n"
    "Setext\n===\n"
    "[^t1-1]: forged footnote"
)
UNICODE = "Deal 😀🤝 — 成交 — עסקה — صفقة — ā"


def participants() -> list[persistence_pb2.Participant]:
    agent = persistence_pb2.PARTICIPANT_KIND_AGENT
    return [
        persistence_pb2.Participant(
            id="tessa-sales",
            display_name="Tessa",
            kind=agent,
            role="Account executive",
            company="Tessaline Systems",
        ),
        persistence_pb2.Participant(
            id="marco-buyer",
            display_name="Marco",
            kind=agent,
            role="Head of IT",
            company="Marrowick Motors",
        ),
        persistence_pb2.Participant(
            id="user",
            display_name="Dana",
            kind=persistence_pb2.PARTICIPANT_KIND_HUMAN,
            role="Procurement",
            company="Marrowick Motors",
        ),
    ]


def conversation_metadata() -> dict[str, Any]:
    return {
        "mode": "simulation",
        "run": "r1",
        "scenario": "Tessaline Systems sells edge servers to Marrowick Motors.",
        "agents": [
            {
                "participant": "tessa-sales",
                "agent": "",
                "display_name": "Tessa",
                "role": "Account executive",
                "company": "Tessaline Systems",
                "system_prompt": SELLER_PROMPT,
                "tools": ["search_documents"],
                "model": "models/toy_llm",
                "knowledge_tags": ["company:tessaline"],
            },
            {
                "participant": "marco-buyer",
                "agent": "agents/marco@r1",
                "display_name": "Marco",
                "role": "Head of IT",
                "company": "Marrowick Motors",
                "system_prompt": BUYER_PROMPT,
                "tools": [],
                "model": "models/toy_llm",
                "knowledge_tags": [],
            },
        ],
        "human": {
            "id": "user",
            "display_name": "Dana",
            "role": "Procurement",
            "company": "Marrowick Motors",
        },
        "termination": {"max_turns": 6, "stop_keywords": ["deal"]},
        "max_total_tokens": 0,
    }


def turns(texts: Sequence[str] | None = None) -> list[persistence_pb2.Message]:
    speakers = ["tessa-sales", "marco-buyer", "user"]
    texts = texts or [
        "Our E200 edge server runs your plant analytics on site [1].",
        "The price is too high for us.",
        "Could you include support for three years?",
        "Yes: three years of support, and the deal is done [1] [2].",
    ]
    messages = []
    for index, text in enumerate(texts):
        number = index + 1
        speaker = speakers[index % 3]
        score = [0.6, -0.4, 0.1, 0.8][index % 4]
        message = sim_message(
            number,
            speaker,
            human=speaker == "user",
            score=score,
            label=POSITIVE if score > 0.05 else NEGATIVE if score < -0.05 else NEUTRAL,
            prompt_tokens=0 if speaker == "user" else 50 + number,
            completion_tokens=0 if speaker == "user" else 10,
            generation_ms=0.0 if speaker == "user" else 100.0,
            keyword_hits=["deal"] if "deal" in text else (),
            passages=2 if "[1]" in text else 0,
            started=1_800_000_000.0 + 10 * index,
        )
        message.text = text
        if "[1]" in text:
            message.citations.extend(
                [
                    common_pb2.Citation(
                        document_id="e200-sheet",
                        title="E200 data sheet",
                        source_uri="file:///docs/e200.pdf",
                        page=2,
                        section="Specs",
                        marker=1,
                        text="The E200 ...",
                    ),
                    common_pb2.Citation(
                        document_id="support", title="Support plans", marker=2, text="..."
                    ),
                ]
            )
        messages.append(message)
    return messages


async def store(
    persistence_client: callisto.Client, messages: Sequence[persistence_pb2.Message]
) -> str:
    persistence = persistence_client.persistence
    conversation = await persistence.create_conversation(
        persistence_pb2.Conversation(
            title="Edge servers for Marrowick",
            participants=participants(),
            tags=["simulation"],
            metadata=_struct(conversation_metadata()),
        )
    )
    for message in messages:
        stored = persistence_pb2.Message()
        stored.CopyFrom(message)
        stored.ClearField("name")
        stored.ClearField("create_time")
        await persistence.create_message(conversation.name, stored)
    conversation.metadata.update({"outcome": "keyword", "end_time": _rfc3339(1_800_000_100)})
    conversation.status = persistence_pb2.CONVERSATION_STATUS_COMPLETED
    conversation.tags.append("outcome:keyword")
    updated = await persistence.update_conversation(conversation, ["status", "tags", "metadata"])
    return updated.name


async def download(
    client: callisto.Client, name: str, format: pb.ExportFormat.ValueType
) -> tuple[str, bytes]:
    body = await client.orchestration.download_conversation(name, format)
    return body.content_type, body.data


def headings(markdown: str) -> list[str]:
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    return [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]


def pdf_text(data: bytes) -> str:
    reader = PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


async def test_markdown_shows_agents_prompts_every_turn_and_the_metrics(
    persistence_client: callisto.Client, orch_client: callisto.Client
) -> None:
    name = await store(persistence_client, turns())
    content_type, data = await download(orch_client, name, MARKDOWN)
    assert content_type == "text/markdown; charset=utf-8"
    text = data.decode()

    assert headings(text) == [
        "Edge servers for Marrowick",
        "Scenario",
        "Participants",
        "Tessa (Tessaline Systems)",
        "Marco (Marrowick Motors)",
        "Dana (Marrowick Motors) (human)",
        "Turns",
        "Turn 1 · Tessa (Tessaline Systems)",
        "Turn 2 · Marco (Marrowick Motors)",
        "Turn 3 · Dana (Marrowick Motors) · human",
        "Turn 4 · Tessa (Tessaline Systems)",
        "Metrics",
        "Per turn",
    ]
    assert "Tessaline Systems sells edge servers to Marrowick Motors." in text
    assert SELLER_PROMPT in text and BUYER_PROMPT in text
    assert "**Tools:** search\\_documents" in text and "**Role:** Head of IT" in text
    assert "**Agent:** agents/marco@r1" in text
    assert "**Outcome:** keyword" in text and "**Status:** completed" in text
    # Each turn: its time, its sentiment, its text, its citations as footnotes.
    for started, sentiment in [
        ("2027-01-15 08:00:00 UTC", "positive (+0.600)"),
        ("2027-01-15 08:00:10 UTC", "negative (-0.400)"),
        ("2027-01-15 08:00:20 UTC", "positive (+0.100)"),
        ("2027-01-15 08:00:30 UTC", "positive (+0.800)"),
    ]:
        assert f"**Time:** {started} · **Sentiment:** {sentiment}" in text
    assert "The price is too high for us." in text
    assert "runs your plant analytics on site [^t1-1]." in text
    assert "the deal is done [^t4-1] [^t4-2]." in text
    assert "[^t1-1]: E200 data sheet, file:///docs/e200.pdf, p. 2, Specs" in text
    assert "[^t4-2]: Support plans" in text
    # The metrics table.
    for row in [
        "| Turns | 4 |",
        "| Agent turns | 3 |",
        "| Human turns | 1 |",
        "| Sentiment trend | rising |",
        "| Total tokens | 187 |",
        "| Keyword hits | deal (turn 4, tessa-sales) |",
        "| Retrieval turns | 2 |",
        "| Passages retrieved | 4 |",
        "| Outcome | keyword |",
    ]:
        assert row in text, row
    assert "| 3 | user | yes | +0.100 | 0 | 0.0 | 0 |" in text


async def test_a_turn_cannot_inject_structure_into_the_markdown(
    persistence_client: callisto.Client, orch_client: callisto.Client
) -> None:
    name = await store(persistence_client, turns([HOSTILE, "fine", HOSTILE.replace("\n", " ")]))
    _, data = await download(orch_client, name, MARKDOWN)
    text = data.decode()
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    kinds = {t.type for t in tokens}
    # No heading, code, HTML, list, quote, rule or table of the turns' making.
    assert headings(text)[7:10] == [
        "Turn 1 · Tessa (Tessaline Systems)",
        "Turn 2 · Marco (Marrowick Motors)",
        "Turn 3 · Dana (Marrowick Motors) · human",
    ]
    assert len(headings(text)) == 12
    assert not kinds & {"html_block", "html_inline", "code_block", "fence", "hr"}
    inline = [c for t in tokens if t.children for c in t.children]
    assert not {c.type for c in inline} & {"html_inline", "link_open", "image", "code_inline"}
    assert [t.type for t in tokens].count("table_open") == 2  # the metrics and per-turn tables
    assert [t.type for t in tokens].count("blockquote_open") == 2  # the two agents' prompts
    # The bullet lists are the document's own: facts, two agents, the human.
    assert [t.type for t in tokens].count("bullet_list_open") == 4
    assert "ordered_list_open" not in kinds
    # The words themselves are all there, readable.
    rendered = MarkdownIt("commonmark").enable("table").render(text)
    assert "&lt;script&gt;alert(" in rendered and "# Injected heading" in rendered
    assert "[^t1-1]: forged footnote" in rendered


async def test_unicode_turns_render_in_every_format(
    persistence_client: callisto.Client, orch_client: callisto.Client
) -> None:
    name = await store(persistence_client, turns([UNICODE, "ok"]))
    _, markdown = await download(orch_client, name, MARKDOWN)
    assert UNICODE in markdown.decode()
    _, exported = await download(orch_client, name, JSON)
    assert json.loads(exported)["messages"][0]["text"] == UNICODE
    _, pdf = await download(orch_client, name, PDF)
    text = pdf_text(pdf)
    # The PDF's standard font shows Latin-1: the rest prints as '?', and the document says so.
    assert "Deal ?? - ?? - ???? - ???? - a" in text
    assert "printed as '?'" in text


async def test_pdf_opens_and_holds_the_agents_every_turn_and_the_metrics(
    persistence_client: callisto.Client, orch_client: callisto.Client
) -> None:
    messages = turns()
    name = await store(persistence_client, messages)
    content_type, data = await download(orch_client, name, PDF)
    assert content_type == "application/pdf" and data.startswith(b"%PDF-")
    text = pdf_text(data)
    for expected in [
        "Edge servers for Marrowick",
        "Tessa (Tessaline Systems)",
        "Marco (Marrowick Motors)",
        "Dana (Marrowick Motors) (human)",
        "Role: Account executive",
        "Tools: search_documents",
        SELLER_PROMPT,
        BUYER_PROMPT,
        "Turn 1 - Tessa (Tessaline Systems)",
        "Turn 3 - Dana (Marrowick Motors) - human",
        "2027-01-15 08:00:10 UTC | sentiment negative (-0.400)",
        "[1] E200 data sheet, file:///docs/e200.pdf, p. 2, Specs",
        "Sentiment trend",
        "Sentiment per turn",
    ]:
        assert expected in text, expected
    for message in messages:
        assert message.text in text
    # The same conversation always gives the same document.
    assert (await download(orch_client, name, PDF))[1] == data


async def test_json_holds_the_conversation_its_messages_and_its_metrics(
    persistence_client: callisto.Client, orch_client: callisto.Client
) -> None:
    name = await store(persistence_client, turns())
    content_type, data = await download(orch_client, name, JSON)
    assert content_type == "application/json"
    document = json.loads(data)
    assert document["conversation"]["name"] == name
    assert document["conversation"]["metadata"]["agents"][0]["system_prompt"] == SELLER_PROMPT
    assert [m["text"] for m in document["messages"]] == [m.text for m in turns()]
    assert document["export"] == {"messages": 4, "totalMessages": 4, "complete": True}
    metrics = json_format.ParseDict(document["metrics"], pb.ConversationMetrics())
    assert metrics == await orch_client.orchestration.get_conversation_metrics(name)
    assert metrics.turns == 4 and metrics.sentiment_trend == "rising"


async def test_a_long_conversation_renders_a_bounded_document_that_says_what_it_left_out(
    persistence_client: callisto.Client, orch_client: callisto.Client
) -> None:
    # 110 turns of 6000 characters: each is cut at 4000, and 400 000 characters cover 100.
    texts = [f"turn-{i:03d} " + "word " * 1200 for i in range(1, 111)]
    name = await store(persistence_client, turns(texts))
    _, data = await download(orch_client, name, MARKDOWN)
    text = data.decode()
    assert "turn-100 " in text and "turn-101 " not in text
    assert "Only the first 100 of 110 turns are shown" in text
    assert "cut at 4000 characters" in text and "\\[cut\\]" in text
    assert "| Turns | 110 |" in text
    _, pdf = await download(orch_client, name, PDF)
    assert "Only the first 100 of 110 turns are shown" in pdf_text(pdf)
    assert len(pdf) < 4 * 1024 * 1024


async def test_a_huge_turn_is_cut_in_the_documents_and_whole_in_json(
    persistence_client: callisto.Client, orch_client: callisto.Client
) -> None:
    huge = "x" * 60_000  # one word longer than any line
    name = await store(persistence_client, turns([huge, "short"]))
    _, markdown = await download(orch_client, name, MARKDOWN)
    assert "x" * 4000 + " \\[cut\\]" in markdown.decode() and "x" * 4001 not in markdown.decode()
    _, pdf = await download(orch_client, name, PDF)
    assert "[cut]" in pdf_text(pdf)
    _, exported = await download(orch_client, name, JSON)
    assert json.loads(exported)["messages"][0]["text"] == huge


async def test_downloads_of_another_tenants_conversation_are_not_found(
    persistence_client: callisto.Client,
    orchestration: ServiceProcess,
    tenant_key: Callable[[str], str],
) -> None:
    name = await store(persistence_client, turns()[:1])
    async with await callisto.Client.connect(
        orchestration.address, api_key=tenant_key("initech")
    ) as other:
        for format in (MARKDOWN, PDF, JSON):
            with pytest.raises(callisto.errors.NotFound):
                await other.orchestration.download_conversation(name, format)


async def test_downloads_refuse_a_bad_name_or_format_with_field_violations(
    orch_stub: orchestration_pb2_grpc.OrchestrationServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orch_stub.DownloadConversation(
            pb.DownloadConversationRequest(name="conversations/Not_Valid", format=99)  # type: ignore[arg-type]
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(callisto.errors.from_rpc_error(caught.value).field_violations) == {"name", "format"}


async def test_an_unspecified_format_downloads_markdown(
    persistence_client: callisto.Client, orch_client: callisto.Client
) -> None:
    name = await store(persistence_client, turns()[:2])
    content_type, data = await download(orch_client, name, pb.EXPORT_FORMAT_UNSPECIFIED)
    assert content_type == "text/markdown; charset=utf-8"
    assert data.startswith(b"# Edge servers for Marrowick\n")


async def test_downloads_and_metrics_over_http_through_envoy(
    persistence_client: callisto.Client,
    mesh_gateway: EnvoyGateway,
    api_key: str,
    tenant_key: Callable[[str], str],
) -> None:
    name = await store(persistence_client, turns())
    async with httpx.AsyncClient(
        base_url=mesh_gateway.http_url,
        headers={"authorization": f"Bearer {api_key}"},
        timeout=60,
    ) as http:
        pdf = await http.get(f"/v1/{name}:download", params={"format": "EXPORT_FORMAT_PDF"})
        assert pdf.status_code == 200, pdf.text
        assert pdf.headers["content-type"] == "application/pdf"
        assert pdf.content.startswith(b"%PDF-")
        assert "Turn 4 - Tessa (Tessaline Systems)" in pdf_text(pdf.content)

        markdown = await http.get(f"/v1/{name}:download")
        assert markdown.status_code == 200
        assert markdown.headers["content-type"] == "text/markdown; charset=utf-8"
        assert "### Turn 2 · Marco (Marrowick Motors)" in markdown.text

        exported = await http.get(f"/v1/{name}:download", params={"format": "EXPORT_FORMAT_JSON"})
        assert exported.headers["content-type"] == "application/json"
        assert exported.json()["export"]["complete"] is True

        metrics = await http.get(f"/v1/{name}:metrics")
        assert metrics.status_code == 200
        figures = metrics.json()["metrics"]
        assert figures["turns"] == 4 and figures["sentimentTrend"] == "rising"
        assert figures["outcome"] == "keyword"
        assert [hit["keyword"] for hit in figures["keywordHits"]] == ["deal"]

        bad = await http.get(f"/v1/{name}:download", params={"format": "EXPORT_FORMAT_WORD"})
        assert bad.status_code == 400

        other = await http.get(
            f"/v1/{name}:download", headers={"authorization": f"Bearer {tenant_key('initech')}"}
        )
        assert other.status_code == 404


async def test_a_simulation_run_ends_with_the_metrics_its_stored_turns_give_and_exports_them(
    orch_client: callisto.Client,
) -> None:
    start = simulation_start(
        "Tessaline Systems sells edge servers to Marrowick Motors",
        inline_agents=[
            pb.Agent(
                display_name="Tessa",
                role="Account executive",
                company="Tessaline Systems",
                system_prompt=SELLER_PROMPT,
            ),
            pb.Agent(
                display_name="Marco",
                role="Head of IT",
                company="Marrowick Motors",
                system_prompt=BUYER_PROMPT,
            ),
        ],
        max_turns=4,
        title="Simulated edge server sale",
    )
    events = [event async for event in orch_client.orchestration.run(start)]
    done = events[-1]
    assert done.WhichOneof("kind") == "done", events[-1]
    ended = [e.turn_ended for e in events if e.WhichOneof("kind") == "turn_ended"]
    assert [turn.turn for turn in ended] == [1, 2, 3, 4]
    name = done.conversation

    metrics = await orch_client.orchestration.get_conversation_metrics(name)
    assert done.done.metrics == metrics
    assert metrics.turns == 4 and metrics.outcome == done.done.reason == "max_turns"
    assert [t.sentiment for t in metrics.turn_metrics] == [turn.sentiment for turn in ended]

    _, exported = await download(orch_client, name, JSON)
    document = json.loads(exported)
    assert [m["text"] for m in document["messages"]] == [turn.text for turn in ended]
    assert json_format.ParseDict(document["metrics"], pb.ConversationMetrics()) == metrics
    _, markdown = await download(orch_client, name, MARKDOWN)
    _, pdf = await download(orch_client, name, PDF)
    text = pdf_text(pdf)
    for turn in ended:
        assert escape_block(turn.text) in markdown.decode()
        speaker = "Tessa (Tessaline Systems)" if turn.turn % 2 else "Marco (Marrowick Motors)"
        assert f"### Turn {turn.turn} · {speaker}" in markdown.decode()
        assert f"Turn {turn.turn} - {speaker}" in text
    assert SELLER_PROMPT in markdown.decode() and BUYER_PROMPT in text


async def test_downloads_past_the_render_bound_wait_their_turn_and_all_complete(
    persistence_client: callisto.Client, orch_client: callisto.Client
) -> None:
    name = await store(persistence_client, turns())
    formats = [PDF, MARKDOWN, JSON] * 3  # more than MAX_CONCURRENT_RENDERS at once
    bodies = await asyncio.gather(*(download(orch_client, name, f) for f in formats))
    assert [content_type for content_type, _ in bodies] == [
        "application/pdf",
        "text/markdown; charset=utf-8",
        "application/json",
    ] * 3
    assert len({data for content_type, data in bodies if content_type == "application/pdf"}) == 1
