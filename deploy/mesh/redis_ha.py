"""Redis that survives losing its primary, as real processes on loopback: a primary and a
replica (redis-server, `appendfsync always`) watched by three Sentinels (redis-sentinel), each
on a free port with its own directory, started and stopped by PID.

Services reach it through `sentinel_url` (CALLISTO_REDIS_URL). Sentinel promotes the replica
once two Sentinels agree the primary has been unreachable for `down_after_ms`; a node that
comes back is turned into a replica of whichever node is primary then.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from callisto.mesh.processes import ManagedProcess, ProcessError, RedisServer, free_port

HOST = "127.0.0.1"
SENTINELS = 3
QUORUM = 2


def redis_sentinel_binary() -> str:
    found = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"
    if not Path(found).exists():
        raise ProcessError("redis-sentinel is not installed (apt-get install -y redis-sentinel)")
    return found


class RedisNode(RedisServer):
    """A redis-server of the set: the primary or a replica of it, whichever Sentinel says."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, appendfsync="always", host=HOST)
        # A node that rejoins takes a full copy: stream it at once (the default waits 5 s for
        # more replicas to share one transfer).
        self.argv += ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]

    def follow(self, primary_port: int | None) -> None:
        """Starts next time as a replica of `primary_port` (None: as a primary)."""
        if "--replicaof" in self.argv:
            at = self.argv.index("--replicaof")
            del self.argv[at : at + 2]
        if primary_port is not None:
            self.argv += ["--replicaof", f"{HOST} {primary_port}"]

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=1.0, decode_responses=True)

    def replication(self) -> dict[str, Any]:
        with self.client() as client:
            info: dict[str, Any] = client.info("replication")
        return info


class SentinelProcess(ManagedProcess):
    """One redis-sentinel; it rewrites its config file as it learns the set, so the file lives
    in its own directory."""

    def __init__(
        self,
        data_dir: Path,
        primary_name: str,
        primary_port: int,
        *,
        down_after_ms: int,
        failover_timeout_ms: int,
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(HOST)
        config = data_dir / "sentinel.conf"
        config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {HOST}",
                    "daemonize no",
                    f"dir {data_dir}",
                    "sentinel resolve-hostnames no",
                    f"sentinel monitor {primary_name} {HOST} {primary_port} {QUORUM}",
                    f"sentinel down-after-milliseconds {primary_name} {down_after_ms}",
                    f"sentinel failover-timeout {primary_name} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {primary_name} 1",
                    "",
                ]
            )
        )
        super().__init__(
            "redis-sentinel",
            [redis_sentinel_binary(), str(config)],
            log_path=data_dir / "sentinel.log",
        )

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=1.0, decode_responses=True)


class RedisHA:
    """A primary, a replica and three Sentinels. `start()` returns once every Sentinel knows
    the replica and the other Sentinels, so a failover can be elected from then on."""

    def __init__(
        self,
        base_dir: Path,
        *,
        primary_name: str = "callisto",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.primary_name = primary_name
        self.nodes = [RedisNode(base_dir / "node-0"), RedisNode(base_dir / "node-1")]
        self.nodes[1].follow(self.nodes[0].port)
        self.sentinels = [
            SentinelProcess(
                base_dir / f"sentinel-{i}",
                primary_name,
                self.nodes[0].port,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
            )
            for i in range(SENTINELS)
        ]

    @property
    def sentinel_url(self) -> str:
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.primary_name}/0"

    def start(self, timeout: float = 30.0) -> None:
        try:
            for node in self.nodes:
                node.start()
            self.wait_replicated(timeout)
            for sentinel in self.sentinels:
                sentinel.start()
            self.wait_settled(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for process in [*self.sentinels, *self.nodes]:
            process.stop(grace=5.0)

    @contextmanager
    def running(self) -> Iterator[RedisHA]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def primary_port(self) -> int:
        """The primary's port as the Sentinels name it (the first that answers)."""
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            try:
                with sentinel.client() as client:
                    address = client.sentinel_get_master_addr_by_name(self.primary_name)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        raise ProcessError("no Sentinel names a primary")

    def primary(self) -> RedisNode:
        return self._node(self.primary_port())

    def replica(self) -> RedisNode:
        """The node that is not the primary."""
        port = self.primary_port()
        return next(node for node in self.nodes if node.port != port)

    def wait_for_failover(self, old_port: int, timeout: float = 20.0) -> RedisNode:
        """Waits until every running Sentinel names another primary than `old_port` and that
        node takes writes; returns it. An old primary that still runs is demoted by Sentinel
        on its next INFO (every 10 s) or by `follow` + restart."""

        def promoted() -> bool:
            ports: set[int] = set()
            for sentinel in self.sentinels:
                if sentinel.running:
                    with sentinel.client() as client:
                        address = client.sentinel_get_master_addr_by_name(self.primary_name)
                    if not address:
                        return False
                    ports.add(int(address[1]))
            if len(ports) != 1 or old_port in ports:
                return False
            return bool(self._node(ports.pop()).replication().get("role") == "master")

        self._wait(promoted, timeout, f"no failover from port {old_port}")
        return self.primary()

    def restart_as_replica(self, node: RedisNode, timeout: float = 20.0) -> None:
        """Starts a stopped node as a replica of the current primary and waits until it has
        caught up (link up, Sentinels see it)."""
        node.follow(self.primary_port())
        node.start()
        self.wait_replicated(timeout)
        self.wait_settled(timeout)

    def wait_replicated(self, timeout: float = 20.0) -> None:
        """Waits until every running replica's link to its primary is up."""

        def linked() -> bool:
            for node in self.nodes:
                if node.running and "--replicaof" in node.argv:
                    info = node.replication()
                    if info.get("role") == "slave" and info.get("master_link_status") != "up":
                        return False
            return True

        self._wait(linked, timeout, "a replica did not finish syncing")

    def wait_settled(self, timeout: float = 20.0) -> None:
        """Waits until every Sentinel knows the other two and the current primary and sees
        every running replica as up: from then on a failover can be elected."""
        self._wait(self._sentinels_settled, timeout, "the Sentinels did not settle")

    def _sentinels_settled(self) -> bool:
        primary = self.primary_port()
        replicas = {node.port for node in self.nodes if node.running and node.port != primary}
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                state = client.sentinel_master(self.primary_name)
                seen = client.sentinel_slaves(self.primary_name)
            if int(state["port"]) != primary or state["num-other-sentinels"] < SENTINELS - 1:
                return False
            up = {int(r["port"]) for r in seen if not r["is_sdown"] and not r["is_disconnected"]}
            if not replicas <= up:
                return False
        return True

    def _node(self, port: int) -> RedisNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise ProcessError(f"no node of this set listens on port {port}")

    def _wait(self, ready: Any, timeout: float, failure: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.05)
        logs = "\n".join(
            f"--- {p.name} :{getattr(p, 'port', '')}\n{p.log_tail(15)}"
            for p in [*self.nodes, *self.sentinels]
        )
        raise ProcessError(f"{failure} within {timeout} s:\n{logs}")
