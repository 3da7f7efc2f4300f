"""Hipache driver URLs to redis-py URLs and key prefixes (no Redis needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from cjs_proxy import config
from cjs_proxy.pipeline.redis_keys import KeySpace, split_driver_url


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://:pw@h:1/2#pre", ("redis://:pw@h:1/2", "pre")),
    ("redis://127.0.0.1:6379/0", ("redis://127.0.0.1:6379/0", "")),
    ("redis://db.example:6380/3#app:", ("redis://db.example:6380/3", "app:")),
    ("rediss://user:pw@secure.example:6380/0#p", ("rediss://user:pw@secure.example:6380/0", "p")),
    ("redis://h", ("redis://h", "")),
    ("redis://[::1]:6379/0", ("redis://[::1]:6379/0", "")),
    ("redis://h:1/0?socket_timeout=5#x", ("redis://h:1/0?socket_timeout=5", "x")),
])
def test_split_driver_url(url: str, expected: tuple[str, str]) -> None:
    assert split_driver_url(url) == expected


@pytest.mark.parametrize(("url", "expected"), [
    ("redis:", ("redis://127.0.0.1:6379", "")),
    ("redis:#pre", ("redis://127.0.0.1:6379", "pre")),
    ("redis://", ("redis://127.0.0.1:6379", "")),
    ("redis:///2", ("redis://127.0.0.1:6379/2", "")),
    ("redis://:secret@", ("redis://:secret@127.0.0.1:6379", "")),
    ("redis://:secret@/1#p", ("redis://:secret@127.0.0.1:6379/1", "p")),
    ("rediss:", ("rediss://127.0.0.1:6379", "")),
])
def test_bare_redis_means_localhost(url: str, expected: tuple[str, str]) -> None:
    assert split_driver_url(url) == expected


@pytest.mark.parametrize(("url", "expected"), [
    ("unix:///run/redis/redis.sock", ("unix:///run/redis/redis.sock", "")),
    ("unix:///run/redis/redis.sock#pre", ("unix:///run/redis/redis.sock", "pre")),
    ("unix:///tmp/r.sock?db=2#pre", ("unix:///tmp/r.sock?db=2", "pre")),
    ("unix://:pw@/tmp/r.sock", ("unix://:pw@/tmp/r.sock", "")),
])
def test_unix_urls_keep_their_path(url: str, expected: tuple[str, str]) -> None:
    assert split_driver_url(url) == expected


@pytest.mark.parametrize("url", [
    "redis://:pw@h:1/2#pre",
    "redis:",
    "rediss://h:6380/0",
    "unix:///tmp/r.sock?db=2#pre",
])
def test_redis_py_accepts_the_split_url(url: str) -> None:
    """redis-py parses the result without connecting (it insists on scheme://)."""
    redis_url, _prefix = split_driver_url(url)
    pool = redis.ConnectionPool.from_url(redis_url)
    pool.disconnect()


def test_redis_py_reads_the_parts() -> None:
    pool = redis.ConnectionPool.from_url(split_driver_url("redis://:pw@h:1/2#pre")[0])
    assert pool.connection_kwargs["host"] == "h"
    assert pool.connection_kwargs["port"] == 1
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "pw"
    unix = redis.ConnectionPool.from_url(split_driver_url("unix:///tmp/r.sock?db=3")[0])
    assert unix.connection_kwargs["path"] == "/tmp/r.sock"
    assert unix.connection_kwargs["db"] == 3


def test_embedded_driver_url_is_usable(tmp_path: Path) -> None:
    settings = config.parse_settings({"embedded": {"dataDir": str(tmp_path)}})
    read_url, _ = config.driver_urls(settings)
    redis_url, prefix = split_driver_url(read_url)
    assert prefix == ""
    pool = redis.ConnectionPool.from_url(redis_url)
    assert pool.connection_kwargs["path"] == str(tmp_path / "redis.sock")


def test_prefix_applies_to_every_routing_key() -> None:
    keys = KeySpace("pre:")
    assert keys.frontend("app.example") == "pre:frontend:app.example"
    assert keys.dead("app.example") == "pre:dead:app.example"
    assert keys.tier("*.app.example") == "pre:tier:*.app.example"
    assert keys.routing_prefixes() == [
        "pre:frontend:", "pre:dead:", "pre:tier:", "pre:backends:", "pre:identifier:", "pre:deadurls:",
        "pre:balance:", "pre:weights:"]
    assert keys.host_of_frontend("pre:frontend:*.example") == "*.example"
    assert KeySpace().frontend("*.example") == "frontend:*.example"
