"""`callisto workflow run|watch|answer` and `callisto approvals list|show|approve|reject|modify`
against the test mesh through the real Envoy, on toy_llm: a plan file of two parallel steps, a
synthesis that waits for approval and a summary streams with each line under its step, the run
prints the approval's id and the commands that answer it, another CLI call lists, shows and
approves it, and the run goes on to `done` with each step's result; a rejection and a
modification decide what the run does; `--detach` returns at once and `watch` re-attaches,
with the artifacts to download; bad plan files get a clear error, never a traceback.

(The sample's `create_report` step runs in tests/e2e/test_launcher.py on the real model:
toy_llm answers every string with the whole prompt, newlines and all, which create_report
refuses in a title.)"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.mesh.gateway import EnvoyGateway

pytestmark = pytest.mark.asyncio(loop_scope="session")

CALLISTO = str(Path(sys.executable).parent / "callisto")
# The last of the three commands the run prints for an approval.
ANSWER_LINES_END = re.compile(r"approvals modify (\S+) ")
STEP_LINE = re.compile(r"^\[([a-z0-9-]+)\] (.*)$", re.M)


@dataclass
class Ran:
    code: int
    out: str
    err: str


@dataclass
class CliMesh:
    gateway: EnvoyGateway
    key: str
    home: Path
    analyst: str
    writer: str

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "CALLISTO_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        env.pop("CALLISTO_API_KEY", None)
        return env

    def _argv(self, arguments: tuple[str, ...]) -> list[str]:
        return [CALLISTO, *arguments, "--target", self.gateway.grpc_target, "--api-key", self.key]

    async def cli(self, *arguments: str, stdin: str = "", cwd: Path | None = None) -> Ran:
        process = await asyncio.create_subprocess_exec(
            *self._argv(arguments),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env(),
            cwd=cwd,
        )
        out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 120)
        assert process.returncode is not None
        return Ran(process.returncode, out.decode(), err.decode())

    async def start(self, *arguments: str, cwd: Path | None = None) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self._argv(arguments),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env(),
            cwd=cwd,
        )

    async def client(self) -> callisto.Client:
        return await callisto.Client.connect(self.gateway.grpc_target, api_key=self.key)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cli_mesh(
    mesh_gateway: EnvoyGateway,
    tenant_key: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> CliMesh:
    suffix = uuid.uuid4().hex[:6]
    key = await asyncio.to_thread(tenant_key, f"workflow-cli-{suffix}")
    async with await callisto.Client.connect(mesh_gateway.grpc_target, api_key=key) as client:
        analyst = await client.orchestration.create_agent(
            agent_id=f"analyst-{suffix}",
            display_name="Analyst",
            system_prompt="Do the step you are given, briefly.",
            role="analyst",
        )
        writer = await client.orchestration.create_agent(
            agent_id=f"writer-{suffix}",
            display_name="Writer",
            system_prompt="Write what you are asked, briefly.",
            role="writer",
            tools=["create_report"],
        )
    home = tmp_path_factory.mktemp("workflow-cli-home")
    return CliMesh(mesh_gateway, key, home, analyst.name, writer.name)


def _plan_file(folder: Path, mesh: CliMesh, *, approval: bool = True, name: str = "plan") -> Path:
    path = folder / f"{name}.yaml"
    gate = "    requires_approval: true\n    approval_timeout: 3600s" if approval else ""
    path.write_text(
        f"""# two checks in parallel, a gated synthesis, a summary
steps:
  - id: policy
    agent: {mesh.analyst}
    instruction: Check the offer against the payment terms.
  - id: security
    agent: {mesh.analyst}
    instruction: Check the offer against the data location rules.
  - id: synthesis
    agent: {mesh.analyst}
    depends_on: [policy, security]
    instruction: Recommend what to do with the offer.
{gate}
  - id: summary
    agent: {mesh.analyst}
    depends_on: [synthesis]
    instruction: Summarise the review for the buyers.
