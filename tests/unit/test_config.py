"""The settings registry and the YAML loader: defaults, checks, legacy forms, paths."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from cjs_proxy import config
from cjs_proxy.config import (
    SETTINGS,
    SETTINGS_BY_KEY,
    ConfigError,
    Settings,
    check_files,
    config_path,
    driver_urls,
    listen_addresses,
    load_settings,
    parse_settings,
)


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(raw: Any, path: str = "/etc/cjs/test.yaml") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, path)
    return info.value


# ------------------------------------------------------------------------ registry


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_every_default_passes_its_own_check(setting: config.Setting) -> None:
    checked = setting.check(copy.deepcopy(setting.default))
    # Normalising is idempotent: a checked value passes its check unchanged.
    assert setting.check(copy.deepcopy(checked)) == checked
    if not isinstance(setting.default, (list, dict)):  # containers may be normalised
        assert checked == setting.default


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.key)
def test_every_setting_is_documented_and_typed(setting: config.Setting) -> None:
    assert setting.doc.strip()
    assert setting.type_name != "any"
    assert setting.key.count(".") <= 1


def test_keys_are_unique() -> None:
    assert len(SETTINGS_BY_KEY) == len(SETTINGS)


def test_settings_table_lists_every_key() -> None:
    table = config.settings_table()
    rows = table.splitlines()[2:]
    assert len(rows) == len(SETTINGS)
    for setting in SETTINGS:
        assert f"| `{setting.key}` |" in table


@pytest.mark.parametrize(("key", "value"), [
    ("server.debug", False),
    ("server.workers", 10),
    ("server.maxSockets", 100),
    ("server.tcpTimeout", 30),
    ("server.deadBackendTTL", 30),
    ("server.retryOnError", 3),
    ("server.httpKeepAlive", False),
    ("server.deadBackendOn500", True),
    ("server.staticDir", None),
    ("http.port", 80),
    ("http.bind", ["127.0.0.1"]),
    ("https.port", 443),
    ("https.bind", []),
    ("user", "www-data"),
    ("group", None),
])
def test_hipache_defaults(key: str, value: Any) -> None:
    assert SETTINGS_BY_KEY[key].default == value


# --------------------------------------------------------------------- whole files


def test_empty_file_gives_all_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ""))
    assert isinstance(settings, Settings)
    assert set(settings) == set(SETTINGS_BY_KEY)
    for setting in SETTINGS:
        if setting.is_path and setting.default is not None:
            continue  # resolved; checked below
        expected = setting.check(copy.deepcopy(setting.default))
        assert settings[setting.key] == expected, setting.key
    assert settings["server.accessLog"] == "/var/log/cjs-proxy/access.log"
    assert settings["embedded.dataDir"] == str(Path("~/.local/state/cjs-proxy/redis").expanduser())
    assert settings["http.bind"] == [{"address": "127.0.0.1", "port": None}]


def test_comment_only_file_gives_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "# nothing here\n"))
    assert settings["server.workers"] == 10


def test_settings_remember_their_file(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  workers: 3\n")
    settings = load_settings(path)
    assert settings.path == str(path)
    assert settings["server.workers"] == 3


def test_settings_are_read_only(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ""))
    with pytest.raises(TypeError):
        settings["server.workers"] = 4  # type: ignore[index]


def test_bundled_config_files_are_valid() -> None:
    etc = config.PACKAGE_ROOT / "etc"
    for name in ("config.yaml", "config_production.yaml"):
        settings = load_settings(etc / name)
        assert settings["server.workers"] >= 1


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


def test_unreadable_path_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)  # a folder
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize(("text", "line"), [
    ("server:\n  workers: 2\n\tbad: 1\n", 3),
    ("server: {workers: 2\nhttp: 3\n", 2),
    ("server:\n  workers: 2\n  - x\n", 3),
])
def test_bad_yaml_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "invalid YAML" in message
    assert f"line {line}," in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="top level") as info:
        load_settings(path)
    assert info.value.path == str(path)


def test_section_must_be_a_mapping() -> None:
    error = config_error({"server": 3})
    assert error.key == "server"


def test_null_section_is_all_defaults() -> None:
    settings = parse_settings({"server": None, "http": None})
    assert settings["server.workers"] == 10
    assert settings["http.port"] == 80


# -------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(("raw", "key", "suggestion"), [
    ({"server": {"maxSocket": 3}}, "server.maxSocket", "server.maxSockets"),
    ({"server": {"tcptimeout": 3}}, "server.tcptimeout", "server.tcpTimeout"),
    ({"drivr": "redis:"}, "drivr", "driver"),
    ({"http": {"prot": 80}}, "http.prot", "http.port"),
])
def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path, raw: dict[str, Any],
                                                key: str, suggestion: str) -> None:
    path = tmp_path / "c.yaml"
    error = config_error(raw, str(path))
    assert error.key == key
    assert str(error).startswith(f"{path}: {key}: unknown setting")
    assert f"did you mean '{suggestion}'?" in str(error)


def test_unknown_key_without_close_match_has_no_suggestion() -> None:
    error = config_error({"server": {"zzzzzzzz": 1}})
    assert error.key == "server.zzzzzzzz"
    assert "did you mean" not in str(error)


def test_unknown_key_in_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  wrokers: 4\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}: server.wrokers: ")
    assert "server.workers" in str(info.value)


# ------------------------------------------------------------------------- checks


@pytest.mark.parametrize(("text", "key"), [
    ('server:\n  workers: "4"\n', "server.workers"),
    ("server:\n  workers: true\n", "server.workers"),
    ("server:\n  workers: 0\n", "server.workers"),
    ("server:\n  retryOnError: -1\n", "server.retryOnError"),
    ("server:\n  maxSockets: 1.5\n", "server.maxSockets"),
    ("server:\n  tcpTimeout: 0\n", "server.tcpTimeout"),
    ("server:\n  tcpTimeout: -3\n", "server.tcpTimeout"),
    ("server:\n  tcpTimeout: yes\n", "server.tcpTimeout"),
    ("server:\n  debug: 1\n", "server.debug"),
    ('server:\n  debug: "true"\n', "server.debug"),
    ("server:\n  accessLog: 3\n", "server.accessLog"),
    ('server:\n  accessLog: ""\n', "server.accessLog"),
    ("server:\n  trustedProxies: 10.0.0.0/8\n", "server.trustedProxies"),
    ("server:\n  trustedProxies: [not-a-net]\n", "server.trustedProxies"),
    ("server:\n  maxRequestBodySize: -1\n", "server.maxRequestBodySize"),
    ("server:\n  staleRouteTTL: -1\n", "server.staleRouteTTL"),
    ("server:\n  maxSocketsPerClient: -1\n", "server.maxSocketsPerClient"),
    ("server:\n  maxSockets: 10\n  maxSocketsPerClient: 11\n", "server.maxSocketsPerClient"),
    ("server:\n  maxSocketsPerClient: 101\n", "server.maxSocketsPerClient"),
    ("http:\n  port: 65536\n", "http.port"),
    ("http:\n  port: -1\n", "http.port"),
    ('http:\n  port: "80"\n', "http.port"),
    ("http:\n  bind: [{address: 127.0.0.1, port: 70000}]\n", "http.bind"),
    ("http:\n  bind: [{address: 127.0.0.1, port: true}]\n", "http.bind"),
    ("http:\n  bind: [{port: 80}]\n", "http.bind"),
    ("http:\n  bind: example.com\n", "http.bind"),
    ("http:\n  bind: 80\n", "http.bind"),
    ("https:\n  port: 100000\n", "https.port"),
    ("https:\n  ca: [1, 2]\n", "https.ca"),
    ("user: true\n", "user"),
    ('user: ""\n', "user"),
    ("group: [a]\n", "group"),
])
def test_wrong_values_name_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.key == key
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: {key}: ")


def test_integer_message_says_what_was_given() -> None:
    error = config_error({"server": {"workers": "four"}})
    assert "expected an integer" in error.problem
    assert "'four'" in error.problem


def test_port_range_message() -> None:
    error = config_error({"http": {"port": 70000}})
    assert "out of range" in error.problem


@pytest.mark.parametrize(("raw", "key", "value"), [
    ({"server": {"tcpTimeout": 2.5}}, "server.tcpTimeout", 2.5),
    ({"server": {"tcpTimeout": 2}}, "server.tcpTimeout", 2.0),
    ({"server": {"retryOnError": 0}}, "server.retryOnError", 0),
    ({"server": {"staleRouteTTL": 0}}, "server.staleRouteTTL", 0),
    ({"server": {"keepAliveTimeout": 0}}, "server.keepAliveTimeout", 0),
    ({"server": {"connectTimeout": None}}, "server.connectTimeout", None),
    ({"server": {"connectTimeout": 0.5}}, "server.connectTimeout", 0.5),
    ({"server": {"maxRequestBodySize": 0}}, "server.maxRequestBodySize", 0),
    ({"server": {"maxSocketsPerClient": 0}}, "server.maxSocketsPerClient", 0),
    ({"server": {"maxSockets": 10, "maxSocketsPerClient": 10}}, "server.maxSocketsPerClient", 10),
    ({"server": {"accessLog": None}}, "server.accessLog", None),
    ({"server": {"trustedProxies": ["10.0.0.0/8", "::1"]}}, "server.trustedProxies",
     ["10.0.0.0/8", "::1"]),
    ({"http": {"port": 0}}, "http.port", 0),
    ({"http": {"port": 65535}}, "http.port", 65535),
    ({"https": {"ca": "ca.pem"}}, "https.ca", [str(Path("ca.pem").resolve())]),
    ({"user": 33}, "user", 33),
    ({"group": "adm"}, "group", "adm"),
])
def test_accepted_values(raw: dict[str, Any], key: str, value: Any) -> None:
    assert parse_settings(raw)[key] == value


def test_tcp_timeout_is_a_float() -> None:
    assert isinstance(parse_settings({"server": {"tcpTimeout": 2}})["server.tcpTimeout"], float)


# --------------------------------------------------------------------------- binds


def test_bind_accepts_a_string() -> None:
    settings = parse_settings({"http": {"bind": "0.0.0.0", "port": 8080}})
    assert settings["http.bind"] == [{"address": "0.0.0.0", "port": None}]
    assert listen_addresses(settings) == ["0.0.0.0:8080"]


def test_bind_accepts_a_list_of_strings() -> None:
    settings = parse_settings({"http": {"bind": ["127.0.0.1", "10.1.2.3"], "port": 81}})
    assert listen_addresses(settings) == ["127.0.0.1:81", "10.1.2.3:81"]


def test_bind_accepts_address_port_objects() -> None:
    settings = parse_settings({"http": {"port": 8080, "bind": [
        {"address": "127.0.0.1", "port": 9000},
        {"address": "10.0.0.1"},
        "192.168.1.1",
    ]}})
    assert listen_addresses(settings) == ["127.0.0.1:9000", "10.0.0.1:8080", "192.168.1.1:8080"]


def test_bind_accepts_a_single_object() -> None:
    settings = parse_settings({"http": {"bind": {"address": "127.0.0.1", "port": 9000}}})
    assert listen_addresses(settings) == ["127.0.0.1:9000"]


@pytest.mark.parametrize("address", ["::1", "[::1]"])
def test_ipv6_bind_is_bracketed(address: str) -> None:
    settings = parse_settings({"http": {"bind": [address, {"address": "::", "port": 81}], "port": 8080}})
    assert settings["http.bind"][0]["address"] == "::1"
    assert listen_addresses(settings) == ["[::1]:8080", "[::]:81"]


def test_localhost_bind_is_accepted() -> None:
    settings = parse_settings({"http": {"bind": "localhost", "port": 8080}})
    assert listen_addresses(settings) == ["localhost:8080"]


def test_default_listen_address() -> None:
    assert listen_addresses(parse_settings({})) == ["127.0.0.1:80"]


def test_https_bind_listens_beside_http() -> None:
    settings = parse_settings({"http": {"port": 8080}, "https": {"bind": ["0.0.0.0", {"address": "::1", "port": 8443}],
                                                                 "key": "k.pem", "cert": "c.pem"}})
    assert listen_addresses(settings) == ["127.0.0.1:8080", "0.0.0.0:443", "[::1]:8443"]


def test_https_bind_on_an_http_address_is_refused() -> None:
    error = config_error({"http": {"port": 8443}, "https": {"bind": ["127.0.0.1"], "port": 8443,
                                                            "key": "k.pem", "cert": "c.pem"}})
    assert error.key == "https.bind"
    assert "also an http.bind listener" in error.problem


def test_missing_certificate_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("cert")
    settings = load_settings(write(tmp_path, "https:\n  bind: [127.0.0.1]\n  cert: c.pem\n  key: nokey.pem\n"))
    with pytest.raises(ConfigError) as info:
        check_files(settings)
    assert info.value.key == "https.key"
    assert "file not found" in info.value.problem and "nokey.pem" in info.value.problem


def test_a_clients_share_above_the_pool_says_so() -> None:
    error = config_error({"server": {"maxSockets": 10, "maxSocketsPerClient": 11}})
    assert error.key == "server.maxSocketsPerClient"
    assert "above server.maxSockets (10)" in error.problem


def test_https_bind_without_key_is_refused() -> None:
    error = config_error({"https": {"bind": ["0.0.0.0"]}})
    assert error.key in ("https.key", "https.bind")


def test_empty_https_bind_is_fine() -> None:
    assert parse_settings({"https": {"bind": [], "key": "k.pem"}})["https.bind"] == []


# -------------------------------------------------------------------------- driver


@pytest.mark.parametrize(("value", "expected"), [
    ("redis://127.0.0.1:6379/0", ("redis://127.0.0.1:6379/0",)),
    ("redis:", ("redis:",)),
    ("rediss://:pw@db.example:6380/2#pre", ("rediss://:pw@db.example:6380/2#pre",)),
    ("unix:///run/redis.sock", ("unix:///run/redis.sock",)),
    (["redis://r1:6379", "redis://w1:6379"], ("redis://r1:6379", "redis://w1:6379")),
    (["redis://only:6379"], ("redis://only:6379",)),
    ("embedded", None),
    (None, None),
])
def test_driver_forms(value: Any, expected: Any) -> None:
    assert parse_settings({"driver": value})["driver"] == expected


@pytest.mark.parametrize("value", [
    ["redis://a", "redis://b", "redis://c"],
    [],
    "http://127.0.0.1:6379",
    "127.0.0.1:6379",
    ["redis://a", "memcached://b"],
    ["redis://a", 5],
    6379,
    {"host": "a"},
])
def test_driver_rejects(value: Any) -> None:
    error = config_error({"driver": value})
    assert error.key == "driver"


def test_driver_urls_read_first_write_last() -> None:
    settings = parse_settings({"driver": ["redis://r:1/0", "redis://w:2/0"]})
    assert driver_urls(settings) == ("redis://r:1/0", "redis://w:2/0")
    single = parse_settings({"driver": "redis://one:1/0"})
    assert driver_urls(single) == ("redis://one:1/0", "redis://one:1/0")


@pytest.mark.parametrize("driver", [None, "embedded"])
def test_driver_urls_embedded_is_a_unix_socket_in_data_dir(tmp_path: Path, driver: Any) -> None:
    path = write(tmp_path, f"driver: {driver or 'null'}\nembedded:\n  dataDir: data/redis\n")
    settings = load_settings(path)
    read, write_ = driver_urls(settings)
    assert read == write_
    assert read == f"unix://{tmp_path.resolve() / 'data' / 'redis' / 'redis.sock'}"
    assert read.startswith("unix:///")


# -------------------------------------------------------------------- legacy forms


def test_concussionjs_redis_block() -> None:
    settings = parse_settings({"redis": {"host": "db.example", "port": 6380}})
    assert settings["driver"] == ("redis://db.example:6380/0",)


def test_concussionjs_redis_block_with_password_db_prefix() -> None:
    settings = parse_settings({"redis": {"host": "h", "port": 1, "password": "p@ss word",
                                         "db": 3, "prefix": "pre:"}})
    assert settings["driver"] == ("redis://:p%40ss%20word@h:1/3#pre:",)


def test_concussionjs_redis_block_defaults() -> None:
    assert parse_settings({"redis": {}})["driver"] == ("redis://127.0.0.1:6379/0",)


def test_redis_block_unknown_key_is_named() -> None:
    error = config_error({"redis": {"host": "h", "hots": "x"}})
    assert error.key == "redis.hots"


def test_redis_block_must_be_a_mapping() -> None:
    error = config_error({"redis": "redis://h"})
    assert error.key == "redis"


def test_hipache_03_top_level_redis_keys() -> None:
    settings = parse_settings({"redisHost": "10.0.0.5", "redisPort": 6390,
                               "redisPassword": "s3cret", "redisDatabase": 1})
    assert settings["driver"] == ("redis://:s3cret@10.0.0.5:6390/1",)


def test_hipache_03_redis_host_alone() -> None:
    assert parse_settings({"redisHost": "r"})["driver"] == ("redis://r:6379/0",)


def test_hipache_03_server_port_and_address() -> None:
    settings = parse_settings({"server": {"port": 8080, "address": ["0.0.0.0", "::1"], "workers": 2}})
    assert settings["http.port"] == 8080
    assert listen_addresses(settings) == ["0.0.0.0:8080", "[::1]:8080"]
    assert settings["server.workers"] == 2


def test_hipache_03_server_port_with_new_keys_prefers_new() -> None:
    settings = parse_settings({"server": {"port": 8080}, "http": {"port": 9090}})
    assert settings["http.port"] == 9090


def test_hipache_03_server_port_with_empty_http_section(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 8080\nhttp:\n")
    assert load_settings(path)["http.port"] == 8080


def test_hipache_03_legacy_values_are_checked() -> None:
    error = config_error({"server": {"port": "eighty"}})
    assert error.key == "http.port"


def test_hipache_03_server_https_becomes_the_https_section() -> None:
    settings = parse_settings({"server": {"https": {"port": 8443, "key": "k", "cert": "c"}}})
    assert settings["https.port"] == 8443
    assert settings["https.bind"] == [{"address": "127.0.0.1", "port": None}]
    assert settings["https.key"].endswith("/k")


def test_hipache_03_server_https_with_empty_https_section() -> None:
    settings = parse_settings({"server": {"https": {"port": 8443, "key": "k", "cert": "c"}}, "https": None})
    assert settings["https.port"] == 8443


@pytest.mark.parametrize("legacy", [
    {"redis": {"host": "h"}},
    {"redisHost": "h"},
    {"redisPort": 6380},
])
def test_driver_and_legacy_redis_together_is_an_error(legacy: dict[str, Any]) -> None:
    error = config_error({"driver": "redis://x:6379", **legacy})
    assert error.key == "driver"
    assert "not both" in error.problem


def test_parse_settings_does_not_modify_its_input() -> None:
    raw = {"server": {"port": 8080, "workers": 2}, "redis": {"host": "h"}}
    before = copy.deepcopy(raw)
    parse_settings(raw)
    assert raw == before


# --------------------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = write(folder, (
        "server:\n  accessLog: logs/access.log\n  staticDir: ../pages\n"
        "embedded:\n  dataDir: var/redis\n"
        "https:\n  ca: [a.pem, /abs/b.pem]\n"
    ))
    settings = load_settings(path)
    base = folder.resolve()
    assert settings["server.accessLog"] == str(base / "logs" / "access.log")
    assert settings["server.staticDir"] == str(tmp_path.resolve() / "pages")
    assert settings["embedded.dataDir"] == str(base / "var" / "redis")
    assert settings["https.ca"] == [str(base / "a.pem"), "/abs/b.pem"]


def test_relative_paths_do_not_depend_on_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    write(folder, "server:\n  accessLog: access.log\n")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("conf") / "config.yaml")
    assert settings["server.accessLog"] == str(folder.resolve() / "access.log")


def test_dash_access_log_stays_dash(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, 'server:\n  accessLog: "-"\n'))
    assert settings["server.accessLog"] == "-"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "server:\n  accessLog: /var/log/x/access.log\n"))
    assert settings["server.accessLog"] == "/var/log/x/access.log"


def test_home_is_expanded(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "embedded:\n  dataDir: ~/redis-data\n"))
    assert settings["embedded.dataDir"] == str(Path("~/redis-data").expanduser().resolve())


def test_non_path_strings_are_not_resolved(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "https:\n  passphrase: relative\nuser: nobody\n"))
    assert settings["https.passphrase"] == "relative"
    assert settings["user"] == "nobody"


# ---------------------------------------------------------------------- which file


def test_config_path_env_config_wins() -> None:
    environ = {"CJS_PROXY_CONFIG": "/x/mine.yaml", "SETTINGS_FLAVOR": "production",
               "CJS_PROXY_ETC": "/etc/somewhere"}
    assert config_path(environ) == Path("/x/mine.yaml")


def test_config_path_flavor_wins_over_default() -> None:
    environ = {"SETTINGS_FLAVOR": "production", "CJS_PROXY_ETC": "/etc/somewhere"}
    assert config_path(environ) == Path("/etc/somewhere/config_production.yaml")


def test_config_path_default() -> None:
    assert config_path({"CJS_PROXY_ETC": "/etc/somewhere"}) == Path("/etc/somewhere/config.yaml")


def test_config_path_empty_values_are_ignored() -> None:
    environ = {"CJS_PROXY_CONFIG": "", "SETTINGS_FLAVOR": "", "CJS_PROXY_ETC": "/e"}
    assert config_path(environ) == Path("/e/config.yaml")


def test_config_path_without_etc_uses_checkout_etc() -> None:
    assert config_path({}) == config.PACKAGE_ROOT / "etc" / "config.yaml"


def test_load_settings_uses_environ(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  workers: 7\n", name="config_staging.yaml")
    environ = {"SETTINGS_FLAVOR": "staging", "CJS_PROXY_ETC": str(tmp_path)}
    assert load_settings(environ=environ)["server.workers"] == 7
    assert load_settings(environ={"CJS_PROXY_CONFIG": os.fspath(path)})["server.workers"] == 7


def test_load_settings_missing_flavor_file_names_it(tmp_path: Path) -> None:
    environ = {"SETTINGS_FLAVOR": "nope", "CJS_PROXY_ETC": str(tmp_path)}
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ)
    assert str(tmp_path / "config_nope.yaml") in str(info.value)


def test_hipache_03_server_port_with_non_mapping_http_section() -> None:
    error = config_error({"server": {"port": 8080}, "http": 80})
    assert error.key == "http"
    assert "mapping" in error.problem


# ------------------------------------------------------------------ shipped configs


def test_debug_is_on_only_in_the_development_config() -> None:
    """``server.debug`` shows backend URLs to any client sending X-Debug: only the
    development config may turn it on, and it must say so where it does."""
    etc = Path(config.PACKAGE_ROOT) / "etc"
    shipped = sorted(etc.glob("*.yaml"))
    assert [p.name for p in shipped if p.name != "config.yaml"], "no production config found"
    for path in shipped:
        settings = load_settings(path)
        if path.name == "config.yaml":
            assert settings["server.debug"] is True
            lines = path.read_text(encoding="utf-8").splitlines()
            at = next(i for i, line in enumerate(lines) if line.strip().startswith("debug:"))
            nearby = " ".join(lines[max(0, at - 3):at + 1]).lower()
            assert "production" in nearby and "x-debug" in nearby, f"{path.name}: no warning next to debug"
        else:
            assert settings["server.debug"] is False, path.name
    production = load_settings(etc / "config_production.yaml")
    assert "server.debug" in production.explicit, "config_production.yaml should say debug: false"


# ------------------------------------------------------------------- Server header


def test_server_header_default_and_value() -> None:
    assert parse_settings({})["server.serverHeader"] == "cjs-proxy"
    assert parse_settings({"server": {"serverHeader": "edge/2 (eu)"}})["server.serverHeader"] == "edge/2 (eu)"


@pytest.mark.parametrize("value", ["", "x\r\nSet-Cookie: a=b", "tab\there", " padded", "caf\u00e9", 1, None])
def test_server_header_must_be_a_safe_header_value(value: Any) -> None:
    error = config_error({"server": {"serverHeader": value}})
    assert error.key == "server.serverHeader"
    assert error.problem.startswith("expected"), error.problem  # not "unknown setting"


# ------------------------------------------------------------- Hipache's TLS keys


def test_hipache_tls_keys_are_accepted() -> None:
    settings = parse_settings({"https": {
        "ciphers": "ECDHE+AESGCM:!aNULL", "honorCipherOrder": False,
        "secureProtocol": "TLSv1_2_method", "secureOptions": 0x02020000}})
    assert settings["https.ciphers"] == "ECDHE+AESGCM:!aNULL"
    assert settings["https.honorCipherOrder"] is False
    assert settings["https.secureProtocol"] == "TLSv1_2_method"
    assert settings["https.secureOptions"] == 0x02020000


@pytest.mark.parametrize(("https", "key", "words"), [
    ({"ciphers": "NO-SUCH-CIPHER"}, "https.ciphers", "no cipher"),
    ({"ciphers": ""}, "https.ciphers", "non-empty"),
    ({"honorCipherOrder": "yes"}, "https.honorCipherOrder", "true or false"),
    ({"secureProtocol": "TLSv9_method"}, "https.secureProtocol", "TLS_method"),
    ({"secureProtocol": "TLS_client_method"}, "https.secureProtocol", "client method"),
    ({"secureOptions": -1}, "https.secureOptions", ">= 0"),
    ({"secureOptions": "0x3000000"}, "https.secureOptions", "integer"),
    ({"secureProtocol": "TLSv1_2_method", "secureOptions": 0x08000000}, "https.secureOptions", "no TLS version"),
])
def test_bad_tls_keys_name_the_key(https: dict[str, Any], key: str, words: str) -> None:
    error = config_error({"https": https})
    assert error.key == key
    assert words.lower() in error.problem.lower(), error.problem
