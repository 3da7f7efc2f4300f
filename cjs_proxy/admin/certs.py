"""What ``cjs-proxy cert`` checks and shows of a certificate before and after it is in Redis.

A ``tls:`` hash is read by every worker on a handshake: a key that does not match its
certificate, an encrypted key or a certificate for other names would only show up as
clients failing to connect. ``cert set`` refuses those here, with the reason, before
anything is written; ``cert show`` and ``cert list`` read the same facts back (never the key).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from cjs_proxy.lifecycle.tls import name_matches

#: ``cert list`` flags certificates expiring within this many days.
EXPIRY_WARNING_DAYS = 14


class CertificateProblem(ValueError):
    """The certificate or key cannot be served: the message says why, for the operator."""


@dataclass(frozen=True)
class CertificateInfo:
    """The leaf certificate of a chain, as an operator needs to see it."""

    names: tuple[str, ...]
    not_after: datetime.datetime
    issuer: str
    chain_length: int

    def days_left(self, now: datetime.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400

    def expiry_flag(self, now: datetime.datetime, days: int = EXPIRY_WARNING_DAYS) -> str:
        """"" when fine, else what ``cert list`` and ``cert set`` say of its expiry."""
        left = self.days_left(now)
        if left < 0:
            return "EXPIRED"
        if left < days:
            return f"EXPIRES IN {int(left)} DAYS"
        return ""


def normalize_name(name: str) -> str:
    """A ``tls:`` name as the proxy looks it up: lowercase, no trailing dot."""
    return name.strip().lower().rstrip(".")


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        found: list[str] = list(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        found = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(n.lower().rstrip(".") for n in found)


def _leaf(chain: bytes) -> tuple[x509.Certificate, int]:
    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError as exc:
        raise CertificateProblem(f"not a PEM certificate chain ({exc})") from None
    return certs[0], len(certs)


def inspect(chain: bytes) -> CertificateInfo:
    """The facts of a PEM chain's first (leaf) certificate; ``CertificateProblem`` if unreadable."""
    cert, length = _leaf(chain)
    return CertificateInfo(_names(cert), cert.not_valid_after_utc, cert.issuer.rfc4514_string(), length)


def check_pair(name: str, chain: bytes, key: bytes) -> CertificateInfo:
    """What ``cert set`` will write, checked: the key is unencrypted and matches the
    certificate, and the certificate covers ``name``. Raises ``CertificateProblem``."""
    cert, _length = _leaf(chain)
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except TypeError:
        raise CertificateProblem("the key is encrypted: the proxy needs it unencrypted") from None
    except ValueError as exc:
        raise CertificateProblem(f"not a PEM private key ({exc})") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if private_key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise CertificateProblem("the key does not match the certificate")
    info = inspect(chain)
    if not any(name_matches(pattern, name) for pattern in info.names):
        raise CertificateProblem(f"the certificate is for {', '.join(info.names) or 'no DNS name'}, "
                                 f"not {name}")
    return info


def describe(info: CertificateInfo, now: datetime.datetime) -> list[str]:
    """``cert show``'s lines (also printed by ``cert set``)."""
    flag = info.expiry_flag(now)
    return [f"names: {', '.join(info.names)}",
            f"expires: {info.not_after:%Y-%m-%d %H:%M:%S} UTC ({int(info.days_left(now))} days)"
            + (f"  {flag}" if flag else ""),
            f"issuer: {info.issuer}",
            f"chain: {info.chain_length} certificate(s)"]