""",
        encoding="utf-8",
    )
    return path


async def _read_until_approval(process: asyncio.subprocess.Process, seen: list[str]) -> str:
    """Reads the run's output until it prints the commands that answer its approval; returns
    the approval id."""
    assert process.stdout is not None

    async def read() -> str:
        assert process.stdout is not None
        while True:
            raw = await process.stdout.readline()
            if not raw:
                raise AssertionError("the run ended before asking for approval:\n" + "".join(seen))
            line = raw.decode()
            seen.append(line)
            found = ANSWER_LINES_END.search(line)
            if found:
                return found.group(1)

    try:
        return await asyncio.wait_for(read(), 90)
    except BaseException:
        process.kill()
        await process.wait()
        raise


async def _finish(process: asyncio.subprocess.Process, seen: list[str]) -> Ran:
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return Ran(process.returncode, "".join(seen) + out.decode(), err.decode())


def _step_lines(out: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in STEP_LINE.finditer(out)]


async def test_a_plan_file_streams_waits_for_approval_from_another_call_and_finishes(
    cli_mesh: CliMesh, tmp_path: Path
) -> None:
    plan = _plan_file(tmp_path, cli_mesh)
    process = await cli_mesh.start("workflow", "run", str(plan), "--max-parallel", "2")
    seen: list[str] = []
    approval = await _read_until_approval(process, seen)
    shown = "".join(seen)
    # Both entry steps ran before the gated one; every line of theirs carries its step.
    lines = _step_lines(shown)
    assert ("policy", "running · attempt 1 · " + cli_mesh.analyst) in [
        (s, t.split("@")[0]) for s, t in lines
    ]
    assert any(s == "security" and t.startswith("succeeded · attempt 1 · ") for s, t in lines)
    waits = "⏸ waits for approval approvals/"
    assert any(s == "synthesis" and t.startswith(waits) for s, t in lines)
    assert any(s == "synthesis" and t.startswith("  deadline: ") and "(in " in t for s, t in lines)
    assert any(s == "synthesis" and t == "  proposed output:" for s, t in lines)
    assert any(s == "synthesis" and t.startswith("  reasoning: Built on") for s, t in lines)
    assert "summary" not in {s for s, t in lines if "running" in t}
    assert f"approvals approve {approval} " in shown
    assert f"approvals reject {approval} --comment why " in shown
    assert f"approvals modify {approval} --output 'the corrected output' " in shown
    assert "(Ctrl-C stops watching; the run goes on)" in shown

    listed = await cli_mesh.cli("approvals", "list")
    assert listed.code == 0, listed.err
    assert approval in listed.out and "step synthesis" in listed.out
    assert "1 pending approval" in listed.out
    detail = await cli_mesh.cli("approvals", "show", approval)
    assert detail.code == 0, detail.err
    assert "pending" in detail.out and "proposed output:" in detail.out
    assert re.search(r"requested by agents/analyst-\w+@", detail.out), detail.out

    approved = await cli_mesh.cli(
        "approvals", "approve", approval, "--comment", "fine by me", "--reviewer", "dana"
    )
    assert approved.code == 0, approved.err
    assert approved.out.startswith(f"approved approvals/{approval} (step synthesis of ")
    assert "workflow watch conversations/" in approved.out

    ran = await _finish(process, seen)
    assert ran.code == 0, f"{ran.out}\n{ran.err}"
    assert "Traceback" not in ran.err
    lines = _step_lines(ran.out)
    assert ("synthesis", "approved (approvals/" + approval + ") by dana: fine by me") in lines
    assert any(s == "summary" and t.startswith("succeeded · attempt 1 · ") for s, t in lines)
    assert ("run", "done: completed") in [(s, t.split(" · ")[0]) for s, t in lines]
    results = ran.out[ran.out.index("\nResults\n") :]
    for step_id in ("policy", "security", "synthesis", "summary"):
        assert f"[{step_id}] succeeded · 1 attempt" in results, results
    assert "Artifacts" not in ran.out  # none was made
    conversation = re.search(r"^Conversation (conversations/\S+)$", ran.out, re.M)
    assert conversation is not None
    assert f"workflow watch {conversation.group(1)} --target " in ran.out

    decided = await cli_mesh.cli("approvals", "show", f"approvals/{approval}")
    assert re.search(r"approved by dana: fine by me", decided.out), decided.out
    assert "No pending approvals." in (await cli_mesh.cli("approvals", "list")).out


async def test_reject_fails_the_step_and_modify_replaces_its_output(
    cli_mesh: CliMesh, tmp_path: Path
) -> None:
    plan = _plan_file(tmp_path, cli_mesh)
    rejected = await cli_mesh.start("workflow", "run", str(plan))
    seen: list[str] = []
    approval = await _read_until_approval(rejected, seen)
    answer = await cli_mesh.cli("approvals", "reject", approval, "--comment", "too vague")
    assert answer.code == 0, answer.err
    ran = await _finish(rejected, seen)
    assert ran.code == 1, ran.out
    assert "[synthesis] failed" in ran.out and "too vague" in ran.out
    assert "[run] done: failed" in ran.out

    modified = await cli_mesh.start("workflow", "run", str(plan))
    seen = []
    approval = await _read_until_approval(modified, seen)
    new_output = tmp_path / "mine.txt"
    new_output.write_text("Negotiate: net 60 and EU-only data first.\n", encoding="utf-8")
    answer = await cli_mesh.cli(
        "approvals", "modify", approval, "--output-file", str(new_output), "--reviewer", "lee"
    )
    assert answer.code == 0, answer.err
    assert answer.out.startswith(f"modified approvals/{approval} ")
    ran = await _finish(modified, seen)
    assert ran.code == 0, ran.out
    assert "[synthesis]   new output: Negotiate: net 60 and EU-only data first." in ran.out
    assert "[synthesis]   Negotiate: net 60 and EU-only data first." in ran.out  # its result
    # Answered already: refused, clearly.
    again = await cli_mesh.cli("approvals", "approve", approval)
    assert again.code == 2 and "approve failed: " in again.err and "Traceback" not in again.err
    missing = await cli_mesh.cli("approvals", "modify", approval)
    assert missing.code == 2 and "--output TEXT or --output-file FILE" in missing.err


async def test_detach_returns_with_the_conversation_and_watch_reattaches(
    cli_mesh: CliMesh, tmp_path: Path
) -> None:
    plan = _plan_file(tmp_path, cli_mesh, approval=False)
    detached = await cli_mesh.cli("workflow", "run", str(plan), "--detach")
    assert detached.code == 0, detached.err
    found = re.search(r"^Conversation (conversations/\S+)$", detached.out, re.M)
    assert found is not None, detached.out
    assert "done:" not in detached.out
    conversation = found.group(1)
    assert f"workflow watch {conversation} " in detached.out
    watched = await cli_mesh.cli("workflow", "watch", conversation)
    assert watched.code == 0, watched.out
    assert "[run] plan (given): 4 steps, in order [policy, security] → [synthesis] → [summary]" in (
        watched.out
    )
    assert "[run] done: completed" in watched.out and "\nResults\n" in watched.out
    # The artifacts of the conversation, each with the command that downloads it.
    async with await cli_mesh.client() as client:
        stored = await client.persistence.create_artifact(
            conversation, display_name="review.csv", content_type="text/csv", content=b"a,b\n1,2\n"
        )
    again = await cli_mesh.cli("workflow", "watch", conversation)
    assert "Artifacts (download them):" in again.out, again.out
    download = re.search(r"^  (\S+) artifacts download (\S+) (.*)$", again.out, re.M)
    assert download is not None and download.group(2) == stored.name, again.out
    fetched = await cli_mesh.cli("artifacts", "download", stored.name, cwd=tmp_path)
    assert fetched.code == 0 and (tmp_path / "review.csv").read_bytes() == b"a,b\n1,2\n"
    as_json = await cli_mesh.cli("workflow", "watch", conversation, "--json")
    kinds = [line for line in as_json.out.splitlines() if line.startswith("{")]
    assert kinds and '"done"' in kinds[-1]
    async with await cli_mesh.client() as client:
        assert (await client.persistence.get_conversation(conversation)).title == "Workflow plan"
    unknown = await cli_mesh.cli("workflow", "watch", "conversations/nope-" + uuid.uuid4().hex)
    assert unknown.code == 2 and "workflow watch failed: " in unknown.err
    assert "Traceback" not in unknown.err


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("steps:\n  - id: a\n    agent: [unclosed\n", "is not valid YAML (line "),
        ("- id: a\n", "must hold a mapping with `steps:`"),
        ("", "must hold a mapping with `steps:` (a list of steps), not nothing"),
        ("title: no steps\n", "has no `steps:`"),
        ("steps:\n  - id: a\n    instructions: typo\n", "not a workflow plan"),
        ("steps:\n  - id: a\n    depends_on: b\n", "not a workflow plan"),
    ],
)
async def test_a_bad_plan_file_is_a_clear_error_not_a_traceback(
    cli_mesh: CliMesh, tmp_path: Path, content: str, says: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    ran = await cli_mesh.cli("workflow", "run", str(path))
    assert ran.code == 2, ran
    assert ran.err.startswith(f"workflow run: {path}"), ran.err
    assert says in ran.err, ran.err
    assert "Traceback" not in ran.err + ran.out


async def test_a_plan_the_service_refuses_names_each_problem(
    cli_mesh: CliMesh, tmp_path: Path
) -> None:
    path = tmp_path / "cycle.yaml"
    path.write_text(
        f"""steps:
  - id: a
    agent: {cli_mesh.analyst}
    instruction: First
    depends_on: [b]
  - id: b
    agent: agents/nobody-here
    instruction: Second
    depends_on: [a]
