"""The backend pools: one per backend URL and worker, owned by a ``requests`` session.

The session's transport adapter is the documented extension point: ``BackendAdapter``
makes its pools ``BackendPool``s, bounded and blocking, which hold ``BackendConnection``s
(a socket opened on demand, checked against ``server.denyBackends``). Only a pool's queue
is used (``checkout``/``checkin``); requests go through ``upstream.Upstream.send``.
"""

from __future__ import annotations

import http.cookiejar
import socket
import ssl
from typing import Any, cast

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.poolmanager import PoolManager

from cjs_proxy.exceptions import BackendUnavailable
from cjs_proxy.pipeline.addresses import Network, allowed_addresses, connect_checked
from cjs_proxy.pipeline.fair_share import FairShare
from cjs_proxy.pipeline.slow_clients import PoolShare
from cjs_proxy.pipeline.sockets import readable_now

#: Backend pools kept per worker; the least recently used is closed past this.
BACKEND_POOLS = 1000


class BackendConnection:
    """One connection to a backend, (re)opened on demand, reused while in a known state."""

    def __init__(self, host: str, port: int | None, timeout: Any = None, *,
                 tls: ssl.SSLContext | None = None, deny: tuple[Network, ...] = (), **_urllib3_kwargs: Any) -> None:
        self.host = host
        self.port = port or (443 if tls else 80)
        self.tls = tls
        #: ``server.denyBackends``: addresses this connection never goes to.
        self.deny = deny
        self.sock: socket.socket | None = None

    @property
    def is_connected(self) -> bool:
        """Open and silent. urllib3's pool asks before lending it: a readable idle
        connection was closed by the backend, or holds bytes nobody asked for."""
        sock = self.sock
        return sock is not None and not readable_now(sock)

    def connect(self, timeout: float, backend_url: str) -> socket.socket:
        """Resolve, check every address against ``deny``, connect to a checked one (never resolve twice)."""
        addresses = allowed_addresses(self.host, self.port, self.deny, backend_url)
        sock = connect_checked(addresses, timeout, backend_url)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                raise BackendUnavailable(f"{backend_url}: TLS handshake failed: {exc}",
                                         before_request=True) from exc
        self.sock = sock
        return sock

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()


class BackendPool(HTTPConnectionPool):
    """urllib3's bounded, blocking pool, holding ``BackendConnection``s.

    Only its queue is used (``checkout``/``checkin``); a request goes through
    ``Upstream.send``, never through ``urlopen``.
    """

    ConnectionCls = BackendConnection  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        size = self.pool.maxsize if self.pool is not None else 1
        #: Its slow transfers' share, and the requests waiting for one of its connections.
        self.share = PoolShare(size)
        #: What each client address holds of it (``Upstream`` sets the share per address).
        self.fair = FairShare(size)

    def free(self) -> int:
        """Connections not lent out: idle, or not opened yet."""
        return self.pool.qsize() if self.pool is not None else 0

    def checkout(self, timeout: float) -> BackendConnection:
        """A connection (open and idle, or not yet open); waits up to ``timeout`` for a free one."""
        self.share.waiting += 1
        try:
            return cast(BackendConnection, self._get_conn(timeout=timeout))
        finally:
            self.share.waiting -= 1

    def checkin(self, conn: BackendConnection) -> None:
        self._put_conn(conn)  # type: ignore[arg-type]

    def urlopen(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("backend pools are used through cjs_proxy.pipeline.upstream.Upstream.send")


class TLSBackendPool(BackendPool):
    scheme = "https"

    def __init__(self, host: str, port: int | None = None, *args: Any, **kwargs: Any) -> None:
        for key in ("key_file", "cert_file", "cert_reqs", "key_password", "ca_certs", "ssl_version",
                    "ssl_minimum_version", "ssl_maximum_version", "assert_hostname", "assert_fingerprint",
                    "ca_cert_dir", "ssl_context", "server_hostname"):
            kwargs.pop(key, None)
        super().__init__(host, port, *args, tls=ssl.create_default_context(), **kwargs)


class BackendAdapter(HTTPAdapter):
    """The session's transport adapter: its pool manager makes ``BackendPool``s."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        manager: PoolManager = self.poolmanager
        manager.pool_classes_by_scheme = {"http": BackendPool, "https": TLSBackendPool}


def make_session(max_sockets: int) -> requests.Session:
    """The session that owns every backend pool of a worker.

    It is never used to send a request on the hot path, but it is still locked down
    so that any use of it is safe: no environment proxies, no default headers, a
    cookie jar that stores nothing, no retries.
    """
    session = requests.Session()
    session.trust_env = False
    session.headers.clear()
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    adapter = BackendAdapter(pool_connections=BACKEND_POOLS, pool_maxsize=max_sockets,
                             pool_block=True, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
