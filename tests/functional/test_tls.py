"""TLS termination: HTTPS beside HTTP, certificates by SNI, wss, redirect to HTTPS."""

from __future__ import annotations

import json
import socket
import ssl

import pytest
import requests
import trustme
import websocket
from cryptography import x509

from tests.harness import free_port


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture()
def certs(ca, tmp_path):
    """Files for a default certificate (default.test + 127.0.0.1), a.test and *.b.test."""
    paths = {"ca": tmp_path / "ca.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    for name, names in {"default": ("default.test", "127.0.0.1"), "a": ("a.test",), "b": ("*.b.test",)}.items():
        issued = ca.issue_cert(*names)
        paths[f"{name}_cert"] = tmp_path / f"{name}.crt"
        paths[f"{name}_key"] = tmp_path / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(str(paths[f"{name}_cert"]))
        issued.private_key_pem.write_to_path(str(paths[f"{name}_key"]))
    return paths


@pytest.fixture()
def tls_proxy(make_proxy, certs):
    port = free_port()
    proxy = make_proxy(https={
        "bind": [{"address": "127.0.0.1", "port": port}],
        "cert": str(certs["default_cert"]), "key": str(certs["default_key"]),
        "certificates": [{"cert": str(certs["a_cert"]), "key": str(certs["a_key"])},
                         {"cert": str(certs["b_cert"]), "key": str(certs["b_key"])}],
    })
    proxy.tls_port = port
    return proxy


def served_names(port: int, server_name: str | None) -> tuple[list[str], str]:
    """The DNS names of the certificate the proxy presents for ``server_name``, and the TLS version."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
            version = tls.version()
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), version


def test_https_request_reaches_the_backend_with_forwarded_proto(tls_proxy, certs, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    response = requests.get(f"https://127.0.0.1:{tls_proxy.tls_port}/echo", headers={"Host": host},
                            verify=str(certs["ca"]), timeout=10)
    assert response.status_code == 200
    headers = dict(response.json()["headers"])
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Forwarded-Port"] == str(tls_proxy.tls_port)
    plain = requests.get(f"{tls_proxy.url}/echo", headers={"Host": host}, timeout=10)
    assert dict(plain.json()["headers"])["X-Forwarded-Proto"] == "http"  # HTTP still served beside it


def test_sni_picks_the_certificate_for_each_name(tls_proxy):
    assert served_names(tls_proxy.tls_port, "a.test")[0] == ["a.test"]
    assert served_names(tls_proxy.tls_port, "x.b.test")[0] == ["*.b.test"]
    assert served_names(tls_proxy.tls_port, "unknown.test")[0] == ["default.test"]


def test_client_without_sni_gets_the_default_certificate(tls_proxy):
    names, version = served_names(tls_proxy.tls_port, None)
    assert names == ["default.test"]
    assert version in ("TLSv1.2", "TLSv1.3")


def test_protocols_below_tls12_are_refused(tls_proxy):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", tls_proxy.tls_port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            context.wrap_socket(raw, server_hostname="a.test")


def test_websocket_upgrade_over_tls(tls_proxy, certs, ws_backend, rdb, host):
    rdb.rpush(f"frontend:{host}", "ws-app", ws_backend.url)
    ws = websocket.create_connection(f"wss://127.0.0.1:{tls_proxy.tls_port}/headers", host=host, timeout=10,
                                     sslopt={"ca_certs": str(certs["ca"])})
    try:
        headers = json.loads(ws.recv())
        ws.send("over tls")
        assert ws.recv() == "over tls"
    finally:
        ws.close()
    assert headers["X-Forwarded-Proto"] == "https"


def test_plain_http_redirects_to_https_when_asked(make_proxy, certs, backends, rdb, host):
    port = free_port()
    proxy = make_proxy(https={"bind": [{"address": "127.0.0.1", "port": port}], "redirectHttp": True,
                              "cert": str(certs["default_cert"]), "key": str(certs["default_key"])})
    rdb.rpush(f"frontend:{host}", "app", backends[0].url)
    response = requests.get(f"{proxy.url}/echo?x=1", headers={"Host": host}, allow_redirects=False, timeout=10)
    assert response.status_code == 301
    assert response.headers["Location"] == f"https://{host}:{port}/echo?x=1"
    secure = requests.get(f"https://127.0.0.1:{port}/echo", headers={"Host": host},
                          verify=str(certs["ca"]), timeout=10)
    assert secure.status_code == 200


# ------------------------------------------------------------- Hipache's TLS keys


def negotiated(port: int, maximum: ssl.TLSVersion | None = None, server_name: str = "default.test") -> tuple[str, str]:
    """(TLS version, cipher) the proxy agrees to with a client allowing up to ``maximum``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if maximum is not None:
        context.maximum_version = maximum
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            return tls.version(), tls.cipher()[0]


def test_hipache_tls_keys_shape_every_handshake(make_proxy, certs):
    """``secureProtocol: TLSv1_2_method`` caps the version and ``ciphers`` picks the suite,
    on the default certificate and on SNI ones alike."""
    port = free_port()
    cipher = "ECDHE-ECDSA-AES256-GCM-SHA384"  # trustme's keys are ECDSA
    proxy = make_proxy(https={
        "bind": [{"address": "127.0.0.1", "port": port}],
        "cert": str(certs["default_cert"]), "key": str(certs["default_key"]),
        "certificates": [{"cert": str(certs["a_cert"]), "key": str(certs["a_key"])}],
        "secureProtocol": "TLSv1_2_method", "ciphers": cipher, "honorCipherOrder": True,
    })
    assert negotiated(port) == ("TLSv1.2", cipher)
    assert served_names(port, "a.test") == (["a.test"], "TLSv1.2")
    assert negotiated(port, server_name="a.test") == ("TLSv1.2", cipher)
    assert "warning" not in proxy.log().lower()


def test_old_protocol_request_keeps_the_floor_and_warns_once(make_proxy, certs):
    port = free_port()
    proxy = make_proxy(server_workers=2, https={
        "bind": [{"address": "127.0.0.1", "port": port}],
        "cert": str(certs["default_cert"]), "key": str(certs["default_key"]),
        "secureProtocol": "TLSv1_method",
    })
    assert negotiated(port)[0] == "TLSv1.3"  # the floor stays, newer versions are offered
    assert negotiated(port, ssl.TLSVersion.TLSv1_2)[0] == "TLSv1.2"
    assert proxy.log().count("https.secureProtocol: TLSv1_method") == 1, proxy.log()[-2000:]
