"""server.denyBackends: a backend whose address (after resolution) falls in a denied
network is never connected to: 502, one log line per frontend and interval, no dead mark."""

from __future__ import annotations

import select
import socket

import requests

from tests.harness import ANSWER_TIMEOUT


def get(proxy, host: str, path: str = "/echo") -> requests.Response:
    return requests.get(f"{proxy.url}{path}", headers={"Host": host, "X-Debug": "1"}, timeout=ANSWER_TIMEOUT)


def test_denied_address_is_never_connected_to_and_logged_once(make_proxy, rdb, host):
    proxy = make_proxy(server_denyBackends=["127.0.0.0/8"])
    with socket.socket() as listener:  # a backend that would accept, if anyone connected
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        rdb.rpush(f"frontend:{host}", "app", f"http://127.0.0.1:{listener.getsockname()[1]}")
        answers = [get(proxy, host) for _ in range(3)]
        assert [a.status_code for a in answers] == [502] * 3
        assert "denyBackends" in answers[0].headers["x-debug-error"]
        assert select.select([listener], [], [], 0)[0] == []  # no connection is waiting to be accepted
    lines = [line for line in proxy.log().splitlines() if f"frontend:{host}" in line and "denyBackends" in line]
    assert len(lines) == 1, lines


def test_names_are_checked_after_resolution(make_proxy, rdb, backends, host):
    proxy = make_proxy(server_denyBackends=["127.0.0.0/8", "::1/128"])
    rdb.rpush(f"frontend:{host}", "app", f"http://localhost:{backends[0].port}")
    answer = get(proxy, host)
    assert answer.status_code == 502
    assert "denyBackends" in answer.headers["x-debug-error"]


def test_link_local_is_denied_by_default(make_proxy, rdb, host):
    proxy = make_proxy()
    rdb.rpush(f"frontend:{host}", "metadata", "http://169.254.169.254/latest/meta-data/")
    answer = get(proxy, host)
    assert answer.status_code == 502
    assert "denyBackends" in answer.headers["x-debug-error"]


def test_a_denied_backend_is_skipped_for_another_and_never_marked_dead(make_proxy, rdb, backends, host):
    proxy = make_proxy(server_denyBackends=["169.254.0.0/16"], server_retryOnError=1)
    rdb.rpush(f"frontend:{host}", "app", "http://169.254.10.10:80", backends[0].url)
    for _ in range(6):
        assert get(proxy, host).status_code == 200
    assert rdb.smembers(f"dead:{host}") == set()
