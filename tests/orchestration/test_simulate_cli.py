"""`callisto simulate` and `callisto conversations list/replay/export` against the test mesh
through the real Envoy, on toy_llm, over a tenant holding the three sample companies'
documents: suggested agents, every turn with its speaker and sentiment (as stored), the end's
reason, the metrics and the export commands; a human turn read from stdin; Ctrl-C cancelling
the run; listing filtered by company, outcome and date; a replay that prints the same turns;
exports that open (the PDF with pypdf) and hold the turns."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pypdf import PdfReader

import callisto
from callisto.api.common.v1 import common_pb2
from callisto.api.persistence.v1 import persistence_pb2
from callisto.cli.conversation_view import sentiment_label
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.samples import SIMULATION_TENANT, ingest_samples

CALLISTO = str(Path(sys.executable).parent / "callisto")
SCENARIO = "Tessaline Systems sells edge servers to Marrowick Motor Works"
TURN_HEADER = re.compile(r"^Turn (\d+) · (.+)$")


@dataclass
class Ran:
    """One CLI run: exit status and output."""

    code: int
    out: str
    err: str


@dataclass
class Simulated:
    """A finished `callisto simulate` run and what it stored."""

    ran: Ran
    conversation: persistence_pb2.Conversation
    messages: list[persistence_pb2.Message]


@dataclass
class SimMesh:
    gateway: EnvoyGateway
    key: str
    home: Path
    tag: str

    async def cli(self, *arguments: str, stdin: str | None = None, cwd: Path | None = None) -> Ran:
        env = {**os.environ, "CALLISTO_HOME": str(self.home), "COLUMNS": "200"}
        env.pop("CALLISTO_API_KEY", None)
        process = await asyncio.create_subprocess_exec(
            CALLISTO,
            *arguments,
            "--target",
            self.gateway.grpc_target,
            "--api-key",
            self.key,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        out, err = await asyncio.wait_for(
            process.communicate(stdin.encode() if stdin is not None else b""), 280
        )
        assert process.returncode is not None
        return Ran(process.returncode, out.decode(), err.decode())

    async def simulate(self, *arguments: str, stdin: str | None = None) -> Simulated:
        ran = await self.cli("simulate", SCENARIO, "--tag", self.tag, *arguments, stdin=stdin)
        assert ran.code == 0, f"{ran.out}\n{ran.err}"
        name = conversation_of(ran.out)
        async with await callisto.Client.connect(
            self.gateway.grpc_target, api_key=self.key
        ) as client:
            conversation = await client.persistence.get_conversation(name)
            messages = [m async for m in client.persistence.list_messages(name)]
        return Simulated(ran, conversation, messages)


def conversation_of(out: str) -> str:
    found = re.findall(r"^Conversation (conversations/\S+)\. Replay or export it:$", out, re.M)
    assert len(found) == 1, out
    return str(found[0])


def turn_blocks(out: str) -> list[list[str]]:
    """Each turn as printed: its header line up to its sentiment line (or, for a turn that was
    never taken, up to the blank line that ends it)."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in out.splitlines():
        if TURN_HEADER.match(line):
            current = [line]
            blocks.append(current)
        elif current is not None:
            if not line:
                current = None
                continue
            current.append(line)
            if line.startswith("  sentiment "):
                current = None
    return blocks


def taken(blocks: list[list[str]]) -> list[list[str]]:
    """The blocks of turns that were taken (they end with their sentiment)."""
    return [b for b in blocks if b[-1].startswith("  sentiment ")]


def shown_sentiment(sentiment: common_pb2.Sentiment) -> str:
    return f"  sentiment {sentiment.score:+.2f} {sentiment_label(sentiment)}"


def turns_of(messages: list[persistence_pb2.Message]) -> list[persistence_pb2.Message]:
    return [m for m in messages if m.role in (common_pb2.ROLE_ASSISTANT, common_pb2.ROLE_USER)]


