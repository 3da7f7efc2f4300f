"""Fixtures: a real redis-server, three real backends and the real proxy, on loopback."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from cjs_proxy.lifecycle.embedded import ping
from tests.harness import Backend, Proxy, RedisServer, WebSocketBackend
from tests.scripted_backend import Answer, ScriptedBackend


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cjs")


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir / "redis")
    yield server
    server.stop()


@pytest.fixture()
def rdb(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on an emptied database."""
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def backends(workdir: Path) -> Iterator[list[Backend]]:
    started = [Backend(workdir / "backends", name) for name in ("a", "b", "c")]
    yield started
    for backend in started:
        backend.stop()


@pytest.fixture(scope="session")
def ws_backend(workdir: Path) -> Iterator[WebSocketBackend]:
    started = WebSocketBackend(workdir / "backends")
    yield started
    started.stop()


@pytest.fixture(scope="session")
def proxy(workdir: Path, redis_server: RedisServer) -> Iterator[Proxy]:
    """One shared proxy (2 workers) for tests that need no special settings."""
    started = Proxy(workdir / "proxy", redis_server.url, server_workers=2)
    yield started
    started.stop()


@pytest.fixture()
def make_proxy(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Proxy]]:
    """Start a proxy with its own settings (``server_tcpTimeout=1``...); stopped after the test."""
    started: list[Proxy] = []

    def start(redis_url: str | None = redis_server.url, **overrides: Any) -> Proxy:
        proxy = Proxy(tmp_path / f"proxy{len(started)}", redis_url, **overrides)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture()
def pair(tmp_path: Path) -> Iterator[list[Backend]]:
    """Two backends this test may kill."""
    started = [Backend(tmp_path, "left"), Backend(tmp_path, "right")]
    yield started
    for backend in started:
        backend.stop()


@pytest.fixture()
def data_dir() -> Iterator[Path]:
    """A short folder for the embedded store (unix socket paths are limited to 107 bytes).

    If a test fails before the proxy stops its redis-server, that server is shut down
    here through its own socket, so no process outlives the test.
    """
    folder = Path(tempfile.mkdtemp(prefix="cjs-emb-", dir="/tmp"))
    yield folder / "data"
    sock = folder / "data" / "redis.sock"
    if ping(sock):
        try:
            redis.Redis(unix_socket_path=str(sock), socket_timeout=2).shutdown(nosave=True)
        except redis.RedisError:
            pass  # shutdown closes the connection under the client
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def host() -> str:
    """A fresh host name, so tests never see each other's routes."""
    return f"app-{uuid.uuid4().hex[:10]}.test"


@pytest.fixture()
def make_scripted() -> Iterator[Callable[..., ScriptedBackend]]:
    """Start in-process raw-socket backends (see tests/scripted_backend.py).

    Every backend started is stopped after the test, whatever its outcome, so no
    thread or socket outlives it.
    """
    started: list[ScriptedBackend] = []

    def start(script: dict[str, Answer] | None = None) -> ScriptedBackend:
        backend = ScriptedBackend(script)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


@pytest.fixture()
def scripted(make_scripted: Callable[..., ScriptedBackend]) -> ScriptedBackend:
    """One scripted backend; tests add answers with ``scripted.script[path] = ...``."""
    return make_scripted()


@pytest.fixture()
def scripted_host(rdb: redis.Redis, scripted: ScriptedBackend, host: str) -> str:
    """``host`` routed to the scripted backend only."""
    rdb.rpush(f"frontend:{host}", "scripted-app", scripted.url)
    return host
