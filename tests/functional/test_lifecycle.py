"""Worker lifecycle under a steady stream: recycling, the memory watchdog, reloads, signals, root.

Every test drives a bounded load (a few client threads, fixed counts or a short
time) through a real proxy while workers are replaced, and asserts that not one
request failed or was cut. Which worker answered comes from ``x-debug-worker``.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
import yaml

from cjs_proxy.lifecycle.embedded import ping
from tests.backend import PATTERN
from tests.harness import (
    ANSWER_TIMEOUT,
    GUNICORN_CONF,
    ROOT,
    WAIT,
    Backend,
    Process,
    Proxy,
    free_port,
    port_open,
    proxy_config,
    redis_server_binary,
    wait_for,
)

TIMEOUT = ANSWER_TIMEOUT

BLOCK = PATTERN * 16  # 1 MiB


class Stream:
    """Client threads, each with its own keep-alive session, sending GETs through the proxy.

    Records every failure (exception or non-200), the worker that answered each
    request, and the slowest request.
    """

    def __init__(self, proxy: Proxy, host: str, clients: int = 4, requests_each: int | None = None,
                 pause: float = 0.0) -> None:
        self.url = f"{proxy.url}/echo"
        self.headers = {"Host": host, "X-Debug": "1"}
        self.requests_each = requests_each
        self.pause = pause
        self.failures: list[str] = []
        self.workers: list[list[str | None]] = [[] for _ in range(clients)]
        self.slowest = 0.0
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Stream:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)

    def wait(self) -> None:
        for thread in self.threads:
            thread.join(60)

    @property
    def served(self) -> Counter[str | None]:
        return Counter(pid for seen in self.workers for pid in seen)

    def mark(self) -> list[int]:
        """How many answers each client has had so far: ``since`` looks at the ones after."""
        return [len(seen) for seen in self.workers]

    def since(self, mark: list[int]) -> list[str | None]:
        """The worker that gave each answer after ``mark``."""
        return [pid for seen, skip in zip(self.workers, mark, strict=True) for pid in seen[skip:]]

    def wait_for_answers(self, count: int, what: str, mark: list[int] | None = None) -> list[str | None]:
        """Wait until ``count`` more answers came (after ``mark``, else from now): a span of
        the stream measured in requests, so a loaded machine makes it longer, not emptier."""
        start = self.mark() if mark is None else mark

        def enough() -> list[str | None]:
            found = self.since(start)
            return found if len(found) >= count else []

        return wait_for(enough, what)

    def _client(self, index: int) -> None:
        session = requests.Session()
        sent = 0
        while not self.stopping.is_set() and (self.requests_each is None or sent < self.requests_each):
            started = time.monotonic()
            try:
                response = session.get(self.url, headers=self.headers, timeout=TIMEOUT)
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")
                self.workers[index].append(response.headers.get("x-debug-worker"))
            except requests.RequestException as exc:
                self.failures.append(repr(exc))
            self.slowest = max(self.slowest, time.monotonic() - started)
            sent += 1
            if self.pause:
                time.sleep(self.pause)
        session.close()


def answered_by(proxy: Proxy, host: str) -> str | None:
    """The worker that answers one request on a new connection (``x-debug-worker``)."""
    response = requests.get(f"{proxy.url}/echo", headers={"Host": host, "X-Debug": "1", "Connection": "close"},
                            timeout=TIMEOUT)
    return response.headers.get("x-debug-worker")


@pytest.fixture()
def route(rdb: redis.Redis, backends, host: str) -> str:
    rdb.rpush(f"frontend:{host}", "lifecycle", backends[0].url)
    return host


def paced_upload(size: int, pace: float) -> Iterator[bytes]:
    for _ in range(size // len(BLOCK)):
        yield BLOCK
        time.sleep(pace)


# ------------------------------------------------------------------ recycling


def test_max_requests_recycles_every_worker_with_no_failed_request(make_proxy, route):
    """Each worker keeps serving while its successor boots (a second or more), so the
    pace of replacements is set by boots, not by ``maxRequests``: the clients run until
    both original workers and four in all are replaced (at most 1500 requests each).
    Connections are bounded too, so that every worker keeps getting clients."""
    proxy = make_proxy(server_workers=2, server_maxRequests=40, server_maxRequestsJitter=10,
                       server_maxRequestsPerConnection=25)
    first = set(proxy.worker_pids())
    with Stream(proxy, route, clients=4, requests_each=1500, pause=0.002) as stream:
        wait_for(lambda: proxy.log().count("stops accepting and drains") >= 4
                 and first.isdisjoint(proxy.worker_pids()), "four replacements")
    assert stream.failures == []
    served = stream.served
    assert len(served) >= 5, f"workers were not replaced several times: {served}"
    # Access-log lines are written once per loop turn: none may be lost when a worker goes.
    answered = sum(served.values())
    wait_for(lambda: logged_requests(proxy, "/echo") == answered,
             f"{answered} access-log lines for {answered} answers")


def logged_requests(proxy: Proxy, path: str) -> int:
    if not proxy.access_log.exists():
        return 0
    return proxy.access_log.read_text(encoding="utf-8", errors="replace").count(f'"GET {path} HTTP/1.1"')


def test_memory_watchdog_recycles_sole_worker_while_a_50_mib_upload_completes(make_proxy, route):
    """A 1 MiB limit: every worker is over it, so each is replaced about a second after
    it starts, the one receiving the upload included; with one worker, its successor
    accepts before it stops, so the other clients never wait for the upload to drain."""
    proxy = make_proxy(server_workers=1, server_maxMemoryMB=1, server_memoryCheckInterval=1)
    size = 50 * len(BLOCK)
    with Stream(proxy, route, clients=3, pause=0.01) as stream:
        response = requests.post(f"{proxy.url}/echo", data=paced_upload(size, pace=0.08), timeout=WAIT,
                                 headers={"Host": route, "X-Debug": "1", "Connection": "close"})
        wait_for(lambda: proxy.log().count("above server.maxMemoryMB") >= 3, "three workers recycled")
        stream.wait_for_answers(20, "answers after the upload")
    assert response.status_code == 200
    report = response.json()
    assert report["body_length"] == size
    assert report["body_sha256"] == hashlib.sha256(BLOCK * 50).hexdigest()
    uploader = response.headers["x-debug-worker"]
    log = proxy.log()
    assert f"worker {uploader}: resident memory" in log, "the upload's worker was not recycled under it"
    assert stream.failures == []
    assert len(stream.served) >= 2
    assert stream.slowest < 2.0, f"a request waited {stream.slowest:.1f}s: nobody was accepting"


def test_memory_watchdog_never_stalls_its_worker(make_proxy, route):
    """Checks under the limit every interval: requests keep flowing between the checks.

    A watchdog that slept for real (not gevent's sleep) would hold the whole worker for
    each interval: the clients would wait the interval or more, or time out. What is
    measured is that wait, against the interval; not how fast the machine is.
    """
    interval = 2
    proxy = make_proxy(server_workers=1, server_maxMemoryMB=100_000, server_memoryCheckInterval=interval)
    with Stream(proxy, route, clients=2, pause=0.01) as stream:
        stream.wait_for_answers(10, "first answers")
        time.sleep(2.5 * interval)  # a span with two checks in it: what is tested, not a synchronisation
    assert stream.failures == [] and len(stream.served) == 1
    assert stream.slowest < interval, f"a request waited {stream.slowest:.2f}s: the watchdog held the worker"


def test_keepalive_clients_spread_over_workers_again_after_a_recycle(make_proxy, route):
    """Six keep-alive clients, two workers; one worker is replaced (SIGTERM, as gunicorn
    recycles), so its clients reconnect to the other. Bounded requests per connection
    bring them back to the new worker; unbounded, they stay pinned to the survivor.

    Measured once the new worker answers, over 100 requests per client (five reconnections
    each when bounded): a count of requests, so a slow machine stretches the span instead
    of leaving too few requests in it."""

    def shares_after_recycle(per_connection: int) -> tuple[Counter[str | None], str]:
        proxy = make_proxy(server_workers=2, server_maxRequestsPerConnection=per_connection)
        with Stream(proxy, route, clients=6, pause=0.005) as stream:  # the same 6 clients throughout
            stream.wait_for_answers(60, "the clients under way")
            old, survivor = proxy.worker_pids()
            os.kill(old, signal.SIGTERM)  # gunicorn's own way to replace one worker
            wait_for(lambda: len(proxy.worker_pids()) == 2 and old not in proxy.worker_pids(), "replacement")
            (new,) = {str(pid) for pid in proxy.worker_pids()} - {str(survivor)}
            wait_for(lambda: answered_by(proxy, route) == new, "the new worker answering a new connection")
            start = stream.mark()
            wait_for(lambda: min(now - then for now, then in zip(stream.mark(), start, strict=True)) >= 100,
                     "100 more requests from every client")
        assert stream.failures == []
        return Counter(stream.since(start)), new

    bounded, new = shares_after_recycle(per_connection=20)
    assert bounded[new] >= 0.2 * sum(bounded.values()), f"new worker {new} got too little: {bounded}"
    pinned, new = shares_after_recycle(per_connection=0)
    assert pinned[new] == 0, f"control: unbounded connections left the survivor: {pinned}"


# ------------------------------------------------------------- reload, signals


def test_sighup_under_load_applies_the_new_config_with_no_failed_request(make_proxy, route):
    proxy = make_proxy(server_workers=2, server_debug=False)
    old_workers = set(proxy.worker_pids())
    with Stream(proxy, route, clients=4, pause=0.005) as stream:
        assert set(stream.wait_for_answers(40, "answers before the reload")) == {None}, "debug headers before reload"
        config = yaml.safe_load(proxy.config_path.read_text())
        config["server"]["debug"] = True
        proxy.config_path.write_text(yaml.safe_dump(config))
        proxy.send_signal(signal.SIGHUP)
        wait_for(lambda: old_workers.isdisjoint(proxy.worker_pids()) and len(proxy.worker_pids()) == 2,
                 "old workers replaced")
        stream.wait_for_answers(10, "first answers after the reload")  # none of them from an old worker
        after_reload = stream.wait_for_answers(40, "answers after the reload")
    assert stream.failures == []
    assert after_reload and None not in after_reload, "server.debug: true not in effect after SIGHUP"
    assert set(after_reload) <= set(map(str, proxy.worker_pids()))
    assert proxy.alive()


def test_embedded_store_survives_sighup_and_stops_with_the_proxy(tmp_path, data_dir, backends, host):
    sock = data_dir / "redis.sock"
    proxy = Proxy(tmp_path / "embedded", None, server_workers=1, embedded={"dataDir": str(data_dir)})
    try:
        store = redis.Redis(unix_socket_path=str(sock), decode_responses=True)
        store.rpush(f"frontend:{host}", "embedded", backends[0].url)
        redis_pid = store.info("server")["process_id"]
        old_workers = set(proxy.worker_pids()) - {redis_pid}  # redis-server is the master's child too
        proxy.send_signal(signal.SIGHUP)
        wait_for(lambda: old_workers.isdisjoint(proxy.worker_pids()) and len(proxy.worker_pids()) == 2,
                 "reload")
        response = wait_for(lambda: requests.get(f"{proxy.url}/echo", headers={"Host": host, "Connection": "close"},
                                                 timeout=TIMEOUT),
                            "answer after reload")
        assert response.status_code == 200
        assert store.info("server")["process_id"] == redis_pid, "embedded redis-server restarted by SIGHUP"
        store.close()
    finally:
        proxy.stop()
    assert proxy.proc.returncode == 0
    wait_for(lambda: not ping(sock), "embedded redis-server still answering after SIGTERM")


def test_the_embedded_redis_server_does_not_inherit_the_settings(tmp_path, data_dir):
    """Validated settings (a TLS passphrase among them) reach the workers in memory, never
    through the environment, which every child of the master (redis-server) inherits.

    redis-server writes its process title over its own environment block, so
    ``/proc/<pid>/environ`` is read by a wrapper script just before it becomes
    redis-server (``exec``): that is exactly what the server was given.
    """
    passphrase = f"not-for-redis-{uuid.uuid4().hex}"
    seen = tmp_path / "redis-server.environ"
    wrapper = tmp_path / "redis-server"
    wrapper.write_text(f'#!/bin/sh\ncat /proc/$$/environ > "{seen}"\nexec "{redis_server_binary()}" "$@"\n')
    wrapper.chmod(0o755)
    proxy = Proxy(tmp_path / "secret", None, server_workers=1, https={"passphrase": passphrase},
                  embedded={"dataDir": str(data_dir), "redisServer": str(wrapper)})
    try:
        environ = seen.read_bytes()
        assert b"CJS_PROXY_CONFIG=" in environ, "the wrapper did not capture redis-server's environment"
        assert passphrase.encode() not in environ
        assert b"CJS_PROXY_SETTINGS" not in environ
    finally:
        proxy.stop()
    assert proxy.proc.returncode == 0


def slow_request(proxy: Proxy, backend: Backend, host: str, delay: float, outcome: list[object]) -> threading.Thread:
    """A request the backend holds for ``delay`` seconds, in a thread; returns once the backend has it."""
    tag = uuid.uuid4().hex

    def run() -> None:
        try:
            outcome.append(requests.get(f"{proxy.url}/slow?delay={delay}&tag={tag}", timeout=TIMEOUT,
                                        headers={"Host": host, "Connection": "close"}))
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: requests.get(f"{backend.url}/under-way?tag={tag}", timeout=TIMEOUT).text == "yes" or outcome,
             "the slow request at the backend")
    return thread


def test_sigterm_drains_in_flight_requests(make_proxy, backends, route):
    proxy = make_proxy(server_workers=1)
    outcome: list[object] = []
    thread = slow_request(proxy, backends[0], route, 2, outcome)
    proxy.send_signal(signal.SIGTERM)
    wait_for(lambda: not port_open(proxy.port), "listener closed after SIGTERM")
    thread.join(TIMEOUT)
    assert isinstance(outcome[0], requests.Response) and outcome[0].status_code == 200, outcome
    assert proxy.proc.wait(TIMEOUT) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT], ids=["SIGINT", "SIGQUIT"])
def test_sigint_and_sigquit_stop_at_once(make_proxy, backends, route, sig):
    """The request would take 20 s: stopping well before that is stopping without draining it."""
    proxy = make_proxy(server_workers=1)
    outcome: list[object] = []
    thread = slow_request(proxy, backends[0], route, 20, outcome)
    started = time.monotonic()
    proxy.send_signal(sig)
    proxy.proc.wait(TIMEOUT)
    assert time.monotonic() - started < 10
    thread.join(TIMEOUT)
    assert isinstance(outcome[0], requests.ConnectionError), outcome


# -------------------------------------------------------------------- root


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop needs a proxy started as root")
NOBODY = "nobody"


def readable_by(user: str, *paths: str) -> bool:
    """Whether ``user`` can read every path (a forked child takes its identity and tries)."""
    entry = pwd.getpwnam(user)
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([entry.pw_gid])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            os._exit(0 if all(os.access(p, os.R_OK) for p in paths) else 1)
        finally:
            os._exit(2)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


STDLIB_FILE = os.path.join(sysconfig.get_paths()["stdlib"], "hashlib.py")


@pytest.fixture()
def shared_dir() -> Iterator[Path]:
    """A folder every user can read (pytest's own tmp folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="cjs-root-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def start_as_root(folder: Path, python: str, redis_url: str, **overrides: object) -> tuple[Process, int]:
    port = free_port()
    config = proxy_config(port, redis_url, Path("-"), **overrides)  # access log on stdout
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o644)
    env = {**os.environ, "CJS_PROXY_CONFIG": str(path)}
    env.pop("SETTINGS_FLAVOR", None)
    process = Process([python, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "cjs_proxy.wsgi"],
                      folder / "proxy.log", env=env)
    return process, port


@needs_root
def test_root_start_refuses_a_user_who_cannot_read_the_python_installation(shared_dir, redis_server):
    if readable_by(NOBODY, STDLIB_FILE):
        pytest.skip(f"{NOBODY} can read {STDLIB_FILE} here (see the successful drop test)")
    proxy, _ = start_as_root(shared_dir, sys.executable, redis_server.url, user=NOBODY, server_workers=1)
    try:
        assert proxy.proc.wait(TIMEOUT) == 2
    finally:
        proxy.stop()
    log = proxy.log()
    assert f"user '{NOBODY}'" in log and "cannot read the Python installation" in log, log
    assert STDLIB_FILE in log and "No module named" in log
    assert "Booting worker" not in log and "Listening at" not in log


def interpreter_readable_by_all(folder: Path) -> str:
    """This interpreter, reachable through ``folder`` (hard links: no copy, same files).

    The test environment's Python may live under /root, which no other user can enter;
    an operator would install it elsewhere. Its stdlib is linked here, and its
    ``site-packages`` (our virtualenv's packages) is added by a ``.pth`` file.
    """
    if readable_by(NOBODY, STDLIB_FILE):
        return sys.executable
    base = Path(sysconfig.get_paths()["stdlib"])
    lib = folder / "python" / "lib" / base.name
    lib.mkdir(parents=True)
    for item in base.iterdir():
        if item.name not in ("site-packages", "test"):
            subprocess.run(["cp", "-al", str(item), str(lib)], check=True)
    (lib / "site-packages").mkdir()
    (lib / "site-packages" / "cjs-venv.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    binary = folder / "python" / "bin" / Path(sys.executable).name
    binary.parent.mkdir()
    os.link(os.path.realpath(sys.executable), binary)
    for path in (folder / "python").rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    return str(binary)


@needs_root
def test_workers_drop_root_for_the_user_and_only_its_groups(shared_dir, redis_server, rdb, backends, host):
    if not readable_by(NOBODY, str(ROOT / "cjs_proxy" / "wsgi.py"), sysconfig.get_paths()["purelib"]):
        pytest.skip(f"{NOBODY} cannot read the checkout or the virtualenv")
    try:
        python = interpreter_readable_by_all(shared_dir)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot give {NOBODY} a readable interpreter here: {exc}")
    rdb.rpush(f"frontend:{host}", "dropped", backends[0].url)
    proxy, port = start_as_root(shared_dir, python, redis_server.url, user=NOBODY, server_workers=2)
    try:
        wait_for(lambda: port_open(port) and len(Path(f"/proc/{proxy.pid}/task/{proxy.pid}/children")
                                                   .read_text().split()) == 2, "proxy")
        response = wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/echo", timeout=TIMEOUT,
                                                 headers={"Host": host, "X-Debug": "1", "Connection": "close"}),
                            "answer")
        assert response.status_code == 200, proxy.log()
        nobody = pwd.getpwnam(NOBODY)
        workers = Path(f"/proc/{proxy.pid}/task/{proxy.pid}/children").read_text().split()
        assert response.headers["x-debug-worker"] in workers
        for pid in workers:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
            assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
            assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
            assert status["Groups"].split() == [str(g) for g in os.getgrouplist(NOBODY, nobody.pw_gid)]
        master = dict(line.split(":", 1) for line in Path(f"/proc/{proxy.pid}/status").read_text().splitlines())
        assert master["Uid"].split()[0] == "0"
    finally:
        proxy.stop()
    assert "Booting worker" in proxy.log()


def test_sighup_with_a_broken_config_keeps_the_running_one(make_proxy, route):
    proxy = make_proxy(server_workers=2, server_debug=True)
    good = proxy.config_path.read_text()
    proxy.config_path.write_text(good + "server:\n  wrokers: [\n")  # not even YAML
    old_workers = set(proxy.worker_pids())
    proxy.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in proxy.log(), "the refusal logged")
    wait_for(lambda: old_workers.isdisjoint(proxy.worker_pids()) and len(proxy.worker_pids()) == 2,
             "workers restarted on the running configuration")
    assert proxy.alive()
    assert str(proxy.config_path) in proxy.log()
    with Stream(proxy, route, clients=2, pause=0.01) as stream:
        stream.wait_for_answers(20, "answers after the refused reload")
    assert stream.failures == []
    assert None not in stream.served, "server.debug: true lost"