""",
        encoding="utf-8",
    )
    ran = await cli_mesh.cli("workflow", "run", str(path))
    assert ran.code == 2, ran
    assert ran.err.startswith("workflow run failed: the service refused it (invalid argument):\n")
    assert re.search(r"^  start\.plan\.steps\[1\]\.agent: ", ran.err, re.M), ran.err
    cycle = r"^  start\.plan\.steps\[\d\]\.depends_on\[0\]: .*cycle"
    assert re.search(cycle, ran.err, re.M), ran.err
    assert "Traceback" not in ran.err
    missing = await cli_mesh.cli("workflow", "run", str(tmp_path / "absent.yaml"))
    assert missing.code == 2 and "cannot read " in missing.err
    neither = await cli_mesh.cli("workflow", "run")
    assert neither.code == 2 and "give a plan file or --task TEXT" in neither.err


async def test_answer_sends_a_turn_and_says_how_to_follow(cli_mesh: CliMesh) -> None:
    unknown = "conversations/nope-" + uuid.uuid4().hex
    ran = await cli_mesh.cli("workflow", "answer", unknown, "use the 2026 policy")
    assert ran.code == 2 and ran.err.startswith("workflow answer failed: "), ran.err
    assert "Traceback" not in ran.err
    # The planner's question itself: awaiting_input without an approval id.
    from callisto.cli.simulate import new_console
    from callisto.cli.workflow import WorkflowView

    console = new_console()
    with console.capture() as captured:
        view = WorkflowView(console, conversation="conversations/c1", flags="--tenant t")
        view.show(
            pb.ConversationEvent(
                conversation="conversations/c1",
                awaiting_input=pb.AwaitingInput(prompt="Which supplier's offer?"),
            )
        )
    text = captured.get()
    assert "[run] ? Which supplier's offer?" in text
    assert "workflow answer conversations/c1 'your answer' --tenant t" in text
