"""The checks of the settings registry: each turns a raw YAML value into the normalised
one, or raises ``ValueError`` with a message that completes "<file>: <key>: ..."; each
carries the name of the type it accepts, for the settings table."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from cjs_proxy.pipeline.sentinel_url import is_sentinel_url, parse_sentinel_url

#: ``driver: embedded`` (or no driver): the proxy runs its own private redis-server.
EMBEDDED = "embedded"

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
        if isinstance(url, str) and is_sentinel_url(url):
            parse_sentinel_url(url)  # its ValueError says what is wrong
        elif not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"{url!r} is not a redis://, rediss://, unix:// or redis+sentinel:// URL")
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


#: What a node id may look like: a ``Via`` pseudonym (RFC 9110 7.6.3), so a token.
NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@labelled("token")
def node_id(value: Any) -> str:
    """``server.nodeId``: written into every forwarded ``Via``, so it must be a plain token."""
    if not isinstance(value, str) or not NODE_ID.fullmatch(value):
        raise ValueError(f"expected 1-64 letters, digits, '.', '_' or '-', got {value!r}")
    return value



_COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@labelled("cookie name")
def cookie_name(value: Any) -> str:
    """A cookie name: an RFC 9110 token (no ``=``, ``;``, spaces or quotes)."""
    if not isinstance(value, str) or not _COOKIE_NAME.fullmatch(value):
        raise ValueError(f"expected a cookie name (letters, digits, !#$%&'*+.^_`|~-), got {value!r}")
    return value
