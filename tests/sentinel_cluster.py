"""A Redis master, its replica and three sentinels, as real processes on loopback.

The same redis-server binary as the other tests (``harness.redis_server_binary``), the
sentinels started with ``--sentinel`` on a generated config, with short timeouts
(``DOWN_AFTER_MS``) so a failover takes seconds. ``stop`` always reaps every process.
"""

from __future__ import annotations

import signal
from pathlib import Path

import redis

from tests.harness import Process, free_port, port_open, redis_server_binary, wait_for

SERVICE = "mymaster"
#: A master silent this long is subjectively down for a sentinel (quorum 2 of 3 makes it objectively down).
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


class RedisNode(Process):
    """A plain redis-server (a replica of ``master_port`` when given)."""

    def __init__(self, workdir: Path, master_port: int | None = None) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(workdir)]
        if master_port is not None:
            argv += ["--replicaof", "127.0.0.1", str(master_port)]
        super().__init__(argv, workdir / f"redis-{self.port}.log")
        self.wait_until(lambda: port_open(self.port), what="redis-server")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)


class SentinelNode(Process):
    def __init__(self, workdir: Path, master_port: int) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / f"sentinel-{self.port}.conf"  # sentinel rewrites it: one file each
        conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", "daemonize no", f'dir "{workdir}"',
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE} 1", ""]))
        super().__init__([redis_server_binary(), str(conf), "--sentinel"], workdir / f"sentinel-{self.port}.log")
        self.wait_until(lambda: port_open(self.port), what="redis sentinel")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)


class SentinelCluster:
    """master + replica + 3 sentinels; ``url(...)`` is the proxy's driver URL for them."""

    def __init__(self, workdir: Path) -> None:
        self.nodes: list[Process] = []
        try:
            self.master = self._add(RedisNode(workdir))
            self.replica = self._add(RedisNode(workdir, self.master.port))
            self.sentinels = [self._add(SentinelNode(workdir, self.master.port)) for _ in range(3)]
            self.wait_settled()
        except BaseException:
            self.stop()
            raise

    def _add(self, node):
        self.nodes.append(node)
        return node

    def url(self, query: str = "", prefix: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        suffix = (f"?{query}" if query else "") + (f"#{prefix}" if prefix else "")
        return f"redis+sentinel://{hosts}/{SERVICE}/0{suffix}"

    def master_port(self) -> int | None:
        """The master's port as the first answering sentinel names it now."""
        for sentinel in self.sentinels:
            if not sentinel.alive():
                continue
            try:
                address = sentinel.client().sentinel_get_master_addr_by_name(SERVICE)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def wait_settled(self) -> None:
        """Every sentinel knows the replica and the two other sentinels, and the replica is in sync:
        only then can a failover happen."""
        def settled() -> bool:
            for sentinel in self.sentinels:
                state = sentinel.client().sentinel_master(SERVICE)
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
            return self.replica.client().info("replication").get("master_link_status") == "up"
        wait_for(settled, "sentinels aware of each other and of the replica")

    def kill_master(self) -> RedisNode:
        """SIGKILL the master (no goodbye to anyone); the old master is returned, dead."""
        old = self.master
        old.stop(signal.SIGKILL)
        return old

    def wait_promoted(self) -> RedisNode:
        """Wait until the sentinels name the replica as master; it is ``self.master`` from then on."""
        wait_for(lambda: self.master_port() == self.replica.port, "replica promoted by the sentinels")
        wait_for(lambda: self.replica.client().info("replication")["role"] == "master", "replica acting as master")
        self.master = self.replica
        return self.master

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop(signal.SIGKILL)
