"""Reading a config file: YAML in, checked ``Settings`` out, or a ``ConfigError`` naming
the file, the key and what is wrong.

The file is read by the gunicorn master (at start and on SIGHUP), which hands the
result to its workers; Hipache's older keys are accepted and upgraded on the way.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from cjs_proxy.config.checks import _type_name
from cjs_proxy.config.registry import SECTIONS, SETTINGS, SETTINGS_BY_KEY
from cjs_proxy.config.views import _addresses, admin_addresses

PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent
ENV_CONFIG = "CJS_PROXY_CONFIG"
ENV_FLAVOR = "SETTINGS_FLAVOR"
ENV_ETC = "CJS_PROXY_ETC"


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and the key."""

    def __init__(self, path: str | os.PathLike[str], key: str | None, problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {problem}")


class Settings(Mapping[str, Any]):
    """Validated settings, read-only, keyed by dotted name; ``path`` is the source file.

    ``explicit`` holds the keys the file set itself (the others are defaults).
    """

    def __init__(self, values: Mapping[str, Any], path: str | None = None,
                 explicit: Iterable[str] = ()) -> None:
        self._values = dict(values)
        self.path = path
        self.explicit = frozenset(explicit)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Settings({self.path!r})"


def default_etc_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$CJS_PROXY_ETC``, else the checkout's ``etc/``, else ``/etc/cjs-proxy``."""
    if environ.get(ENV_ETC):
        return Path(environ[ENV_ETC])
    checkout_etc = PACKAGE_ROOT / "etc"
    return checkout_etc if checkout_etc.is_dir() else Path("/etc/cjs-proxy")


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """Which file to read: ``$CJS_PROXY_CONFIG``, else ``config_<flavor>.yaml``, else ``config.yaml``."""
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG])
    flavor = environ.get(ENV_FLAVOR)
    name = f"config_{flavor}.yaml" if flavor else "config.yaml"
    return default_etc_dir(environ) / name


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] = os.environ) -> Settings:
    """Read, check and normalise a config file (the environment picks it when ``path`` is None)."""
    path = Path(path) if path is not None else config_path(environ)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found (set CJS_PROXY_CONFIG or SETTINGS_FLAVOR)") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, None, f"invalid YAML: {where}{problem}") from None
    return parse_settings(raw, path)


def parse_settings(raw: Any, path: str | os.PathLike[str] = "<config>") -> Settings:
    """Check a parsed YAML document against the registry and fill in defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, None, f"expected a mapping of settings at the top level, got {_type_name(raw)}")
    flat = _flatten(_upgrade_legacy(raw, path), path)
    values: dict[str, Any] = {}
    explicit = {key for key in flat if key in SETTINGS_BY_KEY}
    base = Path(path).resolve().parent
    for setting in SETTINGS:
        value = flat.pop(setting.key, setting.default)
        try:
            value = setting.check(value)
        except ValueError as exc:
            raise ConfigError(path, setting.key, str(exc)) from None
        if setting.is_path and value is not None:
            value = _resolve_paths(value, base)
        values[setting.key] = value
    if flat:
        key = sorted(flat)[0]
        raise ConfigError(path, key, _unknown_key_message(key))
    _check_consistency(values, path)
    return Settings(values, str(path), explicit)


def _flatten(raw: dict[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in raw.items():
        if name in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(path, name, f"expected a mapping of settings, got {_type_name(value)}")
            for sub, subvalue in value.items():
                flat[f"{name}.{sub}"] = subvalue
        else:
            flat[str(name)] = value
    return flat


def _upgrade_legacy(raw: dict[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """Accept Hipache 0.3's keys and the ConcussionJS ``redis: {host, port}`` form."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    server: dict[str, Any] = raw["server"] if isinstance(raw.get("server"), dict) else {}
    moves = {"port": ("http", "port"), "address": ("http", "bind")}
    for old, (section, new) in moves.items():
        if old in server:
            _legacy_section(raw, section, path).setdefault(new, server.pop(old))
    if isinstance(server.get("https"), dict):
        legacy_https = server.pop("https")
        https = _legacy_section(raw, "https", path)
        for key, value in legacy_https.items():
            https.setdefault(key, value)
        https.setdefault("bind", https.get("address", ["127.0.0.1"]))
        https.pop("address", None)
    legacy_redis: dict[str, Any] = {
        k: raw.pop(k) for k in ("redisHost", "redisPort", "redisPassword", "redisDatabase") if k in raw}
    if "redis" in raw:
        block = raw.pop("redis")
        if not isinstance(block, dict):
            raise ConfigError(path, "redis", f"expected a mapping {{host, port}}, got {_type_name(block)}")
        unknown = set(block) - {"host", "port", "password", "db", "database", "prefix"}
        if unknown:
            raise ConfigError(path, f"redis.{sorted(unknown)[0]}",
                              "unknown setting (expected host, port, password, db)")
        legacy_redis = {
            "redisHost": block.get("host"), "redisPort": block.get("port"),
            "redisPassword": block.get("password"), "redisDatabase": block.get("db", block.get("database")),
            "prefix": block.get("prefix"),
        }
    if legacy_redis:
        if "driver" in raw:
            raise ConfigError(path, "driver", "set either 'driver' or the legacy 'redis' settings, not both")
        raw["driver"] = _legacy_driver_url(legacy_redis)
    return raw


