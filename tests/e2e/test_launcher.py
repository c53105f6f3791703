"""`callisto up` as a new user runs it: the mesh comes up, the printed examples work as printed,
and Ctrl-C / SIGTERM leaves no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pypdf import PdfReader

from callisto.mesh.processes import free_port


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Launcher:
    def __init__(self, home: Path, *extra: str) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.output = home / "up.out"
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "callisto"), "up",
                "--home", str(home),
                "--gateway-port", str(free_port()),
                "--admin-port", str(free_port()),
                "--redis-port", str(free_port()),
                *extra,
            ],
            stdout=self.output.open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def banner(self, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output.read_text()
            if "Press Ctrl-C" in text:
                return text
            if self.process.poll() is not None:
                pytest.fail(f"callisto up exited:\n{text}")
            time.sleep(0.2)
        pytest.fail(f"no banner within {timeout} s:\n{self.output.read_text()}")


@pytest.fixture()
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    started = Launcher(tmp_path / "home")
    yield started
    if started.process.poll() is None:
        started.process.kill()
        started.process.wait()


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


def test_callisto_up_serves_prints_working_examples_and_stops_cleanly(launcher: Launcher) -> None:
    banner = launcher.banner()
    key = re.search(r"API key\s+(cal_\S+)", banner)
    assert key is not None
    examples = _examples(banner)
    assert any("grpcurl" in c and c.endswith(" list") for c in examples)
    assert any("llm:generate" in c for c in examples)
    assert any(c.startswith("curl") for c in examples)
    assert any(" chat " in c and "conference-assistant" in c for c in examples)
    assert any("conversations:run" in c for c in examples)
    assert any("OrchestrationService/RunConversation" in c for c in examples)
    assert re.search(r"✓ agents\s+agents/conference-assistant, agents/sales-assistant", banner)
    assert any(" simulate " in c for c in examples)
    simulated: re.Match[str] | None = None
    for command in examples:
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

    state = json.loads((launcher.home / "mesh.json").read_text())
    children = list(state["pids"].values())
    assert len(children) >= 3 and all(_pid_alive(pid) for pid in children)

    launcher.process.send_signal(signal.SIGTERM)
    assert launcher.process.wait(60) == 0
    deadline = time.monotonic() + 10
    while any(_pid_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _pid_alive(pid)], "children outlived the launcher"
    assert not (launcher.home / "mesh.json").exists()


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
    while any(_pid_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _pid_alive(pid)], "children outlived the launcher"
