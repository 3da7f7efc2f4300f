"""The monitoring settings: admin listeners, metrics labels, the access log format."""

from __future__ import annotations

import pytest

from cjs_proxy import config
from cjs_proxy.config import ConfigError, parse_settings


def test_admin_listens_on_loopback_9145_by_default() -> None:
    settings = parse_settings({})
    assert config.admin_addresses(settings) == [("127.0.0.1", 9145)]
    assert settings["metrics.perFrontend"] is False
    assert settings["metrics.maxFrontends"] == 100
    assert settings["server.accessLogFormat"] == "combined"


def test_admin_bind_takes_addresses_like_http_bind() -> None:
    settings = parse_settings({"admin": {"port": 9200, "bind": ["127.0.0.1", {"address": "::1", "port": 9300}]}})
    assert config.admin_addresses(settings) == [("127.0.0.1", 9200), ("::1", 9300)]


def test_an_empty_admin_bind_turns_it_off() -> None:
    assert config.admin_addresses(parse_settings({"admin": {"bind": []}})) == []


def test_admin_cannot_share_a_public_listener() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"http": {"port": 8080}, "admin": {"bind": [{"address": "127.0.0.1", "port": 8080}]}})
    assert caught.value.key == "admin.bind"


@pytest.mark.parametrize(("raw", "key"), [
    ({"server": {"accessLogFormat": "apache"}}, "server.accessLogFormat"),
    ({"metrics": {"maxFrontends": 0}}, "metrics.maxFrontends"),
    ({"metrics": {"perFrontend": "yes"}}, "metrics.perFrontend"),
    ({"admin": {"bind": "not-an-ip"}}, "admin.bind"),
])
def test_wrong_values_name_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw)
    assert caught.value.key == key
