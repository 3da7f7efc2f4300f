"""The admin listener and the master's metrics folder, in-process and against real sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cjs_proxy.lifecycle.admin_server import AdminBindError, AdminPages, AdminServer, Readiness, RedisProbe
from cjs_proxy.lifecycle.monitoring import ENV, Monitoring, prepare_folder, scrape


class FakeRedis:
    """A one-thread RESP server on loopback answering each command with the next canned reply."""

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = replies
        self.received: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            for reply in self.replies:
                self.received.append(conn.recv(512))
                conn.sendall(reply)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.fixture()
def fake_redis() -> Iterator[list[FakeRedis]]:
    started: list[FakeRedis] = []
    yield started
    for server in started:
        server.close()


def test_probe_pings(fake_redis: list[FakeRedis]) -> None:
    server = FakeRedis([b"+PONG\r\n"])
    fake_redis.append(server)
    assert RedisProbe(f"redis://127.0.0.1:{server.port}/0", 2)() is None
    assert server.received == [b"*1\r\n$4\r\nPING\r\n"]


def test_probe_authenticates_first(fake_redis: list[FakeRedis]) -> None:
    server = FakeRedis([b"+OK\r\n", b"+PONG\r\n"])
    fake_redis.append(server)
    assert RedisProbe(f"redis://:s%40cret@127.0.0.1:{server.port}/0", 2)() is None
    assert server.received[0] == b"*2\r\n$4\r\nAUTH\r\n$6\r\ns@cret\r\n"


def test_probe_reports_an_error_reply(fake_redis: list[FakeRedis]) -> None:
    server = FakeRedis([b"-LOADING Redis is loading the dataset in memory\r\n"])
    fake_redis.append(server)
    problem = RedisProbe(f"redis://127.0.0.1:{server.port}", 2)()
    assert problem is not None and "LOADING" in problem


def test_probe_reports_an_unreachable_redis() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        problem = RedisProbe(f"redis://127.0.0.1:{port}", 1)()
    assert problem is not None and problem.startswith("redis unreachable")


def test_probe_speaks_unix_sockets(tmp_path: Path) -> None:
    assert "unreachable" in (RedisProbe(f"unix://{tmp_path}/none.sock", 1)() or "")


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_readiness_follows_redis_then_the_stale_window() -> None:
    answers: list[str | None] = ["down", None, "down", "down"]
    clock = Clock()
    readiness = Readiness(lambda: answers.pop(0), stale_ttl=60, clock=clock)
    assert readiness.check() == (False, "not ready: down")  # never answered yet
    assert readiness.check()[0] is True
    clock.now += 30
    ready, reason = readiness.check()
    assert ready and "stale" in reason
    clock.now += 31
    assert readiness.check() == (False, "not ready: down")


def test_pages() -> None:
    pages = AdminPages(lambda: (b"m 1\n", "text/plain"), Readiness(lambda: None, 0), alive=lambda: False)
    assert pages.answer("/metrics") == (200, "text/plain", b"m 1\n")
    assert pages.answer("/healthz")[0] == 503
    assert pages.answer("/readyz?verbose=1")[:2] == (200, "text/plain; charset=utf-8")
    assert pages.answer("/")[0] == 404


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_admin_server_serves_and_closes() -> None:
    pages = AdminPages(lambda: (b"m 1\n", "text/plain"), Readiness(lambda: "down", 0))
    admin = AdminServer([("127.0.0.1", 0)], pages)
    admin.start()
    try:
        address, port = admin.addresses[0]
        assert get(f"http://{address}:{port}/healthz") == (200, b"ok\n")
        assert get(f"http://{address}:{port}/readyz") == (503, b"not ready: down\n")
        assert get(f"http://{address}:{port}/metrics") == (200, b"m 1\n")
    finally:
        admin.close()
    with pytest.raises(OSError):
        socket.create_connection((address, port), timeout=1).close()


def test_a_busy_admin_port_is_an_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(AdminBindError, match=f"admin.bind 127.0.0.1:{port}"):
            AdminServer([("127.0.0.1", 0), ("127.0.0.1", port)], AdminPages(lambda: (b"", ""), Readiness(
                lambda: None, 0)))


def test_an_operator_folder_is_wiped_ours_is_fresh(tmp_path: Path) -> None:
    (tmp_path / "counter_1.db").write_bytes(b"old")
    environ = {ENV: str(tmp_path)}
    assert prepare_folder(environ) == (tmp_path, False)
    assert list(tmp_path.iterdir()) == []
    environ = {}
    folder, owned = prepare_folder(environ)
    try:
        assert owned and environ[ENV] == str(folder) and folder.is_dir()
    finally:
        folder.rmdir()


WORKER = """
from cjs_proxy.pipeline.metrics import Metrics
metrics = Metrics()
for _ in range({n}):
    metrics.started()
    metrics.finished(200, 0.01, 0.005, "app", 0)
metrics.started()  # still in flight when it exits
metrics.flush()
"""


def run_worker(folder: Path, n: int) -> int:
    env = {**os.environ, ENV: str(folder)}
    proc = subprocess.run([sys.executable, "-c", WORKER.format(n=n)], env=env, check=True, timeout=60)
    return proc.returncode


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no {name} {labels} in the scrape")


def test_scrape_sums_processes_and_dead_ones_keep_their_counts(tmp_path: Path) -> None:
    """Two processes write their files; a scrape sums them, and their live gauges leave with them."""
    run_worker(tmp_path, 3)
    run_worker(tmp_path, 4)
    text = scrape(tmp_path)[0].decode()
    assert sample(text, "cjs_proxy_requests_total", code="2xx") == 7
    assert sample(text, "cjs_proxy_request_duration_seconds_count") == 7
    monitoring = Monitoring.__new__(Monitoring)
    monitoring.folder = tmp_path
    for db in tmp_path.glob("gauge_livesum_*.db"):
        monitoring.worker_exited(int(db.stem.rsplit("_", 1)[1]))
    text = scrape(tmp_path)[0].decode()
    assert sample(text, "cjs_proxy_requests_total", code="2xx") == 7
    assert "cjs_proxy_inflight_requests" not in {s.name for f in text_string_to_metric_families(text)
                                                 for s in f.samples}
