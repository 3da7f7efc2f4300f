"""Hipache's (Node's) TLS keys, translated to what Python's ``ssl`` can do.

Hipache passes ``https.secureProtocol``, ``https.secureOptions``, ``https.ciphers`` and
``https.honorCipherOrder`` to Node's ``tls.createServer``. Python has no protocol
methods and reads no numeric masks, so they become a ``TlsPolicy``: a version range, the
``ssl.OP_*`` options to set or clear, and the warnings an operator should see once at
start-up for what cannot be honoured. TLS 1.2 stays the floor whatever is asked.

Pure data, no ``ssl`` import: the gunicorn master reads this with the config, and
``cjs_proxy.lifecycle.tls`` applies it to every context in the workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Versions by ``ssl.TLSVersion`` member name, oldest first.
VERSIONS = ("SSLv3", "TLSv1", "TLSv1_1", "TLSv1_2", "TLSv1_3")
FLOOR = "TLSv1_2"
_LABEL = {"SSLv2": "SSL 2", "SSLv3": "SSL 3", "TLSv1": "TLS 1.0", "TLSv1_1": "TLS 1.1",
          "TLSv1_2": "TLS 1.2", "TLSv1_3": "TLS 1.3"}

#: Node's ``secureProtocol`` names (OpenSSL method names): the one version they pin, or
#: None for "negotiate the highest both sides support". The ``_client_method`` names
#: are known only to be refused with a clear message.
NODE_PROTOCOLS: dict[str, str | None] = {}
for _method, _version in (("SSLv23", None), ("TLS", None), ("SSLv2", "SSLv2"), ("SSLv3", "SSLv3"),
                          ("TLSv1", "TLSv1"), ("TLSv1_1", "TLSv1_1"), ("TLSv1_2", "TLSv1_2")):
    for _suffix in ("_method", "_server_method", "_client_method"):
        NODE_PROTOCOLS[_method + _suffix] = _version

#: ``secureOptions`` bits that Python's ``ssl`` can honour, with OpenSSL's names. The
#: values are OpenSSL's (Node passes the number through); they are the same in 1.0.x, in
#: which Hipache's sample config was written, and in 3.x, except ``SSL_OP_NO_SSLv2``
#: (0x01000000 in 1.0.x, 0 since 1.1: SSLv2 no longer exists).
#: Each maps to the ``ssl.OP_*`` option to set, or to a version bound.
SECURE_OPTIONS: dict[int, tuple[str, str]] = {
    0x00004000: ("SSL_OP_NO_TICKET", "option:OP_NO_TICKET"),
    0x00020000: ("SSL_OP_NO_COMPRESSION", "option:OP_NO_COMPRESSION"),
    0x00400000: ("SSL_OP_CIPHER_SERVER_PREFERENCE", "option:OP_CIPHER_SERVER_PREFERENCE"),
    0x40000000: ("SSL_OP_NO_RENEGOTIATION", "option:OP_NO_RENEGOTIATION"),
    0x01000000: ("SSL_OP_NO_SSLv2", "below-floor"),
    0x02000000: ("SSL_OP_NO_SSLv3", "below-floor"),
    0x04000000: ("SSL_OP_NO_TLSv1", "below-floor"),
    0x10000000: ("SSL_OP_NO_TLSv1_1", "below-floor"),
    0x08000000: ("SSL_OP_NO_TLSv1_2", "minimum:TLSv1_3"),
    0x20000000: ("SSL_OP_NO_TLSv1_3", "maximum:TLSv1_2"),
}


class NoTlsVersion(ValueError):
    """The keys together leave no TLS version to offer; ``key`` is the one to fix."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


@dataclass(frozen=True)
class TlsPolicy:
    """What every HTTPS context of the proxy applies (``cjs_proxy.lifecycle.tls.apply_policy``)."""

    minimum: str = FLOOR
    maximum: str | None = None
    ciphers: str | None = None
    #: ``ssl.OP_*`` names to set, then to clear.
    set_options: tuple[str, ...] = ()
    clear_options: tuple[str, ...] = ()
    #: One line per key that asked for something Python's ``ssl`` will not do.
    warnings: tuple[str, ...] = ()


def _newer(a: str, b: str) -> str:
    return max(a, b, key=VERSIONS.index)


def tls_policy(settings: Mapping[str, Any]) -> TlsPolicy:
    """The policy for the ``https.*`` settings (raises ``NoTlsVersion`` on an empty range)."""
    minimum, maximum = FLOOR, None
    set_options: list[str] = []
    warnings: list[str] = []

    protocol = settings.get("https.secureProtocol")
    pinned = NODE_PROTOCOLS.get(protocol) if protocol else None
    if pinned is not None:
        if pinned not in VERSIONS or VERSIONS.index(pinned) < VERSIONS.index(FLOOR):
            warnings.append(f"https.secureProtocol: {protocol} asks for {_LABEL[pinned]}, which cjs-proxy "
                            f"never offers; the floor stays {_LABEL[FLOOR]} and newer versions are offered")
        else:
            minimum = maximum = pinned

    mask = settings.get("https.secureOptions") or 0
    unknown = mask
    for bit, (_name, effect) in SECURE_OPTIONS.items():
        if not mask & bit:
            continue
        unknown &= ~bit
        kind, _, what = effect.partition(":")
        if kind == "option":
            set_options.append(what)
        elif kind == "minimum":
            minimum = _newer(minimum, what)
        elif kind == "maximum":
            maximum = what if maximum is None else min(maximum, what, key=VERSIONS.index)
    if unknown:
        warnings.append(f"https.secureOptions: bits {unknown:#x} of {mask} ({mask:#x}) have no equivalent "
                        "in Python's ssl and are ignored; applied: "
                        + (", ".join(name for bit, (name, _) in SECURE_OPTIONS.items() if mask & bit) or "none"))
    if maximum is not None and VERSIONS.index(maximum) < VERSIONS.index(minimum):
        key = "https.secureOptions" if mask else "https.secureProtocol"
        raise NoTlsVersion(key, f"leaves no TLS version to offer (at least {_LABEL[minimum]}, "
                                f"at most {_LABEL[maximum]})")

    clear_options: list[str] = []
    if settings.get("https.honorCipherOrder", True):
        set_options.append("OP_CIPHER_SERVER_PREFERENCE")
    elif "OP_CIPHER_SERVER_PREFERENCE" not in set_options:
        clear_options.append("OP_CIPHER_SERVER_PREFERENCE")
    return TlsPolicy(minimum=minimum, maximum=maximum, ciphers=settings.get("https.ciphers"),
                     set_options=tuple(dict.fromkeys(set_options)), clear_options=tuple(clear_options),
                     warnings=tuple(warnings))
