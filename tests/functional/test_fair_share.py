"""One client address cannot take the share of a backend pool kept for everyone else (issue 11).

Requests from 127.0.0.2 whose answers the backend holds fill a small pool
(``server.maxSockets`` 10, ``server.maxSocketsPerClient`` 3): past its share, while
another address (127.0.0.1) uses the pool too, that address may take connections only
while a tenth of the pool stays free, so a request from 127.0.0.1 still finds one. An
address alone on its pool uses all of it, as before the rule. The counting itself is checked against a real backend
with ``Upstream`` in this process: after completed, failed, cut and refused exchanges,
nothing is left counted.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from cjs_proxy.exceptions import BackendBusy, BackendUnavailable
from cjs_proxy.pipeline.upstream import BackendPool, Upstream, make_session
from tests.harness import ANSWER_TIMEOUT, read_response, wait_for
from tests.scripted_backend import OnSocket, Received, ScriptedBackend, ordinary_response

POOL, SHARE = 10, 3
#: Seconds a request may wait for the pool (``server.connectTimeout``) in the first test.
POOL_WAIT = 3.0
#: The longest the backend holds an answer; the tests release them long before.
HOLD = 60.0
#: What the worker logs when an address past its share is held back.
HELD_BACK = "past its share of the pool"
OTHER = "127.0.0.2"


class Holds:
    """Answers to ``/hold?n=<i>`` that the backend sends only once the test releases them."""

    def __init__(self, count: int) -> None:
        self.released = [threading.Event() for _ in range(count)]

    def answer(self, sock: socket.socket, received: Received) -> None:
        self.released[int(received.target.rsplit("=", 1)[1])].wait(HOLD)
        sock.sendall(ordinary_response(received))

    def release_all(self) -> None:
        for event in self.released:
            event.set()


@pytest.fixture()
def holds(scripted: ScriptedBackend) -> Iterator[Holds]:
    held = Holds(POOL + 1)
    scripted.script["/hold"] = OnSocket(held.answer, keep_open=True)
    yield held
    held.release_all()  # whatever the outcome, no backend thread waits on


def held_request(port: int, host: str, n: int, source: str = OTHER) -> socket.socket:
    """A GET from ``source`` whose answer the backend holds until ``Holds`` releases ``n``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT, source_address=(source, 0))
    sock.sendall(f"GET /hold?n={n} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


def status(sock: socket.socket) -> int:
    return read_response(sock)[0]


def read_by_proxy(proxy_port: int, sock: socket.socket) -> bool:
    """The proxy has read everything ``sock`` sent (its side of the connection, in
    /proc/net/tcp, has nothing left in its receive queue)."""
    client_port = sock.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
        if (local, remote) == (proxy_port, client_port):
            return int(fields[4].split(":")[1], 16) == 0
    return False


def held_back_or_sent(proxy, scripted: ScriptedBackend, sent: int) -> bool:
    """The proxy logged that it holds a request back, or the backend got it (without the rule)."""
    return HELD_BACK in proxy.log() or len(scripted.requests_for("/hold")) >= sent


def a_regular_came(proxy, host: str) -> None:
    """127.0.0.1 uses the app's pool: the reserve is now kept for it (``fair_share.OTHERS_RECENT``)."""
    assert requests.get(f"{proxy.url}/quick", headers={"Host": host}, timeout=ANSWER_TIMEOUT).status_code == 200


def past_its_share(proxy, rdb, scripted: ScriptedBackend, host: str) -> list[socket.socket]:
    """A regular on 127.0.0.1, then 127.0.0.2 holding all of the pool but the reserve (share 3)."""
    rdb.rpush(f"frontend:{host}", "app", scripted.url)
    a_regular_came(proxy, host)
    clients = [held_request(proxy.port, host, n) for n in range(POOL - 1)]
    wait_for(lambda: len(scripted.requests_for("/hold")) == POOL - 1, "9 held requests at the backend")
    return clients


def test_one_address_cannot_take_the_connections_kept_for_others(make_proxy, rdb, scripted, holds, host):
    proxy = make_proxy(server_maxSockets=POOL, server_maxSocketsPerClient=SHARE,
                       server_connectTimeout=POOL_WAIT, server_tcpTimeout=HOLD + 30)
    clients = past_its_share(proxy, rdb, scripted, host)
    try:
        started = time.monotonic()
        tenth = held_request(proxy.port, host, POOL - 1)
        clients.append(tenth)
        wait_for(lambda: held_back_or_sent(proxy, scripted, POOL), "the tenth request held back (or sent)")
        asked = time.monotonic()
        answer = requests.get(f"{proxy.url}/quick", headers={"Host": host}, timeout=ANSWER_TIMEOUT)
        elapsed = time.monotonic() - asked
        assert answer.status_code == 200, f"{answer.status_code} after {elapsed:.1f}s: the pool was taken"
        assert elapsed < 5, f"{elapsed:.1f}s"
        assert status(tenth) == 503
        waited = time.monotonic() - started
        assert waited >= POOL_WAIT * 0.9, f"503 after {waited:.1f}s, not after the pool's timeout"
        assert len(scripted.requests_for("/hold")) == POOL - 1
    finally:
        holds.release_all()
    try:
        assert [status(sock) for sock in clients[:-1]] == [200] * (POOL - 1)  # none was cut
    finally:
        for sock in clients:
            sock.close()


def test_alone_on_its_pool_an_address_uses_all_of_it(make_proxy, rdb, scripted, holds, host):
    """Every client behind one address (a load balancer): the reserve is for others, and there are none."""
    proxy = make_proxy(server_maxSockets=POOL, server_maxSocketsPerClient=SHARE, server_tcpTimeout=HOLD + 30)
    rdb.rpush(f"frontend:{host}", "app", scripted.url)
    clients = [held_request(proxy.port, host, n) for n in range(POOL)]
    try:
        wait_for(lambda: len(scripted.requests_for("/hold")) == POOL, "the whole pool used by one address")
        assert HELD_BACK not in proxy.log()
    finally:
        holds.release_all()
    try:
        assert [status(sock) for sock in clients] == [200] * POOL
    finally:
        for sock in clients:
            sock.close()


def test_past_its_share_an_address_uses_all_but_the_reserve(make_proxy, rdb, scripted, holds, host):
    """Work-conserving: past its share while nobody else wants the pool; held back only by the
    reserve, and let through as soon as one of its own exchanges ends (not at a timeout)."""
    patience = 40.0
    proxy = make_proxy(server_maxSockets=POOL, server_maxSocketsPerClient=SHARE,
                       server_connectTimeout=patience, server_tcpTimeout=HOLD + 30)
    clients = past_its_share(proxy, rdb, scripted, host)
    try:
        clients.append(held_request(proxy.port, host, POOL - 1))
        wait_for(lambda: held_back_or_sent(proxy, scripted, POOL), "the tenth request held back (or sent)")
        assert len(scripted.requests_for("/hold")) == POOL - 1, "the reserve was taken"
        holds.released[0].set()
        assert status(clients[0]) == 200
        released = time.monotonic()
        wait_for(lambda: len(scripted.requests_for("/hold")) == POOL, "the tenth request sent", timeout=patience / 2)
        print(f"sent {time.monotonic() - released:.3f}s after one of its exchanges ended")
    finally:
        holds.release_all()
    try:
        assert [status(sock) for sock in clients[1:]] == [200] * (POOL - 1)
    finally:
        for sock in clients:
            sock.close()


def test_requests_queued_under_the_share_are_checked_again_when_a_connection_comes(make_proxy, rdb, scripted,
                                                                                     holds, host):
    """Requests an address sent while the pool was full and it was under its share wait in the
    pool's queue; when a connection comes to one after the address reached its share, it goes
    back to the pool (the reserve), not to that address."""
    proxy = make_proxy(server_maxSockets=4, server_maxSocketsPerClient=2, server_connectTimeout=30,
                       server_tcpTimeout=HOLD + 30)
    rdb.rpush(f"frontend:{host}", "app", scripted.url)
    clients = [held_request(proxy.port, host, 0, "127.0.0.3"), held_request(proxy.port, host, 1, "127.0.0.3"),
               held_request(proxy.port, host, 2, "127.0.0.4"), held_request(proxy.port, host, 3)]
    try:
        wait_for(lambda: len(scripted.requests_for("/hold")) == 4, "the pool of 4 taken, 127.0.0.2 holding 1")
        clients += [held_request(proxy.port, host, 4), held_request(proxy.port, host, 5)]  # queued: 1 < 2
        wait_for(lambda: all(read_by_proxy(proxy.port, sock) for sock in clients[4:]), "both read by the proxy")
        holds.released[0].set()  # a connection comes back: one of them gets it, 127.0.0.2 is at its share
        assert status(clients[0]) == 200
        wait_for(lambda: len(scripted.requests_for("/hold")) == 5, "a queued request of 127.0.0.2 sent")
        holds.released[1].set()  # another comes back: the reserve, not the other queued request's
        assert status(clients[1]) == 200
        wait_for(lambda: held_back_or_sent(proxy, scripted, 6), "the other queued request held back (or sent)")
        assert len(scripted.requests_for("/hold")) == 5, "127.0.0.2 took the reserve"
        answer = requests.get(f"{proxy.url}/quick", headers={"Host": host}, timeout=ANSWER_TIMEOUT)
        assert answer.status_code == 200
    finally:
        holds.release_all()
    try:
        assert [status(sock) for sock in clients[2:]] == [200] * 4
    finally:
        for sock in clients:
            sock.close()


# ------------------------------------------------------------------ no leaks


def test_every_exchange_gives_back_what_it_counted(scripted):
    """Completed, failed (reset, unparsable), retried, cut, abandoned mid-body and refused
    exchanges: afterwards no address holds anything, nobody waits, no lane is taken."""
    big = 4 * 1024 * 1024
    scripted.script.update({
        "/reset": OnSocket(lambda sock, received: None, reset=True),
        "/garbage": b"NOT HTTP AT ALL\r\n\r\n",
        "/big": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % big + b"x" * big,
    })
    upstream = Upstream(make_session(2), connect_timeout=0.5, read_timeout=10, per_client=1)
    pool: BackendPool = upstream.pool_for(scripted.url)

    def send(path: str, address: str, client: socket.socket | None = None):
        return upstream.send(scripted.url, "GET", path, [("Host", "app.test")], None, client=client,
                             client_ip=address)

    try:
        done = send("/ok", "10.0.0.1")  # completed
        assert b"".join(done.iter_body()).startswith(b"path=/ok")
        done.close()
        again = send("/ok", "10.0.0.1")  # on the pooled connection: reused, then given back
        b"".join(again.iter_body())
        again.close()
        with pytest.raises(BackendUnavailable):  # reset before the answer: the pooled one, retried, then fresh
            send("/reset", "10.0.0.1")
        with pytest.raises(BackendUnavailable):
            send("/garbage", "10.0.0.2")
        abandoned = send("/big", "10.0.0.2")  # the client left after one piece
        next(abandoned.iter_body())
        abandoned.close()
        ours, theirs = socket.socketpair()
        with ours, theirs:
            cut = send("/ok", "10.0.0.3", client=ours)
            assert cut.watch is not None
            upstream.slow.shed(cut.watch)  # as the sweep does to a laneless slow transfer
            cut.close()
        first = send("/ok", "10.0.0.4")  # share 1 of a pool of 2: the other one is the reserve
        assert pool.fair.held == {"10.0.0.4": 1}
        with pytest.raises(BackendBusy):
            send("/ok", "10.0.0.4")
        b"".join(first.iter_body())
        first.close()
    finally:
        upstream.close()
    assert pool.fair.held == {}
    assert (pool.share.waiting, pool.share.slow) == (0, 0)
    assert upstream.slow.active == set()
