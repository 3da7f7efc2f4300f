"""Operating the proxy: the embedded store, the access log and its rotation, Redis outages."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from cjs_proxy.lifecycle.embedded import ping
from tests.harness import ANSWER_TIMEOUT, ROOT, Proxy, RedisServer, port_open, wait_for

TIMEOUT = ANSWER_TIMEOUT


def get(proxy: Proxy, host: str, path: str = "/echo", **headers: str) -> requests.Response:
    return requests.get(f"{proxy.url}{path}", headers={"Host": host, "Connection": "close", **headers},
                        timeout=TIMEOUT)


# -------------------------------------------------------------- embedded store


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CJS_PROXY_", "SETTINGS_FLAVOR"))}
    return subprocess.run([sys.executable, "-m", "cjs_proxy.admin.cli", "--config", str(config_path), *args],
                          capture_output=True, text=True, timeout=30, env=environ, cwd=ROOT)


def test_embedded_store_lifecycle_and_persistence(tmp_path, data_dir, backends, host):
    sock = data_dir / "redis.sock"
    first = Proxy(tmp_path / "first", None, embedded={"dataDir": str(data_dir)})
    try:
        assert "driver" not in first.config
        assert sock.exists() and ping(sock)
        assert get(first, host).status_code == 400

        added = cli(first.config_path, "add", host, "embedded-app", backends[1].url)
        assert added.returncode == 0, added.stderr
        response = get(first, host)
        assert response.status_code == 200
        assert response.json()["server"] == "b"
        shown = cli(first.config_path, "show", host)
        assert shown.returncode == 0 and "embedded-app" in shown.stdout
    finally:
        first.stop()
    assert first.proc.returncode == 0, first.log()[-2000:]
    wait_for(lambda: not ping(sock), "embedded redis-server still answering after the proxy stopped")

    second = Proxy(tmp_path / "second", None, embedded={"dataDir": str(data_dir)})
    try:
        assert ping(sock)
        response = get(second, host)
        assert response.status_code == 200, "route lost across a restart"
        assert response.json()["server"] == "b"
        assert host in cli(second.config_path, "list").stdout
    finally:
        second.stop()
    wait_for(lambda: not ping(sock), "embedded redis-server still answering after the second stop")


# ------------------------------------------------------------------ access log


LINE = re.compile(
    r'^(?P<ip>127\.0\.0\.1) - - \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] '
    r'"(?P<method>GET) (?P<uri>\S+) (?P<proto>HTTP/1\.1)" (?P<status>\d{3}) (?P<bytes>\d+) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)" "(?P<vhost>[^"]*)" (?P<upstream>\S+) '
    r'(?P<total>\d+\.\d{3}) (?P<backend>\d+\.\d{3}|-) (?P<request_id>\S+)$'
)


def log_lines(path: Path, marker: str) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if marker in line]


def test_access_log_line_format(proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "log-app", backends[0].url)
    marker = uuid.uuid4().hex
    response = get(proxy, host, f"/echo?m={marker}", Referer="http://ref.example/", **{"User-Agent": "log-agent/1"})
    assert response.status_code == 200
    lines = wait_for(lambda: log_lines(proxy.access_log, marker), "access log line")
    assert len(lines) == 1, lines
    match = LINE.match(lines[0])
    assert match, lines[0]
    assert match["uri"] == f"/echo?m={marker}"
    assert match["status"] == "200"
    assert int(match["bytes"]) == len(response.content)
    assert match["referer"] == "http://ref.example/"
    assert match["agent"] == "log-agent/1"
    assert match["vhost"] == "log-app"
    assert match["upstream"] == f"127.0.0.1:{backends[0].port}"
    assert float(match["backend"]) <= float(match["total"])
    assert re.fullmatch(r"[0-9a-f]{32}", match["request_id"])
    # The backend saw the same request id.
    forwarded = {k.lower(): v for k, v in response.json()["headers"]}
    assert forwarded.get("x-request-id") == match["request_id"]


def test_access_log_line_for_proxy_errors(proxy, rdb, host):
    marker = uuid.uuid4().hex
    assert get(proxy, host, f"/?m={marker}").status_code == 400
    lines = wait_for(lambda: log_lines(proxy.access_log, marker), "access log line")
    match = LINE.match(lines[0])
    assert match, lines[0]
    assert (match["status"], match["vhost"], match["upstream"], match["backend"]) == ("400", "-", "-", "-")


def test_sigusr1_reopens_access_log(proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "rotate-app", backends[0].url)
    log = proxy.access_log
    rotated = log.with_name(f"access.log.{uuid.uuid4().hex[:6]}")

    def request(marker: str) -> str:
        """Send a request marked ``marker``; the worker that answered it."""
        response = get(proxy, host, f"/echo?m={marker}", **{"X-Debug": "1"})
        assert response.status_code == 200
        return response.headers["x-debug-worker"]

    before = uuid.uuid4().hex
    request(before)
    wait_for(lambda: log_lines(log, before), "line before rotation")
    log.rename(rotated)
    try:
        proxy.send_signal(signal.SIGUSR1)

        reopened: set[str] = set()

        def every_worker_reopened() -> bool:
            """One more request: its worker has reopened if its line lands in the new file."""
            marker = uuid.uuid4().hex
            worker = request(marker)
            wait_for(lambda: log_lines(log, marker) or log_lines(rotated, marker), "the request's log line")
            if log_lines(log, marker):
                reopened.add(worker)
            return reopened >= {str(pid) for pid in proxy.worker_pids()}

        wait_for(every_worker_reopened, "a line from every worker in a fresh access.log after SIGUSR1")
        # Every worker has reopened: new requests land in the new file only.
        markers = [uuid.uuid4().hex for _ in range(20)]
        for marker in markers:
            request(marker)
        wait_for(lambda: all(log_lines(log, m) for m in markers), "all lines in the new file")
        assert not any(log_lines(rotated, m) for m in markers)
        assert log_lines(rotated, before)
    finally:
        if not log.exists():  # leave the shared proxy a log where other tests look
            rotated.rename(log)
            proxy.send_signal(signal.SIGUSR1)


def test_sigusr1_while_workers_boot_does_not_kill_the_proxy(make_proxy, tmp_path):
    """logrotate may signal while a worker is still loading the app (after a restart)."""
    booting = make_proxy(wait=False, server_workers=2)
    booting.wait_until(lambda: port_open(booting.port), what="proxy master")  # handlers installed
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and booting.alive():
        booting.send_signal(signal.SIGUSR1)
        time.sleep(0.05)
    booting.wait_until(booting.ready, what="proxy after SIGUSR1 during boot")
    time.sleep(0.5)
    assert booting.alive(), booting.log()[-2000:]
    output = booting.log()
    assert "Exception in worker process" not in output, output[-2000:]
    assert "Worker failed to boot" not in output
    assert get(booting, "__ping__").status_code == 200


# --------------------------------------------------------------- Redis outages


def test_redis_outage_serves_stale_routes(tmp_path, make_proxy, backends, host):
    own_redis = RedisServer(tmp_path / "own-redis")
    try:
        # One worker: the last good route is remembered per worker. staleRouteTTL: default (60 s).
        proxy = make_proxy(redis_url=own_redis.url, server_workers=1)
        client = own_redis.client()
        client.rpush(f"frontend:{host}", "stale-app", backends[2].url)
        client.close()
        first = get(proxy, host)
        assert first.status_code == 200 and first.json()["server"] == "c"

        own_redis.stop()
        statuses = []
        started = time.monotonic()
        for _ in range(5):
            kept = get(proxy, host)
            statuses.append(kept.status_code)
            assert kept.status_code == 200, kept.text[:300]
            assert kept.json()["server"] == "c"
            unknown = get(proxy, f"unknown-{host}")
            statuses.append(unknown.status_code)
            assert unknown.status_code == 503, unknown.text[:300]
        assert 500 not in statuses
        assert time.monotonic() - started < 15, "requests waited on the missing Redis"
        assert proxy.alive()
    finally:
        own_redis.stop()