def _metadata(message: persistence_pb2.Message) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(message.metadata)


def assert_turns_match_storage(simulated: Simulated) -> None:
    """Every stored turn is printed once, in order, under its speaker, with its text and its
    stored sentiment."""
    blocks = taken(turn_blocks(simulated.ran.out))
    stored = turns_of(simulated.messages)
    assert len(blocks) == len(stored), simulated.ran.out
    people = {p.id: p for p in simulated.conversation.participants}
    for block, message in zip(blocks, stored, strict=True):
        header = TURN_HEADER.match(block[0])
        assert header is not None
        number, speaker = int(header.group(1)), header.group(2)
        assert number == int(_metadata(message)["turn"])
        participant = people[message.author]
        assert speaker.startswith(participant.display_name), (speaker, participant)
        if participant.company:
            assert participant.company in speaker
        assert block[-1].startswith(shown_sentiment(message.sentiment)), block
        body = " ".join(line.strip() for line in block[1:-1])
        assert " ".join(message.text.split()) in " ".join(body.split()), (block, message.text)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sim_mesh(
    mesh_gateway: EnvoyGateway,
    tenant_key: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> SimMesh:
    """A fresh tenant holding the three sample companies' documents (the sales-simulation
    sample tenant's contents)."""
    suffix = uuid.uuid4().hex[:6]
    key = await asyncio.to_thread(tenant_key, f"simulate-cli-{suffix}")
    report = await ingest_samples(mesh_gateway.grpc_target, {SIMULATION_TENANT: key})
    assert not report.failed, report.failed
    return SimMesh(mesh_gateway, key, tmp_path_factory.mktemp("simulate-home"), f"cli-{suffix}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def two_agents(sim_mesh: SimMesh) -> Simulated:
    return await sim_mesh.simulate("--agents", "2", "--max-turns", "4")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def with_human(sim_mesh: SimMesh) -> Simulated:
    # The first human turn says something; the second ends the conversation.
    return await sim_mesh.simulate(
        "--agents", "2", "--participate", "--max-turns", "10",
        stdin="We need net 60 payment terms and EU-only data.\n/end\n",
    )  # fmt: skip


async def test_simulate_with_two_agents_prints_agents_turns_sentiment_reason_metrics_and_exports(
    two_agents: Simulated,
) -> None:
    out = two_agents.ran.out
    agents = [
        p
        for p in two_agents.conversation.participants
        if p.kind == persistence_pb2.PARTICIPANT_KIND_AGENT
    ]
    assert len(agents) == 2
    assert re.search(r"^2 agents suggested \(source: (model|repaired|retried|fallback)", out, re.M)
    table = out[: out.index("Turn 1 · ")]
    for agent in agents:
        assert agent.display_name in table and agent.company in table and agent.role in table
    assert_turns_match_storage(two_agents)
    assert len(turn_blocks(out)) == 4
    assert "Done: max_turns — 4 turns" in out
    metrics = out[out.index("Metrics") :]
    figures = [line.strip(" │|").split("│")[0].strip() for line in metrics.splitlines()]
    for figure in ("turns", "sentiment", "trend", "tokens", "cost", "keyword hits", "retrieval"):
        assert figure in figures, figure
    assert "4 (4 by agents)" in metrics
    name = two_agents.conversation.name
    short = name.removeprefix("conversations/")
    assert f"callisto conversations replay {name}" in out
    assert f"callisto conversations export {name} --format pdf -o {short}.pdf" in out


async def test_printed_metrics_are_the_conversations_metrics(
    sim_mesh: SimMesh, two_agents: Simulated
) -> None:
    async with await callisto.Client.connect(
        sim_mesh.gateway.grpc_target, api_key=sim_mesh.key
    ) as client:
        metrics = await client.orchestration.get_conversation_metrics(two_agents.conversation.name)
    out = two_agents.ran.out
    assert metrics.outcome == "max_turns" and metrics.turns == 4
    assert (
        f"mean {metrics.mean_sentiment:+.2f} · min {metrics.min_sentiment:+.2f} · "
        f"last {metrics.last_sentiment:+.2f}"
    ) in out
    assert f"{metrics.usage.total_tokens} (prompt {metrics.usage.prompt_tokens}," in out
    assert (
        f"{metrics.retrieval_turns} of {metrics.turns} turns, {metrics.passages_retrieved} passages"
    ) in out


async def test_simulate_with_three_agents_gives_each_a_turn_in_order(sim_mesh: SimMesh) -> None:
    simulated = await sim_mesh.simulate("--agents", "3", "--max-turns", "3")
    out = simulated.ran.out
    assert re.search(r"^3 agents suggested", out, re.M)
    assert_turns_match_storage(simulated)
    agents = [p.id for p in simulated.conversation.participants]
    assert len(agents) == 3
    # Round robin: the three agents speak once each, in the order they were suggested.
    assert [m.author for m in turns_of(simulated.messages)] == agents
    assert "Done: max_turns — 3 turns" in out


async def test_participate_takes_the_human_turn_from_stdin_and_an_end_line_ends_it(
    with_human: Simulated,
) -> None:
    out = with_human.ran.out
    humans = [
        p
        for p in with_human.conversation.participants
        if p.kind == persistence_pb2.PARTICIPANT_KIND_HUMAN
    ]
    assert len(humans) == 1
    human = humans[0]
    said = [m for m in turns_of(with_human.messages) if m.author == human.id]
    assert [m.text for m in said] == ["We need net 60 payment terms and EU-only data."]
    assert said[0].role == common_pb2.ROLE_USER
    assert_turns_match_storage(with_human)
    human_blocks = [b for b in taken(turn_blocks(out)) if "[human]" in b[0]]
    assert len(human_blocks) == 1 and "EU-only data" in " ".join(human_blocks[0])
    # Asked twice: the answered turn, then the one the `/end` line ended.
    assert out.count("… waiting for ") == 2
    assert "Done: human_ended" in out
    assert "1 by the human" in out


async def test_ctrl_c_cancels_the_simulation_cleanly(sim_mesh: SimMesh) -> None:
    env = {**os.environ, "CALLISTO_HOME": str(sim_mesh.home), "COLUMNS": "200"}
    process = await asyncio.create_subprocess_exec(
        CALLISTO, "simulate", SCENARIO, "--agents", "2", "--max-turns", "40",
        "--tag", sim_mesh.tag, "--model-extras", json.dumps({"delay_ms": 150}),
        "--target", sim_mesh.gateway.grpc_target, "--api-key", sim_mesh.key,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    shown: list[str] = []
    async with asyncio.timeout(240):
        while not any(TURN_HEADER.match(line) for line in shown):
            line = (await process.stdout.readline()).decode()
            assert line, "".join(shown)
            shown.append(line.rstrip("\n"))
        process.send_signal(signal.SIGINT)
        rest, err = await process.communicate()
    out = "\n".join(shown) + rest.decode()
    assert process.returncode == 0, err.decode()
    assert "(cancelling…" in out and "Done: cancelled" in out
    name = conversation_of(out)
    async with await callisto.Client.connect(
        sim_mesh.gateway.grpc_target, api_key=sim_mesh.key
    ) as client:
        stored = await client.persistence.get_conversation(name)
    assert stored.status == persistence_pb2.CONVERSATION_STATUS_CANCELLED


async def test_replay_prints_the_same_turns_reason_and_metrics(
    sim_mesh: SimMesh, with_human: Simulated
) -> None:
    replayed = await sim_mesh.cli("conversations", "replay", with_human.conversation.name)
    assert replayed.code == 0, replayed.err
    live = with_human.ran.out
    assert turn_blocks(replayed.out) == turn_blocks(live)
    done = live[live.index("Done: ") : live.index("Conversation conversations/")].rstrip()
    assert done in replayed.out


def _listed(ran: Ran) -> list[dict[str, Any]]:
    assert ran.code == 0, ran.err
    return [json.loads(line) for line in ran.out.splitlines()]


async def test_conversations_list_filters_by_company_outcome_tag_and_date(
    sim_mesh: SimMesh, two_agents: Simulated, with_human: Simulated
) -> None:
    mine = ("--json", "--tag", sim_mesh.tag)
    everything = _listed(await sim_mesh.cli("conversations", "list", *mine, "--simulations"))
    names = [row["conversation"] for row in everything]
    assert two_agents.conversation.name in names and with_human.conversation.name in names
    # Newest first.
    assert names.index(with_human.conversation.name) < names.index(two_agents.conversation.name)

    by_outcome = _listed(
        await sim_mesh.cli("conversations", "list", *mine, "--outcome", "human_ended")
    )
    assert [row["conversation"] for row in by_outcome] == [with_human.conversation.name]
    assert by_outcome[0]["outcome"] == "human_ended"
    max_turns = _listed(
        await sim_mesh.cli("conversations", "list", *mine, "--outcome", "max_turns")
    )
    assert two_agents.conversation.name in [row["conversation"] for row in max_turns]
    assert all(row["outcome"] == "max_turns" for row in max_turns)

    company = two_agents.conversation.participants[0].company
    assert company
    by_company = _listed(await sim_mesh.cli("conversations", "list", *mine, "--company", company))
    assert two_agents.conversation.name in [row["conversation"] for row in by_company]
    assert all(company in row["companies"] for row in by_company)
    nobody = _listed(
        await sim_mesh.cli("conversations", "list", *mine, "--company", "Nobody Holdings")
    )
    assert nobody == []

    created = two_agents.conversation.create_time.ToDatetime(UTC)
    day = created.date().isoformat()
    same_day = _listed(
        await sim_mesh.cli("conversations", "list", *mine, "--since", day, "--until", day)
    )
    assert two_agents.conversation.name in [row["conversation"] for row in same_day]
    later = (created + timedelta(days=1)).date().isoformat()
    assert _listed(await sim_mesh.cli("conversations", "list", *mine, "--since", later)) == []
    earlier = (created - timedelta(days=1)).date().isoformat()
    assert _listed(await sim_mesh.cli("conversations", "list", *mine, "--until", earlier)) == []

    table = await sim_mesh.cli("conversations", "list", "--tag", sim_mesh.tag)
    assert table.code == 0 and two_agents.conversation.name.removeprefix("conversations/") in (
        table.out
    )


async def test_export_writes_a_pdf_that_opens_and_holds_the_turns(
    sim_mesh: SimMesh, two_agents: Simulated, tmp_path: Path
) -> None:
    target = tmp_path / "simulation.pdf"
    ran = await sim_mesh.cli(
        "conversations", "export", two_agents.conversation.name, "--format", "pdf", "-o",
        str(target),
    )  # fmt: skip
    assert ran.code == 0, ran.err
    assert f"wrote {target}" in ran.out
    reader = PdfReader(io.BytesIO(target.read_bytes()))
    text = " ".join(" ".join(page.extract_text().split()) for page in reader.pages)
    for participant in two_agents.conversation.participants:
        assert participant.display_name in text
    for message in turns_of(two_agents.messages):
        opening = " ".join(message.text.split()[:4])
        assert opening in text, opening


async def test_export_markdown_and_json_default_to_the_conversation_id(
    sim_mesh: SimMesh, two_agents: Simulated, tmp_path: Path
) -> None:
    name = two_agents.conversation.name
    short = name.removeprefix("conversations/")
    for form in ("md", "json"):
        ran = await sim_mesh.cli("conversations", "export", name, "--format", form, cwd=tmp_path)
        assert ran.code == 0, ran.err
        assert (tmp_path / f"{short}.{form}").exists()
    markdown = (tmp_path / f"{short}.md").read_text(encoding="utf-8")
    for message in turns_of(two_agents.messages):
        assert " ".join(message.text.split()[:4]) in " ".join(markdown.split())
    json.loads((tmp_path / f"{short}.json").read_text(encoding="utf-8"))


async def test_export_without_a_conversation_takes_the_newest_simulation(
    sim_mesh: SimMesh, two_agents: Simulated, tmp_path: Path
) -> None:
    newest = _listed(await sim_mesh.cli("conversations", "list", "--json", "--simulations"))[0]
    ran = await sim_mesh.cli("conversations", "export", "--format", "md", cwd=tmp_path)
    assert ran.code == 0, ran.err
    short = str(newest["conversation"]).removeprefix("conversations/")
    assert (tmp_path / f"{short}.md").exists()


async def test_unknown_conversation_and_bad_dates_are_refused(sim_mesh: SimMesh) -> None:
    missing = await sim_mesh.cli(
        "conversations", "replay", f"conversations/none-{uuid.uuid4().hex}"
    )
    assert missing.code == 2 and "NOT_FOUND" in missing.err
    bad = await sim_mesh.cli("conversations", "list", "--since", "last tuesday")
    assert bad.code == 2 and "not a date" in bad.err
    now = datetime.now(UTC).date().isoformat()
    backwards = await sim_mesh.cli("conversations", "list", "--since", now, "--until", "2000-01-01")
    assert backwards.code == 2 and "must come after --since" in backwards.err


@pytest.mark.llm
async def test_simulate_with_the_real_model_streams_scored_turns_to_the_end(
    sim_mesh: SimMesh,
) -> None:
    # The banner's example, shortened: SmolLM2 speaks every agent's turn.
    simulated = await sim_mesh.simulate(
        "--agents", "2", "--max-turns", "2", "--model", "models/llm", "--turn-tokens", "48"
    )
    out = simulated.ran.out
    print(out)
    assert_turns_match_storage(simulated)
    stored = turns_of(simulated.messages)
    assert len(stored) == 2 and all(m.text.strip() for m in stored)
    assert {_metadata(m)["model"] for m in stored} == {"models/llm"}
    assert "Done: max_turns — 2 turns" in out


async def test_an_unanswered_human_turn_is_skipped_after_its_timeout(sim_mesh: SimMesh) -> None:
    env = {**os.environ, "CALLISTO_HOME": str(sim_mesh.home), "COLUMNS": "200"}
    process = await asyncio.create_subprocess_exec(
        CALLISTO, "simulate", SCENARIO, "--agents", "2", "--participate", "--max-turns", "4",
        "--human-timeout", "1", "--tag", sim_mesh.tag,
        "--target", sim_mesh.gateway.grpc_target, "--api-key", sim_mesh.key,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    # stdin stays open and silent: the human never answers.
    assert process.stdout is not None and process.stderr is not None
    async with asyncio.timeout(280):
        out = await process.stdout.read()
        err = await process.stderr.read()
        await process.wait()
    assert process.stdin is not None
    process.stdin.close()
    text = out.decode()
    assert process.returncode == 0, err.decode()
    assert "went by without your answer" in text
    assert "Done: max_turns" in text
    name = conversation_of(text)
    async with await callisto.Client.connect(
        sim_mesh.gateway.grpc_target, api_key=sim_mesh.key
    ) as client:
        stored = await client.persistence.get_conversation(name)
        messages = turns_of([m async for m in client.persistence.list_messages(name)])
    human = [p.id for p in stored.participants if p.kind == persistence_pb2.PARTICIPANT_KIND_HUMAN]
    assert len(human) == 1
    # No human turn was stored, and the agents went on.
    assert messages and all(m.author != human[0] for m in messages)
    numbers = [int(_metadata(m)["turn"]) for m in messages]
    assert numbers == list(range(1, len(messages) + 1))