def _legacy_section(raw: dict[str, Any], name: str, path: str | os.PathLike[str]) -> dict[str, Any]:
    """``raw[name]`` as a mapping to move legacy keys into (``http:`` left empty is null)."""
    if raw.get(name) is None:
        raw[name] = {}
    if not isinstance(raw[name], dict):
        raise ConfigError(path, name, f"expected a mapping of settings, got {_type_name(raw[name])}")
    return raw[name]


def _legacy_driver_url(legacy: dict[str, Any]) -> str:
    host = legacy.get("redisHost") or "127.0.0.1"
    port_ = legacy.get("redisPort") or 6379
    password = legacy.get("redisPassword")
    auth = f":{quote(str(password), safe='')}@" if password else ""
    db = legacy.get("redisDatabase")
    prefix = legacy.get("prefix")
    return f"redis://{auth}{host}:{port_}/{db or 0}" + (f"#{prefix}" if prefix else "")


#: Keys of an entry (an ``https.bind`` object, an ``https.certificates`` item) that hold files.
_FILE_KEYS = ("cert", "key", "ca")


def _resolve_paths(value: Any, base: Path) -> Any:
    if isinstance(value, list):
        return [_resolve_paths(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_paths(v, base) if k in _FILE_KEYS and v else v for k, v in value.items()}
    if value == "-":
        return value
    return str((base / os.path.expanduser(value)).resolve())


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, SETTINGS_BY_KEY, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown setting{hint}"


def _check_consistency(values: dict[str, Any], path: str | os.PathLike[str]) -> None:
    if values["server.maxSocketsPerClient"] > values["server.maxSockets"]:
        raise ConfigError(path, "server.maxSocketsPerClient",
                          f"{values['server.maxSocketsPerClient']} is above server.maxSockets "
                          f"({values['server.maxSockets']}): a client's share cannot exceed the pool")
    if values["https.bind"]:
        for key in ("https.key", "https.cert"):
            if not values[key] and not all(b.get(key.split(".")[1]) for b in values["https.bind"]):
                raise ConfigError(path, key, "required when https.bind lists addresses")
    if values["https.secureProtocol"] is not None or values["https.secureOptions"] is not None:
        from cjs_proxy.lifecycle.tlspolicy import NoTlsVersion, tls_policy

        try:
            tls_policy(values)
        except NoTlsVersion as exc:
            raise ConfigError(path, exc.key, str(exc)) from None
    if values["https.redirectHttp"] and not values["https.bind"]:
        raise ConfigError(path, "https.redirectHttp", "needs an HTTPS listener in https.bind")
    http_ports = {(a, p) for a, p in _addresses(values, "http")}
    clash = http_ports & {(a, p) for a, p in _addresses(values, "https")}
    if clash:
        raise ConfigError(path, "https.bind", f"{sorted(clash)[0]} is also an http.bind listener")
    public = http_ports | {(a, p) for a, p in _addresses(values, "https")}
    clash = public & set(admin_addresses(values))
    if clash:  # the admin pages must never be what a public port answers
        raise ConfigError(path, "admin.bind", f"{sorted(clash)[0]} is also a public listener")


def check_files(settings: Settings) -> None:
    """The files the settings name exist (start-up and ``check-config``; parsing alone does not look)."""
    values, path = settings, settings.path or "<config>"
    files = [("https.key", values["https.key"]), ("https.cert", values["https.cert"])]
    files += [("https.ca", ca) for ca in values["https.ca"] or []]
    files += [(f"https.bind[{i}].{k}", b[k]) for i, b in enumerate(values["https.bind"]) for k in ("key", "cert")
              if b.get(k)]
    files += [(f"https.certificates[{i}].{k}", c[k]) for i, c in enumerate(values["https.certificates"])
              for k in ("key", "cert")]
    for key, file in files:
        if file and not os.path.isfile(file):
            raise ConfigError(path, key, f"file not found: {file}")
