"""Sentinel driver URLs: parsing, the config check's messages, the readiness probe's reply parsing."""

from __future__ import annotations

import pytest

from cjs_proxy.admin.cli import main as cli_main
from cjs_proxy.admin.cli import redis_cli_target
from cjs_proxy.config import ConfigError, parse_settings
from cjs_proxy.lifecycle.sentinel_probe import master_address_reply
from cjs_proxy.pipeline.sentinel_url import SentinelTarget, is_sentinel_url, parse_sentinel_url
from cjs_proxy.pipeline.store import reads_from_replicas


def test_full_url() -> None:
    url = "rediss+sentinel://me:s%40cret@10.0.0.1:26379,[::1]:26380,sentinel-c/mymaster/3?replicas=true#app:"
    assert parse_sentinel_url(url) == SentinelTarget(
        sentinels=(("10.0.0.1", 26379), ("::1", 26380), ("sentinel-c", 26379)), service="mymaster", db=3,
        username="me", password="s@cret", tls=True, replicas=True, prefix="app:")


def test_minimal_url_defaults() -> None:
    target = parse_sentinel_url("redis+sentinel://127.0.0.1/mymaster")
    assert (target.sentinels, target.db, target.password, target.tls, target.replicas, target.prefix) == \
        ((("127.0.0.1", 26379),), 0, None, False, False, "")


def test_password_only_and_sentinel_password() -> None:
    target = parse_sentinel_url("redis+sentinel://:pw@h:1/m?sentinelPassword=sp&replicas=no")
    assert (target.username, target.password, target.sentinel_password, target.replicas) == (None, "pw", "sp", False)


@pytest.mark.parametrize(("url", "sentinel"), [
    ("redis+sentinel://h/m", True), ("REDISS+SENTINEL://h/m", True),
    ("redis://h/0", False), ("unix:///tmp/r.sock", False), ("sentinel://h/m", False),
])
def test_is_sentinel_url(url: str, sentinel: bool) -> None:
    assert is_sentinel_url(url) is sentinel


@pytest.mark.parametrize(("url", "says"), [
    ("redis+sentinel://h:1,h:2", "names no master"),
    ("redis+sentinel://h:1/", "names no master"),
    ("redis+sentinel:///m", "names no sentinel"),
    ("redis+sentinel://h:99999/m", "no valid port"),
    ("redis+sentinel://h:x/m", "no valid port"),
    ("redis+sentinel://h:1,:2/m", "has no host"),
    ("redis+sentinel://h/m/zero", "only a database number"),
    ("redis+sentinel://h/m/0/1", "only a database number"),
    ("redis+sentinel://h/m?replica=true", "unknown parameter ?replica="),
    ("redis+sentinel://h/m?replicas=maybe", "must be true or false"),
])
def test_malformed_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("?", r"\?")):
        parse_sentinel_url(url)


def test_config_check_names_file_key_and_problem() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"driver": "redis+sentinel://h:1,h:2"}, "/etc/cjs/prod.yaml")
    assert info.value.key == "driver"
    assert "/etc/cjs/prod.yaml" in str(info.value) and "names no master" in str(info.value)


def test_check_config_command_says_what_is_wrong(tmp_path, capsys) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("driver: 'redis+sentinel://10.0.0.1:26379,10.0.0.2:99999/mymaster'\n")
    assert cli_main(["check-config", str(path)]) == 1
    error = capsys.readouterr().err
    assert str(path) in error and "driver" in error and "10.0.0.2:99999" in error and "no valid port" in error


def test_config_accepts_sentinel_urls_in_the_two_url_form() -> None:
    urls = ["redis+sentinel://h:1/m?replicas=true", "redis+sentinel://h:1/m"]
    assert parse_settings({"driver": urls})["driver"] == tuple(urls)


def test_reads_from_replicas() -> None:
    assert reads_from_replicas("redis+sentinel://h/m?replicas=true")
    assert not reads_from_replicas("redis+sentinel://h/m")
    assert not reads_from_replicas("redis://h/0?replicas=true")


def test_redis_cli_target_for_plain_urls() -> None:
    assert redis_cli_target("unix:///run/r.sock") == ["-s", "/run/r.sock"]
    assert redis_cli_target("redis://h:1/2#p") == ["-u", "redis://h:1/2"]


@pytest.mark.parametrize(("reply", "address"), [
    (b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n", ("127.0.0.1", 6380)),
    (b"*-1\r\n", None),
    (b"-ERR unknown\r\n", None),
])
def test_master_address_reply(reply: bytes, address: tuple[str, int] | None) -> None:
    assert master_address_reply(reply) == address
