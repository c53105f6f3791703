"""`callisto up` as a new user runs it: the mesh comes up, the printed examples work as printed
(the sample workflow among them: run, approved from another call, its PDF downloaded, the local
receiver's deliveries signed and acted on once each), and Ctrl-C / SIGTERM leaves no process
behind."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from launcher_support import Launcher, pid_alive
from node_support import EmbeddedMesh
from pypdf import PdfReader


def _examples(banner: str) -> list[str]:
    """The copy-paste commands of the banner, continuation lines joined."""
    commands, current = [], ""
    for raw in banner.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or not (current or line.startswith(("/", "curl"))):
            continue
        current += line.removesuffix("\\")
        if not line.endswith("\\"):
            commands.append(current)
            current = ""
    return commands


WORKFLOW_COMMANDS = (" workflow run ", " approvals ", " artifacts download ")


class _Lines:
    """A child's output lines, read on a thread so waiting for one can time out."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def until(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            found = pattern.search(line)
            if found:
                return found
        pytest.fail(f"no {pattern.pattern!r} within {timeout} s:\n{''.join(self.seen)}")

    def rest(self, timeout: float) -> str:
        self._thread.join(timeout)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.seen.append(line)
        return "".join(self.seen)


def _shell(command: str, cwd: Path | None = None, timeout: float = 120) -> str:
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=timeout, check=False,
        cwd=cwd,
    )  # fmt: skip
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _run_sample_workflow(commands: list[str], banner: str, workdir: Path) -> dict[str, float]:
    """The banner's workflow example as a user follows it: the run streams in one terminal,
    its approval is listed and approved from another, it finishes, its PDF downloads and opens,
    and the local receiver holds one verified, acted-on delivery per event and key (run.done
    among them). Returns its timings."""
    run = next(c for c in commands if " workflow run " in c)
    listing = next(c for c in commands if " approvals list " in c)
    approve = next(c for c in commands if " approvals approve APPROVAL_ID " in c)
    download = next(c for c in commands if " artifacts download ARTIFACT_NAME " in c)
    log = re.search(r"^\s*tail -n 5 (\S+webhooks\.jsonl)$", banner, re.M)
    assert log is not None, banner
    started = time.monotonic()
    process = subprocess.Popen(
        ["bash", "-c", run], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=workdir,
    )  # fmt: skip
    try:
        lines = _Lines(process)
        asked = lines.until(re.compile(r"approvals approve (\S+) "), 600)
        approval = asked.group(1)
        waited = time.monotonic() - started
        assert approval in _shell(listing)
        answered = time.monotonic()
        approved = _shell(approve.replace("APPROVAL_ID", approval))
        assert approved.startswith(f"approved approvals/{approval} "), approved
        assert process.wait(600) == 0, lines.rest(5)
        finished = time.monotonic()
        out = lines.rest(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # The two checks ran at the same time: both started before either finished.
    steps = re.findall(r"^\[(policy-check|security-check)\] (running|succeeded)", out, re.M)
    assert steps[:2] == [("policy-check", "running"), ("security-check", "running")] or steps[
        :2
    ] == [("security-check", "running"), ("policy-check", "running")], out
    assert re.search(r"^\[recommendation\] ⏸ waits for approval approvals/", out, re.M), out
    assert re.search(r"^\[recommendation\] approved \(approvals/", out, re.M), out
    assert re.search(r"^\[notify\] · send_webhook\(.*→ webhooks/sample-receiver", out, re.M), out
    assert "[run] done: completed" in out, out
    artifact = re.search(r"artifacts download (\S+/artifacts/\S+) ", out)
    assert artifact is not None, out
    wrote = _shell(download.replace("ARTIFACT_NAME", artifact.group(1)), cwd=workdir)
    written = re.search(r"wrote (\S+) \(application/pdf, ", wrote)
    assert written is not None, wrote
    pages = PdfReader(workdir / written.group(1)).pages
    assert pages and "".join(page.extract_text() for page in pages).strip()

    # run.done goes out after the run's end: give its delivery a moment.
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = Path(log.group(1)).read_text() if Path(log.group(1)).exists() else ""
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        if any(r["event"] == "run.done" for r in records):
            break
        time.sleep(0.2)
    assert records and all(r["verified"] for r in records), records
    acted: dict[tuple[str, str], int] = {}
    for record in records:
        key = (record["event"], record["idempotency_key"])
        acted[key] = acted.get(key, 0) + int(record["acted"])
    assert all(count == 1 for count in acted.values()), acted
    events = {event for event, _ in acted}
    assert {"approval.requested", "workflow.action", "run.done"} <= events, events
    return {
        "until the approval was asked (s)": waited,
        "from the approval to done (s)": finished - answered,
        "whole run (s)": finished - started,
    }


@pytest.mark.timeout(1200)
def test_callisto_up_serves_and_prints_working_examples(
    embedded_mesh: EmbeddedMesh, tmp_path: Path
) -> None:
    launcher, banner = embedded_mesh.launcher, embedded_mesh.banner
    key = re.search(r"API key\s+(cal_\S+)", banner)
    assert key is not None
    # The web console on the gateway's own origin (its browser tests: test_console.py).
    assert re.search(r"^\s*console\s+http://\S+/console/\s", banner, re.M), banner
    examples = _examples(banner)
    assert any("grpcurl" in c and c.endswith(" list") for c in examples)
    assert any("llm:generate" in c for c in examples)
    assert any(c.startswith("curl") for c in examples)
    assert any(" chat " in c and "conference-assistant" in c for c in examples)
    assert any("conversations:run" in c for c in examples)
    assert any("OrchestrationService/RunConversation" in c for c in examples)
    assert re.search(r"✓ agents\s+agents/conference-assistant, agents/sales-assistant", banner)
    assert any(" simulate " in c for c in examples)
    assert re.search(r"✓ workflow\s+agents/policy-analyst, agents/security-analyst", banner)
    workflow = [c for c in examples if any(w in c for w in WORKFLOW_COMMANDS)]
    assert len(workflow) == 4, workflow
    simulated: re.Match[str] | None = None
    for command in examples:
        if command in workflow:
            continue
        following = "events:subscribe" in command
        result = subprocess.run(
            ["bash", "-c", f"timeout 3 {command}" if following else command],
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        out = result.stdout
        if following:
            assert result.returncode == 124, result.stderr  # still following live when cut
            assert '"message.created"' in out, command
            continue
        assert result.returncode == 0, f"{command}\n{out}\n{result.stderr}"
        assert '"code"' not in out, f"{command}\n{out}"  # no google.rpc.Status error body
        if " chat " in command and "conference-assistant" in command:
            # A cited answer about the cold-chain session, its tool calls shown as they ran.
            assert "(done: completed" in out and "Sources:" in out, out
            assert "· search_entities(" in out and "Cold-Chain Visibility" in out, out
        elif " chat " in command:
            assert "(done: completed" in out and "price-list-2026" in out, out
        elif "conversations:run" in command or "RunConversation" in command:
            # The same run over SSE or gRPC: events up to done, the cold-chain session cited.
            assert '"done"' in out and "Cold-Chain Visibility" in out, out
            if command.startswith("curl"):
                assert out.lstrip().startswith("data:"), out
        elif " simulate " in command:
            # Suggested agents talk it through, each turn scored, to the turn limit.
            assert "Done: max_turns" in out and " sentiment " in out, out
            simulated = re.search(r"conversations/[a-z0-9-]+", out)
            assert simulated is not None, out
        elif " conversations list " in command:
            assert simulated is not None and simulated.group(0).split("/")[1] in out, out
        elif " conversations replay " in command:
            assert "Done: max_turns" in out, out
        elif " conversations export " in command:
            written = re.search(r"wrote (\S+\.pdf)", out)
            assert written is not None, out
            pages = PdfReader(written.group(1)).pages
            assert "Turn 1" in "".join(page.extract_text() for page in pages)
        elif "keys create" in command:
            assert "api key (shown once): cal_" in out
        elif " ingest " in command:
            assert "failed 0" in out, out
        elif "describe" in command:
            assert "rpc SubscribeEvents" in out
        elif command.endswith(" list"):
            assert "callisto.generation.v1.GenerationService" in out
        elif "generate" in command.lower():
            # A real answer streamed token by token, ended by the terminal result.
            assert out.count('"delta"') >= 2 and '"result"' in out, out
        elif "documents:search" in command or "RetrievalService/Search" in command:
            assert "price-list-2026" in out and '"citation"' in out, out
        elif "entities:search" in command:
            assert "exhibitor-003" in out, out
        else:
            json.loads(out)

    timings = _run_sample_workflow(workflow, banner, tmp_path)
    print("sample workflow:", ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

    children = launcher.children()
    assert len(children) >= 3 and all(pid_alive(pid) for pid in children.values())
    assert "webhook-receiver" in children
    # The mesh's fixture stops it with SIGTERM once the whole package is done, and checks that
    # nothing outlives it (stopping cleanly is tested below on a mesh of its own).


def test_sigterm_stops_every_child_and_removes_the_mesh_state(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path / "home", "--no-models")
    try:
        launcher.banner()
        assert all(pid_alive(pid) for pid in launcher.children().values())
        launcher.stop_cleanly()
    finally:
        launcher.kill()


def test_a_second_start_reuses_the_demo_key_and_data(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = Launcher(home, "--no-models")
    key = re.search(r"API key\s+(cal_\S+)", first.banner())
    first.process.send_signal(signal.SIGINT)
    assert first.process.wait(60) == 0
    # Only the owner can ever read a saved key: the folder is private from its creation.
    assert (home / "keys").stat().st_mode & 0o777 == 0o700
    saved = list((home / "keys").glob("*.key"))
    assert saved and all(path.stat().st_mode & 0o777 == 0o600 for path in saved)
    (home / "up.out").unlink()
    second = Launcher(home, "--no-models")
    try:
        banner = second.banner()
        assert key is not None and key.group(1) in banner
    finally:
        second.process.send_signal(signal.SIGTERM)
        second.process.wait(60)


def test_children_die_with_a_killed_launcher(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path / "home", "--no-models")
    launcher.banner()
    children = list(json.loads((launcher.home / "mesh.json").read_text())["pids"].values())
    launcher.process.kill()  # SIGKILL: the launcher gets no chance to clean up
    launcher.process.wait()
    deadline = time.monotonic() + 15
    while any(pid_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if pid_alive(pid)], "children outlived the launcher"
