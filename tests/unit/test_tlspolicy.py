"""Hipache's (Node's) TLS keys translated to Python's ssl: versions, options, warnings."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from cjs_proxy.lifecycle.tls import apply_policy
from cjs_proxy.lifecycle.tlspolicy import SECURE_OPTIONS, NoTlsVersion, TlsPolicy, tls_policy

#: Hipache's sample config: SSL_OP_NO_SSLv2 | SSL_OP_NO_SSLv3 in OpenSSL 1.0's numbering.
HIPACHE_SECURE_OPTIONS = 50331648


def policy(**https: Any) -> TlsPolicy:
    return tls_policy({f"https.{key}": value for key, value in https.items()})


def test_defaults_are_tls_1_2_up_with_server_cipher_order() -> None:
    default = policy()
    assert (default.minimum, default.maximum, default.ciphers) == ("TLSv1_2", None, None)
    assert default.set_options == ("OP_CIPHER_SERVER_PREFERENCE",)
    assert default.warnings == ()


@pytest.mark.parametrize("name", ["SSLv23_method", "SSLv23_server_method", "TLS_method", "TLS_server_method"])
def test_negotiating_methods_keep_the_full_range(name: str) -> None:
    chosen = policy(secureProtocol=name)
    assert (chosen.minimum, chosen.maximum, chosen.warnings) == ("TLSv1_2", None, ())


def test_tls_1_2_method_pins_tls_1_2() -> None:
    chosen = policy(secureProtocol="TLSv1_2_method")
    assert (chosen.minimum, chosen.maximum, chosen.warnings) == ("TLSv1_2", "TLSv1_2", ())


@pytest.mark.parametrize("name", ["SSLv2_method", "SSLv3_method", "TLSv1_method", "TLSv1_1_server_method"])
def test_older_methods_keep_the_floor_with_one_warning(name: str) -> None:
    chosen = policy(secureProtocol=name)
    assert (chosen.minimum, chosen.maximum) == ("TLSv1_2", None)
    assert len(chosen.warnings) == 1
    assert name in chosen.warnings[0] and "floor stays TLS 1.2" in chosen.warnings[0]


def test_hipache_sample_options_need_no_warning() -> None:
    assert policy(secureOptions=HIPACHE_SECURE_OPTIONS).warnings == ()


def test_option_bits_python_exposes_are_applied() -> None:
    mask = 0x00004000 | 0x00020000 | 0x40000000  # no ticket, no compression, no renegotiation
    chosen = policy(secureOptions=mask, honorCipherOrder=False)
    assert set(chosen.set_options) == {"OP_NO_TICKET", "OP_NO_COMPRESSION", "OP_NO_RENEGOTIATION"}
    assert chosen.clear_options == ("OP_CIPHER_SERVER_PREFERENCE",)


def test_cipher_preference_bit_wins_over_honor_cipher_order_false() -> None:
    chosen = policy(secureOptions=0x00400000, honorCipherOrder=False)
    assert "OP_CIPHER_SERVER_PREFERENCE" in chosen.set_options and chosen.clear_options == ()


def test_version_bits_move_the_bounds() -> None:
    assert policy(secureOptions=0x08000000).minimum == "TLSv1_3"
    assert policy(secureOptions=0x20000000).maximum == "TLSv1_2"


def test_unknown_bits_are_ignored_with_one_warning() -> None:
    chosen = policy(secureOptions=0x00000004 | 0x00100000 | 0x02000000)
    assert len(chosen.warnings) == 1
    assert "0x100004" in chosen.warnings[0] and "SSL_OP_NO_SSLv3" in chosen.warnings[0]


def test_an_empty_version_range_is_refused() -> None:
    with pytest.raises(NoTlsVersion) as info:
        policy(secureOptions=0x08000000 | 0x20000000)
    assert info.value.key == "https.secureOptions"


def test_every_named_option_exists_in_python_ssl() -> None:
    for _name, effect in SECURE_OPTIONS.values():
        kind, _, what = effect.partition(":")
        if kind == "option":
            assert isinstance(getattr(ssl, what), int)


def test_policy_applies_to_a_context() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    apply_policy(context, policy(secureProtocol="TLSv1_2_method", ciphers="ECDHE-RSA-AES128-GCM-SHA256",
                                 honorCipherOrder=False, secureOptions=0x00004000))
    assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == ["ECDHE-RSA-AES128-GCM-SHA256"]
    assert context.options & ssl.OP_NO_TICKET
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
