"""WebSocket tunnelling through the real proxy to a real WebSocket backend."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
import websocket
import websockets

from tests.harness import ANSWER_TIMEOUT, wait_for


def connect(proxy, host, path="/echo", **kwargs):
    return websocket.create_connection(f"ws://127.0.0.1:{proxy.port}{path}", host=host, timeout=ANSWER_TIMEOUT,
                                       **kwargs)


@pytest.fixture()
def ws_host(rdb, ws_backend, host):
    rdb.rpush(f"frontend:{host}", "ws-app", ws_backend.url)
    return host


def test_text_and_binary_echo(proxy, ws_host):
    ws = connect(proxy, ws_host)
    try:
        ws.send("hello")
        assert ws.recv() == "hello"
        ws.send_binary(bytes(range(256)))
        assert ws.recv() == bytes(range(256))
    finally:
        ws.close()


def test_ten_mebibyte_message(proxy, ws_host):
    payload = bytes(range(256)) * (40 * 1024)  # 10 MiB
    ws = connect(proxy, ws_host)
    try:
        ws.send_binary(payload)
        assert ws.recv() == payload
    finally:
        ws.close()


def test_greeting_sent_right_after_the_handshake_arrives(proxy, ws_host):
    ws = connect(proxy, ws_host, "/hello")
    try:
        assert ws.recv() == "hello"
        ws.send("again")
        assert ws.recv() == "again"
    finally:
        ws.close()


def test_upgrade_carries_forwarded_headers(proxy, ws_host):
    ws = connect(proxy, ws_host, "/headers", header={"X-Forwarded-For": "198.51.100.1"})
    try:
        headers = json.loads(ws.recv())
    finally:
        ws.close()
    assert headers["Host"] == ws_host
    assert headers["X-Forwarded-For"] == "198.51.100.1, 127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Port"] == str(proxy.port)
    assert "Sec-Websocket-Key" in headers


def test_backend_closing_first_ends_the_tunnel_and_logs_it(proxy, ws_host):
    ws = connect(proxy, ws_host, "/close-first")
    ws.send("only one")
    assert ws.recv() == "only one"
    opcode, _ = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    ws.shutdown()  # websocket-client's close() keeps the socket once the peer closed
    lines = wait_for(lambda: [line for line in proxy.access_log.read_text().splitlines()
                              if '"ws-app"' in line and "/close-first" in line], "the tunnel's access log line")
    assert '" 101 ' in lines[0] and " ws=" in lines[0]


def test_client_closing_first_ends_the_tunnel(proxy, ws_host):
    ws = connect(proxy, ws_host)
    ws.send("x" * 1000)
    assert ws.recv() == "x" * 1000
    ws.close()
    pattern = re.compile(r'"GET /echo HTTP/1.1" 101 \d+ .* ws=(\d+)/(\d+) ')
    wait_for(lambda: next((m for m in map(pattern.search, proxy.access_log.read_text().splitlines())
                           if m and int(m.group(1)) >= 1000), None), "the tunnel's access log line")


def test_refused_upgrade_is_relayed_as_a_normal_response(proxy, rdb, backends, host):
    rdb.rpush(f"frontend:{host}", "plain-app", backends[0].url)  # an HTTP-only backend
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(proxy, host, "/status/403")
    assert info.value.status_code == 403
    assert info.value.resp_body == b"status 403\n"


def test_unknown_host_gets_the_400_page_not_a_hanging_socket(proxy, rdb):
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(proxy, "nobody-here.test")
    assert info.value.status_code == 400
    assert b"<title>Bad request</title>" in info.value.resp_body


def test_idle_tunnel_is_closed(make_proxy, ws_host):
    proxy = make_proxy(websocket={"idleTimeout": 1})
    ws = connect(proxy, ws_host)
    try:
        ws.send("ping")
        assert ws.recv() == "ping"
        started = time.monotonic()
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            ws.recv()
        assert time.monotonic() - started < 8
    finally:
        ws.close()


def test_thousand_concurrent_tunnels_through_one_worker(make_proxy, rdb, ws_backend):
    """1,000 open WebSockets on a single worker, each echoing, all at once."""
    proxy = make_proxy(server_workers=1, server_workerConnections=3000)
    rdb.rpush("frontend:127.0.0.1", "ws-many", ws_backend.url)

    async def one(i: int) -> bool:
        async with websockets.connect(f"ws://127.0.0.1:{proxy.port}/echo", open_timeout=60,
                                      close_timeout=10, max_size=None) as ws:
            await ws.send(f"message {i}")
            await asyncio.sleep(1)  # all of them open at the same time
            return await asyncio.wait_for(ws.recv(), 60) == f"message {i}"

    async def main() -> list:
        return await asyncio.gather(*(one(i) for i in range(1000)), return_exceptions=True)

    results = asyncio.run(main())
    failures = [r for r in results if r is not True]
    assert failures == []


def test_tunnels_per_backend_are_bounded(make_proxy, rdb, ws_backend, host):
    """websocket.maxPerBackend: tunnels are outside the pools; past the bound, 503, and a slot
    comes back when a tunnel ends."""
    proxy = make_proxy(websocket_maxPerBackend=2)
    rdb.rpush(f"frontend:{host}", "ws-app", ws_backend.url)
    open_tunnels = [connect(proxy, host) for _ in range(2)]
    try:
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            connect(proxy, host)
        assert refused.value.status_code == 503
        open_tunnels.pop().close()

        def reopened():
            try:
                open_tunnels.append(connect(proxy, host))
            except websocket.WebSocketBadStatusException:
                return False
            return True

        wait_for(reopened, what="a tunnel slot given back")
        open_tunnels[-1].send("still works")
        assert open_tunnels[-1].recv() == "still works"
    finally:
        for ws in open_tunnels:
            ws.close()
