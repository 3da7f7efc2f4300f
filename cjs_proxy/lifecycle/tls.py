"""TLS termination: server contexts for the HTTPS listeners, certificates chosen by SNI.

Each HTTPS listener gets one ``SSLContext`` (TLS 1.2 at least) with its default
certificate (``https.cert``/``https.key``, or the listener's own); the certificates of
``https.certificates`` are offered by SNI, matched on their subject alternative names
(wildcards included). A client without SNI, or asking for an unknown name, gets the
default certificate, unless Redis has a ``tls:`` certificate for that name
(``cjs_proxy.lifecycle.redis_certs``, ``https.redisCertificates``). Every context, SNI
and Redis ones included, gets the same protocol range, ciphers and options (Hipache's
keys, see ``cjs_proxy.lifecycle.tlspolicy``).
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from cjs_proxy.config import driver_urls, https_listeners
from cjs_proxy.lifecycle.redis_certs import RedisCertificates
from cjs_proxy.lifecycle.tlspolicy import TlsPolicy, tls_policy
from cjs_proxy.pipeline.invalidation import InvalidationFeed
from cjs_proxy.pipeline.store import RouteStore

log = logging.getLogger("cjs_proxy.lifecycle.tls")


@dataclass(frozen=True)
class CertificateSpec:
    cert: str
    key: str
    passphrase: str | None = None
    ca: tuple[str, ...] = ()


def certificate_names(cert_path: str) -> list[str]:
    """The DNS names a certificate is for: its SANs, else its common name (lowercase)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names: list[str | bytes] = list(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return [(n.decode() if isinstance(n, bytes) else n).lower().rstrip(".") for n in names]


def name_matches(pattern: str, server_name: str) -> bool:
    """RFC 6125 matching: exact, or ``*.example.com`` for exactly one leftmost label."""
    if pattern == server_name:
        return True
    if pattern.startswith("*."):
        head, _, rest = server_name.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def apply_policy(context: ssl.SSLContext, policy: TlsPolicy) -> None:
    """Hipache's ``https.*`` TLS keys, as ``cjs_proxy.lifecycle.tlspolicy`` translated them."""
    context.minimum_version = getattr(ssl.TLSVersion, policy.minimum)
    if policy.maximum is not None:
        context.maximum_version = getattr(ssl.TLSVersion, policy.maximum)
    if policy.ciphers is not None:
        context.set_ciphers(policy.ciphers)
    for name in policy.set_options:
        context.options |= getattr(ssl, name)
    for name in policy.clear_options:
        context.options &= ~getattr(ssl, name)


#: Hipache's keys left at their defaults: TLS 1.2 and up, Python's ciphers.
DEFAULT_POLICY = TlsPolicy()


def policy_context(policy: TlsPolicy) -> ssl.SSLContext:
    """A server context with no certificate yet: the one TLS policy of every listener and SNI name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    apply_policy(context, policy)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _no_passphrase() -> bytes:
    """A key in Redis must be unencrypted: without this OpenSSL would prompt on the terminal."""
    raise ValueError("the key is encrypted (keys in Redis must not be)")


def pem_context(chain: bytes, key: bytes, policy: TlsPolicy = DEFAULT_POLICY) -> ssl.SSLContext:
    """A server context from a PEM chain and key held in memory (a ``tls:`` hash).

    Python's ``ssl`` loads certificates from files only: they go through a private
    temporary file (mode 0600) that is gone again before this returns. Raises
    ``ssl.SSLError`` or ``ValueError`` for malformed PEM or a key that does not match.
    """
    context = policy_context(policy)
    with tempfile.NamedTemporaryFile("wb", prefix="cjs-proxy-tls-", suffix=".pem", delete=False) as pem:
        pem.write(chain.rstrip(b"\n") + b"\n" + key)
    try:
        context.load_cert_chain(pem.name, password=_no_passphrase)
    finally:
        Path(pem.name).unlink(missing_ok=True)
    return context


def server_context(spec: CertificateSpec, policy: TlsPolicy = DEFAULT_POLICY) -> ssl.SSLContext:
    context = policy_context(policy)
    certfile = spec.cert
    if spec.ca:  # extra CA certificates are served after ours: one chain file
        chain = tempfile.NamedTemporaryFile("wb", prefix="cjs-proxy-chain-", suffix=".pem", delete=False)
        with chain:
            chain.write(Path(spec.cert).read_bytes().rstrip(b"\n") + b"\n")
            for ca in spec.ca:
                chain.write(Path(ca).read_bytes().rstrip(b"\n") + b"\n")
        certfile = chain.name
    try:
        context.load_cert_chain(certfile, spec.key, password=spec.passphrase)
    finally:
        if certfile != spec.cert:
            Path(certfile).unlink(missing_ok=True)
    return context


class SniContexts:
    """The default context of a listener, switching to another certificate's context by SNI."""

    def __init__(self, default: CertificateSpec, others: Iterable[CertificateSpec] = (),
                 policy: TlsPolicy = DEFAULT_POLICY, from_redis: RedisCertificates | None = None) -> None:
        self.default = server_context(default, policy)
        self.from_redis = from_redis
        self.by_name: list[tuple[str, ssl.SSLContext]] = []
        for spec in others:
            context = server_context(spec, policy)
            self.by_name += [(name, context) for name in certificate_names(spec.cert)]
        # Exact names before wildcards, so www.example.com beats *.example.com.
        self.by_name.sort(key=lambda item: item[0].startswith("*."))
        self.default.sni_callback = self._choose

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        if server_name:
            name = server_name.lower().rstrip(".")
            for pattern, context in self.by_name:
                if name_matches(pattern, name):
                    return context
        return self.default

    def _choose(self, sock: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
        """The ``sni_callback``: a configured certificate, else Redis's, else the default.

        An exception escaping here would abort the handshake with a traceback on stderr
        (CPython's unraisable hook): an unforeseen one is logged, and the default answers.
        """
        chosen = self.context_for(server_name)
        if chosen is self.default and server_name and self.from_redis is not None:
            try:
                chosen = self.from_redis.context_for(server_name) or self.default
            except Exception:
                log.exception("certificates from redis: lookup of %r failed; the default certificate answers",
                              server_name)
        if chosen is not self.default:
            sock.context = chosen


def _spec(entry: dict[str, Any], fallback: dict[str, Any]) -> CertificateSpec:
    ca = entry.get("ca") or fallback.get("ca") or ()
    return CertificateSpec(cert=entry.get("cert") or fallback["cert"], key=entry.get("key") or fallback["key"],
                           passphrase=entry.get("passphrase") or fallback.get("passphrase"),
                           ca=tuple([ca] if isinstance(ca, str) else ca))


def redis_certificates(settings: Any, store: RouteStore, policy: TlsPolicy) -> RedisCertificates | None:
    """The worker's certificates from Redis (``https.redisCertificates``), with their own feed."""
    if not settings["https.redisCertificates"]:
        return None
    timeout = settings["server.redisTimeout"]
    feed = InvalidationFeed(driver_urls(settings)[0], timeout, prefixes=[store.keys.tls("")])
    feed.changed()  # opens the feed now (in its own greenlet), not on the first handshake
    return RedisCertificates(store.certificate, lambda chain, key: pem_context(chain, key, policy), feed,
                             wait_timeout=2 * timeout + 1)


def listener_contexts(settings: Any, socknames: Iterable[Any],
                      store: RouteStore | None = None) -> dict[Any, ssl.SSLContext]:
    """For each listening socket that is an HTTPS listener: its SNI-enabled context.

    With the worker's ``store``, names no configured certificate covers are looked up in Redis.
    """
    wanted = {(entry["address"], entry["port"]): entry for entry in https_listeners(settings)}
    fallback = {"cert": settings["https.cert"], "key": settings["https.key"],
                "passphrase": settings["https.passphrase"], "ca": settings["https.ca"]}
    others = [_spec(c, c) for c in settings["https.certificates"]]
    policy = tls_policy(settings)  # its warnings were logged once, by the master
    from_redis = redis_certificates(settings, store, policy) if store is not None else None
    contexts: dict[Any, ssl.SSLContext] = {}
    for sockname in socknames:
        if not isinstance(sockname, tuple):
            continue  # a unix socket
        entry = wanted.get((sockname[0], sockname[1]))
        if entry is not None:
            contexts[sockname] = SniContexts(_spec(entry, fallback), others, policy, from_redis).default
    return contexts
