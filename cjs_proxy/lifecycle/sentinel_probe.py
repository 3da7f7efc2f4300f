"""``/readyz`` through Sentinel: ask a sentinel where the master is, then ``PING`` it.

The master process must not import redis-py (see ``admin_server``), so this probe
sends the one sentinel command it needs, ``SENTINEL GET-MASTER-ADDR-BY-NAME``, as
bare RESP, like ``RedisProbe``'s ``PING``. It discovers nothing else and follows no
failover itself: each probe asks again, the first sentinel that answers wins.
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import quote

from cjs_proxy.lifecycle.admin_server import RedisProbe, _resp
from cjs_proxy.pipeline.sentinel_url import SentinelTarget, parse_sentinel_url


def master_address_reply(reply: bytes) -> tuple[str, int] | None:
    """``*2 $n host $n port`` to (host, port); None for a null array (no such master)."""
    lines = reply.split(b"\r\n")
    if not lines[0].startswith(b"*") or lines[0] == b"*-1" or len(lines) < 5:
        return None
    return lines[2].decode(), int(lines[4])


class SentinelProbe:
    """None when the master the sentinels name answers ``PING``, else why not."""

    def __init__(self, url: str, timeout: float) -> None:
        self.target: SentinelTarget = parse_sentinel_url(url)
        self.timeout = timeout

    def master_address(self) -> tuple[str, int] | str:
        """(host, port) from the first sentinel that knows the master, else why none did."""
        problems = []
        for host, port in self.target.sentinels:
            try:
                with self._connect(host, port) as sock:
                    if self.target.sentinel_password:
                        sock.sendall(_resp("AUTH", self.target.sentinel_password))
                        sock.recv(512)
                    sock.sendall(_resp("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.target.service))
                    address = master_address_reply(sock.recv(512))
            except (OSError, ValueError, IndexError) as exc:
                problems.append(f"sentinel {host}:{port}: {exc}")
                continue
            if address is not None:
                return address
            problems.append(f"sentinel {host}:{port} knows no master {self.target.service!r}")
        return "; ".join(problems)

    def __call__(self) -> str | None:
        address = self.master_address()
        if isinstance(address, str):
            return f"redis unreachable: {address}"
        auth = ""
        if self.target.password:
            auth = f"{quote(self.target.username or '')}:{quote(self.target.password)}@"
        scheme = "rediss" if self.target.tls else "redis"
        return RedisProbe(f"{scheme}://{auth}{address[0]}:{address[1]}", self.timeout)()

    def _connect(self, host: str, port: int) -> socket.socket:
        sock = socket.create_connection((host, port), timeout=self.timeout)
        if self.target.tls:
            return ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        return sock
