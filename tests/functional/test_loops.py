"""Loops are refused: a frontend whose backend is the proxy itself gets a 508 at the
second hop, HTTP and WebSocket alike, instead of looping until a timeout."""

from __future__ import annotations

import re
import socket

import pytest
import requests
import websocket

from tests.harness import ANSWER_TIMEOUT, ROOT, wait_for


def via_entries(report: dict) -> list[str]:
    return [v.strip() for k, value in report["headers"] if k.lower() == "via" for v in value.split(",")]


def test_forwarded_requests_carry_via_with_the_node_id(make_proxy, rdb, backends, host):
    proxy = make_proxy(server_nodeId="edge-7")
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    answer = requests.get(f"{proxy.url}/echo", headers={"Host": host, "Via": "1.0 upstream-lb"}, timeout=ANSWER_TIMEOUT)
    assert answer.status_code == 200
    assert via_entries(answer.json()) == ["1.0 upstream-lb", "1.1 edge-7"]


def test_generated_node_id_is_the_same_in_every_worker(make_proxy, rdb, backends, host):
    proxy = make_proxy(server_workers=2)
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)

    def ids_seen() -> set[str] | None:
        seen: set[str] = set()
        pids: set[str] = set()
        for _ in range(40):  # new connections: both workers get some
            with requests.Session() as client:
                report = client.get(f"{proxy.url}/echo", headers={"Host": host}, timeout=ANSWER_TIMEOUT).json()
            seen.update(via_entries(report))
            pids.add(report["connection_id"])
        return seen if len(proxy.worker_pids()) == 2 else None

    seen = wait_for(ids_seen, what="two workers")
    assert len(seen) == 1, seen
    assert re.fullmatch(r"1\.1 cjs-[0-9a-f]{12}", seen.pop())


def test_frontend_routed_to_the_proxy_itself_gets_508(make_proxy, rdb, host):
    proxy = make_proxy(server_tcpTimeout=3)
    rdb.rpush(f"frontend:{host}", "loop", proxy.url)
    answer = requests.get(f"{proxy.url}/", headers={"Host": host}, timeout=ANSWER_TIMEOUT)
    assert answer.status_code == 508
    assert "<title>Loop detected</title>" in answer.text
    assert (ROOT / "errors" / "508.html").read_bytes() == answer.content
    # One hop forwarded it, the next refused it: two log lines, not a hundred.
    lines = wait_for(lambda: [x for x in proxy.access_log.read_text().splitlines() if " 508 " in x][1:] and
                     proxy.access_log.read_text().splitlines(), what="both hops logged")
    assert len(lines) == 2, lines
    assert sum('"loop"' in line for line in lines) == 1  # the second hop refused it before routing


def test_websocket_upgrade_looping_to_the_proxy_gets_508(make_proxy, rdb, host):
    proxy = make_proxy(server_tcpTimeout=3)
    rdb.rpush(f"frontend:{host}", "loop", proxy.url)
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"ws://127.0.0.1:{proxy.port}/echo", host=host, timeout=ANSWER_TIMEOUT)
    assert refused.value.status_code == 508


def test_a_request_naming_another_node_passes(make_proxy, rdb, backends, host):
    proxy = make_proxy(server_nodeId="edge-7")
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=ANSWER_TIMEOUT) as sock:
        sock.sendall(f"GET /echo HTTP/1.1\r\nHost: {host}\r\nVia: 1.1 edge-77, 1.1 edge\r\n"
                     "Connection: close\r\n\r\n".encode())
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
