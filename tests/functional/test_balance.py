"""Balancing policies per frontend (balance:<host>, weights:<host>), through a one-worker proxy."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest
import requests
import websocket

from cjs_proxy.pipeline.balance import sticky_id
from tests.harness import ANSWER_TIMEOUT, WAIT, Backend, Proxy, WebSocketBackend, wait_for

#: The sticky cookie's key when ``server.stickySecret`` is not set (``Balancer``'s).
DEFAULT_SECRET = b"cjs-proxy sticky"


@pytest.fixture(scope="module")
def one_worker(workdir, redis_server):
    """One worker: per-worker state (round-robin turns, requests in flight) is then the proxy's."""
    started = Proxy(workdir / "proxy-balance", redis_server.url, server_tcpTimeout=60)
    yield started
    started.stop()


@pytest.fixture()
def trio(tmp_path):
    """Three backends this test may kill."""
    started = [Backend(tmp_path, name) for name in ("x", "y", "z")]
    yield started
    for backend in started:
        backend.stop()


def get(proxy, host, path="/echo", session=None):
    return (session or requests).get(f"{proxy.url}{path}", headers={"Host": host}, timeout=ANSWER_TIMEOUT)


def spread(proxy, host, count, session=None):
    counts: Counter[str] = Counter()
    with requests.Session() as own:
        for _ in range(count):
            response = get(proxy, host, session=session or own)
            assert response.status_code == 200, response.text
            counts[response.json()["server"]] += 1
    return counts


def test_roundrobin_spreads_evenly(one_worker, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "rr", *(b.url for b in backends))
    rdb.set(f"balance:{host}", "roundrobin")
    counts = spread(one_worker, host, 300)
    assert all(abs(counts[name] - 100) <= 1 for name in "abc"), counts


def test_roundrobin_includes_registered_backends(one_worker, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "rr", backends[0].url)
    rdb.zadd(f"backends:{host}", {backends[1].url: 10**13, backends[2].url: 10**13})
    rdb.set(f"balance:{host}", "roundrobin")
    counts = spread(one_worker, host, 90)
    assert all(abs(counts[name] - 30) <= 1 for name in "abc"), counts


@pytest.mark.parametrize("policy, tolerance", [("roundrobin", 0.10), ("random", 0.16), ("p2c", 0.16)])
def test_weights_one_to_three(one_worker, backends, rdb, host, policy, tolerance):
    """2,000 requests, weights 1:3: round robin is exact; random and p2c within 4 standard deviations."""
    rdb.rpush(f"frontend:{host}", "weighted", backends[0].url, backends[1].url)
    rdb.hset(f"weights:{host}", mapping={backends[0].url: 1, backends[1].url: 3})
    rdb.set(f"balance:{host}", policy)
    counts = spread(one_worker, host, 2000)
    assert abs(counts["a"] - 500) <= 500 * tolerance, counts
    assert counts["a"] + counts["b"] == 2000


def test_bad_policy_and_weight_fall_back_with_a_log_line(one_worker, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "bad", backends[0].url, backends[1].url)
    rdb.set(f"balance:{host}", "fastest")
    rdb.hset(f"weights:{host}", mapping={backends[0].url: "-2", backends[1].url: "lots"})
    counts = spread(one_worker, host, 40)
    assert counts["a"] > 0 and counts["b"] > 0
    wait_for(lambda: f"balance:{host}: unknown policy 'fastest'" in one_worker.log(), "the policy's log line")
    wait_for(lambda: f"weights:{host}: weight '-2'" in one_worker.log(), "the weight's log line")


def test_a_policy_change_takes_effect_on_the_next_request(one_worker, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "switch", backends[0].url, backends[1].url)
    spread(one_worker, host, 5)  # cached as random
    rdb.set(f"balance:{host}", "roundrobin")
    first, second = (get(one_worker, host).json()["server"] for _ in range(2))
    assert first != second


def test_sticky_keeps_a_client_on_one_backend_and_moves_it_when_it_dies(one_worker, trio, rdb, host):
    rdb.rpush(f"frontend:{host}", "sticky", *(b.url for b in trio))
    rdb.set(f"balance:{host}", "sticky")
    by_name = {b.name: b for b in trio}
    with requests.Session() as session:
        first = get(one_worker, host, session=session)
        chosen = by_name[first.json()["server"]]
        cookie = first.headers["Set-Cookie"]
        assert cookie.startswith(f"cjs_backend={sticky_id(chosen.url, DEFAULT_SECRET)};") and "HttpOnly" in cookie
        assert str(chosen.port) not in cookie and "127.0.0.1" not in cookie
        counts = spread(one_worker, host, 99, session)
        assert counts == {chosen.name: 99}
        again = get(one_worker, host, session=session)
        assert "Set-Cookie" not in again.headers  # already named the right backend
        chosen.stop()
        moved = get(one_worker, host, session=session)  # refused, retried elsewhere: no failure
        assert moved.status_code == 200 and moved.json()["server"] != chosen.name
        new = by_name[moved.json()["server"]]
        assert sticky_id(new.url, DEFAULT_SECRET) in moved.headers["Set-Cookie"]
        assert spread(one_worker, host, 50, session) == {new.name: 50}


def test_sticky_websocket_upgrades_follow_the_cookie(one_worker, rdb, host, tmp_path):
    pair = [WebSocketBackend(tmp_path), WebSocketBackend(tmp_path)]
    try:
        rdb.rpush(f"frontend:{host}", "sticky-ws", *(b.url for b in pair))
        rdb.set(f"balance:{host}", "sticky")
        for target in pair:
            cookie = f"cjs_backend={sticky_id(target.url, DEFAULT_SECRET)}"
            for _ in range(10):
                ws = websocket.create_connection(f"ws://127.0.0.1:{one_worker.port}/whoami", host=host,
                                                 cookie=cookie, timeout=ANSWER_TIMEOUT)
                try:
                    assert ws.recv() == str(target.port)
                finally:
                    ws.close()
    finally:
        for backend in pair:
            backend.stop()


@pytest.mark.parametrize("policy", ["leastconn", "p2c"])
def test_busy_backend_gets_nothing_while_another_is_idle(one_worker, backends, rdb, host, policy):
    rdb.rpush(f"frontend:{host}", "busy", backends[0].url)
    rdb.set(f"balance:{host}", policy)
    tag = uuid.uuid4().hex
    results: list[int] = []

    def slow(i: int) -> None:
        response = requests.get(f"{one_worker.url}/slow?delay=15&tag={tag}-{i}", headers={"Host": host},
                                timeout=WAIT)
        results.append(response.status_code)

    holders = [threading.Thread(target=slow, args=(i,)) for i in range(50)]
    for thread in holders:
        thread.start()
    try:
        wait_for(lambda: all(requests.get(f"{backends[0].url}/under-way?tag={tag}-{i}", timeout=5).text == "yes"
                             for i in range(50)), "50 slow requests held by backend a")
        rdb.rpush(f"frontend:{host}", backends[1].url)  # an idle backend joins
        assert spread(one_worker, host, 30) == {"b": 30}
    finally:
        for thread in holders:
            thread.join(WAIT)
    assert results == [200] * 50
