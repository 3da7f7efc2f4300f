"""Sentinel driver URLs: ``redis+sentinel://[[user]:password@]host:port,host:port/<master>[/<db>][?...][#prefix]``.

Parsed here, without importing redis-py, because the gunicorn master checks the
config file (``config.checks``) and probes readiness, and must not import redis-py
(see ``lifecycle.admin_server``). The connections themselves are ``sentinel``'s.

Query parameters: ``replicas=true`` (route lookups read from a replica),
``sentinelPassword=...`` (when the sentinels require one of their own; the URL's
password is the data nodes'). ``rediss+sentinel://`` speaks TLS to sentinels and
data nodes alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

#: Scheme -> TLS.
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
#: A sentinel's port when the URL names none (Redis's own default for sentinels).
DEFAULT_SENTINEL_PORT = 26379
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


@dataclass(frozen=True)
class SentinelTarget:
    """Where the sentinels are, which master they watch, and how to talk to its nodes."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    tls: bool = False
    #: ``?replicas=true``: lookups without limits read from a replica.
    replicas: bool = False
    prefix: str = ""


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def _address(item: str) -> tuple[str, int]:
    """``host[:port]`` or ``[v6][:port]`` to (host, port)."""
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or not host or (rest and not rest.startswith(":")):
            raise ValueError(f"malformed sentinel address {item!r}")
        port_text = rest[1:]
    else:
        host, _sep, port_text = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise ValueError(f"sentinel address {item!r} has no host")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"sentinel address {item!r} has no valid port (1-65535)")
    return host, int(port_text)


def _flag(name: str, values: list[str]) -> bool:
    value = values[-1].lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(f"?{name}= must be true or false, got {values[-1]!r}")
    return value in _TRUE


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The URL's parts; ``ValueError`` saying what is wrong (completes "<file>: driver: ...")."""
    scheme, sep, _rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError(f"{url!r} is not a redis+sentinel:// or rediss+sentinel:// URL")
    parts = urlsplit(url)
    userinfo, _at, hosts = parts.netloc.rpartition("@")
    username, _colon, password = userinfo.partition(":") if userinfo else ("", "", "")
    if not hosts:
        raise ValueError(f"{url!r} names no sentinel (expected host:port[,host:port...] after //)")
    sentinels = tuple(_address(item) for item in hosts.split(","))
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if not path or not path[0]:
        raise ValueError(f"{url!r} names no master: expected /<master-name>[/<db>] after the sentinels")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{url!r}: after /{path[0]} only a database number may follow, got {parts.path!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"replicas", "sentinelPassword"}
    if unknown:
        raise ValueError(f"{url!r}: unknown parameter ?{sorted(unknown)[0]}= (expected replicas, sentinelPassword)")
    return SentinelTarget(
        sentinels=sentinels, service=path[0], db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None, password=unquote(password) or None,
        sentinel_password=query["sentinelPassword"][-1] if "sentinelPassword" in query else None,
        tls=SENTINEL_SCHEMES[scheme.lower()],
        replicas=_flag("replicas", query["replicas"]) if "replicas" in query else False,
        prefix=parts.fragment)
