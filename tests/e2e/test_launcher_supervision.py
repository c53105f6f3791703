"""The launcher heals its mesh: the restart policy's arithmetic (backoff, reset, crash loop) on
its own; then `callisto up --no-models --replicas 2` as a user runs it, where both persistence
replicas answer through Envoy, a `kill -9` of one replica, of Envoy, of Redis or of the control
plane is restarted on the same address while the SDK's calls through the gateway keep
succeeding, and a child that keeps dying stops the mesh with its log's tail."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

import callisto
from callisto.cli.state import MeshState
from callisto.mesh.processes import ManagedProcess, ServiceProcess, free_port
from callisto.mesh.supervisor import Child, CrashLoop, RestartHistory, RestartPolicy, Supervisor

SERVING = int(health_pb2.HealthCheckResponse.SERVING)

# The policy's arithmetic, on a clock of our own.


def test_the_restart_delay_doubles_on_quick_exits_up_to_its_maximum() -> None:
    history = RestartHistory(RestartPolicy(delay_s=0.5, max_delay_s=4.0, max_attempts=100))
    delays = []
    for second in range(6):
        delays.append(history.exited(now=float(second), uptime=0.1))
        history.restarts += 1
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_child_that_stayed_up_starts_again_from_the_first_delay() -> None:
    history = RestartHistory(RestartPolicy(delay_s=0.5, stable_after_s=10.0))
    assert history.exited(now=0.0, uptime=1.0) == 0.5
    history.restarts += 1
    assert history.exited(now=2.0, uptime=1.0) == 1.0
    history.restarts += 1
    assert history.exited(now=30.0, uptime=25.0) == 0.5
    assert history.failures == 1  # the stable run's exit is no failed restart


def test_failed_restarts_within_the_window_are_a_crash_loop_and_older_ones_are_forgotten() -> None:
    policy = RestartPolicy(delay_s=0.1, max_attempts=3, window_s=60.0)
    history = RestartHistory(policy)
    # The first exit follows the launcher's own start: never a failed restart.
    assert history.exited(now=0.0, uptime=0.5) is not None
    for now in (1.0, 2.0):
        history.restarts += 1
        assert history.exited(now=now, uptime=0.5) is not None
    history.restarts += 1
    assert history.exited(now=3.0, uptime=0.5) is None
    # The same three failures spread over more than the window are no loop.
    spread = RestartHistory(policy)
    spread.restarts = 1
    for now in (0.0, 40.0, 80.0, 120.0):
        assert spread.exited(now=now, uptime=0.5) is not None


def test_a_policy_refuses_delays_and_limits_that_cannot_work() -> None:
    with pytest.raises(ValueError):
        RestartPolicy(delay_s=0)
    with pytest.raises(ValueError):
        RestartPolicy(delay_s=40.0, max_delay_s=30.0)
    with pytest.raises(ValueError):
        RestartPolicy(max_attempts=0)


def test_the_supervisor_restarts_an_exiting_process_until_it_calls_it_a_crash_loop(
    tmp_path: Path,
) -> None:
    process = ManagedProcess(
        "flaky", ["sh", "-c", "echo 'boom: config missing'; exit 3"], log_path=tmp_path / "l"
    )
    process.start()
    lines: list[str] = []
    supervisor = Supervisor(
        [
            Child(
                name="flaky",
                running=lambda: process.running,
                start=process.start,
                ready=lambda: True,
                kill=process.kill,
                log_tail=process.log_tail,
                where=lambda: "nowhere",
                exit_code=lambda: process.exit_code,
            )
        ],
        RestartPolicy(delay_s=0.05, max_attempts=2, window_s=60.0),
        say=lines.append,
    )
    deadline = time.monotonic() + 10
    with pytest.raises(CrashLoop) as loop:
        while time.monotonic() < deadline:
            supervisor.poll()
            time.sleep(0.02)
    assert re.search(r"flaky exited.* \(code 3\): 2 failed restarts", str(loop.value))
    assert "boom: config missing" in str(loop.value)  # its log's tail
    assert "flaky exited (code 3), restarting in 0.05 s (restart 1)" in lines[0]
    assert supervisor.restarts()["flaky"] == 2


# `callisto up --no-models --replicas 2`, as a user runs it.


class Up:
    """`callisto up` in a child process, its output in a file."""

    def __init__(self, home: Path, *extra: str) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.output = home / "up.out"
        # Short registry TTLs and health intervals, so Envoy sees a replica come and go fast.
        env = {
            **os.environ,
            "CALLISTO_REGISTRY_TTL_SECONDS": "1.5",
            "CALLISTO_HEALTH_INTERVAL_SECONDS": "0.2",
            "CALLISTO_CONTROL_PLANE_HEALTH_CHECK_SECONDS": "1",
            "CALLISTO_SHUTDOWN_GRACE_SECONDS": "2",
        }
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "callisto"), "up", "--no-models",
                "--home", str(home),
                "--gateway-port", str(free_port()),
                "--admin-port", str(free_port()),
                "--redis-port", str(free_port()),
                *extra,
            ],
            stdout=self.output.open("wb"), stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip

    def text(self) -> str:
        return self.output.read_text()

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text(), re.M)
            if found:
                return found
            if self.process.poll() is not None:
                pytest.fail(f"callisto up exited ({self.process.returncode}):\n{self.text()}")
            time.sleep(0.05)
        pytest.fail(f"no {pattern!r} within {timeout} s:\n{self.text()}")

    def state(self) -> MeshState:
        state = MeshState.read(self.home)
        assert state is not None, self.text()
        return state

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(tmp_path_factory.mktemp("supervised") / "home", "--replicas", "2",
            "--restart-delay", "0.2")  # fmt: skip
    try:
        up.wait_for("Press Ctrl-C")
        yield up
    finally:
        up.stop()


def _replica(state: MeshState, name: str) -> ServiceProcess:
    """A handle on a running replica for its health (not started by us: never stopped)."""
    host, _, port = state.replicas[name].address.rpartition(":")
    return ServiceProcess("persistence", int(port), host=host, log_path=Path(os.devnull))


def _requests_per_host(admin: str) -> dict[str, int]:
    """`host:port` -> requests Envoy sent it, from the admin interface."""
    import urllib.request

    with urllib.request.urlopen(f"{admin}/clusters?format=json", timeout=2) as answer:
        clusters: dict[str, Any] = json.load(answer)
    counts: dict[str, int] = {}
    for cluster in clusters.get("cluster_statuses", []):
        for host in cluster.get("host_statuses", []):
            address = host.get("address", {}).get("socket_address", {})
            if "port_value" in address:
                stats = {s["name"]: int(s.get("value", 0)) for s in host.get("stats", [])}
                counts[f"{address['address']}:{address['port_value']}"] = stats.get("rq_total", 0)
    return counts


async def _client(up: Up) -> callisto.Client:
    key = (up.home / "keys" / "demo.key").read_text().strip()
    return await callisto.Client.connect(up.state().gateway, api_key=key, default_timeout=10)


class Load:
    """Creates and reads conversations through the gateway, as the SDK does, until stopped."""

    def __init__(self, client: callisto.Client) -> None:
        self.client = client
        self.ok = 0
        self.failures: list[BaseException] = []
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                created = await self.client.persistence.create_conversation(title="under load")
                await self.client.persistence.get_conversation(created.name)
                self.ok += 1
            except Exception as error:
                self.failures.append(error)
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stop.set()
        await self._task


def _kill(state: MeshState, name: str) -> None:
    os.kill(state.replicas[name].pid, signal.SIGKILL)


async def _until(check: Any, within: float) -> float:
    """Seconds until `check()` is true, asked off the event loop (the load keeps running);
    fails the test after `within`."""
    started = time.monotonic()
    while not await asyncio.to_thread(check):
        assert time.monotonic() - started < within, "timed out"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def _said(up: Up, pattern: str) -> Any:
    """Whether the launcher said `pattern` (a check for `_until`)."""
    return lambda: re.search(pattern, up.text(), re.M) is not None


async def test_every_persistence_replica_serves_and_envoy_routes_to_both(mesh: Up) -> None:
    state = mesh.state()
    first, second = state.replicas["persistence-1"], state.replicas["persistence-2"]
    assert first.kind == second.kind == "persistence" and first.address != second.address
    assert state.services["persistence"] == f"ipv4:{first.address},{second.address}"
    assert {"redis", "control-plane", "gateway"} <= set(state.replicas)
    for name in ("persistence-1", "persistence-2"):
        assert _replica(state, name).health() == SERVING
    client = await _client(mesh)
    try:
        created = await client.persistence.create_conversation(title="both replicas")
        for _ in range(30):
            await client.persistence.get_conversation(created.name)
    finally:
        await client.close()
    counts = _requests_per_host(state.admin)
    assert counts.get(first.address, 0) > 0 and counts.get(second.address, 0) > 0, counts
    shown = await asyncio.to_thread(
        subprocess.run,
        [str(Path(sys.executable).parent / "callisto"), "status", "--home", str(mesh.home)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert re.search(rf"^persistence-2\s+{re.escape(second.address)}\s+\d+\s+up\s+0$",
                     shown.stdout, re.M), shown.stdout  # fmt: skip


async def test_a_killed_replica_is_back_on_its_port_while_calls_through_the_gateway_succeed(
    mesh: Up,
) -> None:
    before = mesh.state().replicas["persistence-2"]
    client = await _client(mesh)
    load = Load(client)
    try:
        await _until(lambda: load.ok >= 5, 20)
        _kill(mesh.state(), "persistence-2")
        killed = time.monotonic()
        said = r"↻ persistence-2 exited \(code -9\), restarting in 0\.2 s \(restart 1\)"
        await _until(_said(mesh, said), 10)
        back = rf"✓ persistence-2 back on {re.escape(before.address)} \(SERVING\)"
        await _until(_said(mesh, back), 30)
        replica = _replica(mesh.state(), "persistence-2")
        await _until(lambda: replica.health() == SERVING, 10)
        print(f"persistence replica: kill -9 -> SERVING in {time.monotonic() - killed:.2f} s")
        served = load.ok
        await _until(lambda: load.ok >= served + 10, 20)
    finally:
        await load.stop()
        await client.close()
    assert not load.failures, load.failures[:3]
    after = mesh.state().replicas["persistence-2"]
    assert after.address == before.address and after.pid != before.pid
    assert after.restarts == 1


@pytest.mark.parametrize(
    ("child", "back"),
    [
        ("gateway", r"✓ gateway back on http://\S+ \(LIVE\)"),
        ("redis", r"✓ redis back on redis://\S+"),
        ("control-plane", r"✓ control-plane back on \S+"),
    ],
)
async def test_a_killed_part_of_the_mesh_comes_back_and_the_mesh_serves_again(
    mesh: Up, child: str, back: str
) -> None:
    client = await _client(mesh)
    try:
        kept = await client.persistence.create_conversation(title=f"before {child} died")
        # Redis's AOF is fsynced every second: the write is on disk after that.
        await asyncio.sleep(1.2)
        restarts = mesh.state().replicas[child].restarts
        backs = len(re.findall(back, mesh.text(), re.M))
        _kill(mesh.state(), child)
        killed = time.monotonic()
        await _until(lambda: len(re.findall(back, mesh.text(), re.M)) > backs, 30)
        # The SDK retries while the part comes back; the data is still there.
        read = await client.persistence.get_conversation(kept.name, timeout=30)
        print(f"{child}: kill -9 -> serving again in {time.monotonic() - killed:.2f} s")
        assert read.title == f"before {child} died"
        await client.persistence.create_conversation(title=f"after {child} came back")
    finally:
        await client.close()
    assert mesh.state().replicas[child].restarts == restarts + 1
    for name in ("persistence-1", "persistence-2"):
        replica = _replica(mesh.state(), name)
        await _until(lambda replica=replica: replica.health() == SERVING, 15)


def test_a_child_that_keeps_dying_stops_the_mesh_with_its_log_tail(tmp_path: Path) -> None:
    up = Up(tmp_path / "home", "--restart-delay", "1", "--restart-max-attempts", "2")
    try:
        up.wait_for("Press Ctrl-C")
        persistence = up.state().replicas["persistence"]
        host, _, port = persistence.address.rpartition(":")
        os.kill(persistence.pid, signal.SIGKILL)
        # Someone else takes its port: every restart fails to bind.
        deadline = time.monotonic() + 5
        with socket.socket() as squatter:
            # Past the dead server's TIME_WAIT connections; no SO_REUSEPORT, so gRPC's bind fails.
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            while True:
                try:
                    squatter.bind((host, int(port)))
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the killed replica's port stayed busy"
                    time.sleep(0.01)
            squatter.listen()
            assert up.process.wait(60) == 1, up.text()
        out = up.text()
    finally:
        up.stop()
    assert "↻ persistence exited (code -9), restarting in 1 s (restart 1)" in out, out
    assert re.search(r"✗ persistence exited .*: 2 failed restarts within 60 s, a crash loop", out)
    assert f"Failed to bind to address {host}:{port}" in out  # its log's tail
    assert "stopped; nothing left running" in out
    assert not (up.home / "mesh.json").exists()
