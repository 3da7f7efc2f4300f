"""server.denyBackends: a name is resolved once, each address checked, a checked one connected to."""

from __future__ import annotations

import socket

import pytest

from cjs_proxy.exceptions import BackendDenied
from cjs_proxy.pipeline.addresses import allowed_addresses, connect_checked, is_denied
from cjs_proxy.pipeline.headers import parse_networks

LINK_LOCAL = parse_networks(["169.254.0.0/16", "fe80::/10"])


def resolver(*addresses: str):
    calls: list[str] = []

    def resolve(host: str, port: int, family: int, kind: int):
        calls.append(host)
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses]

    return resolve, calls


@pytest.mark.parametrize("address", ["169.254.169.254", "fe80::1", "fe80::1%eth0", "::ffff:169.254.169.254"])
def test_link_local_addresses_are_denied(address):
    assert is_denied(address, LINK_LOCAL)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "::1", "2001:db8::1"])
def test_other_addresses_are_allowed(address):
    assert not is_denied(address, LINK_LOCAL)


def test_a_name_resolving_only_to_denied_addresses_is_refused():
    resolve, _ = resolver("169.254.169.254")
    with pytest.raises(BackendDenied, match=r"169\.254\.169\.254"):
        allowed_addresses("metadata.internal", 80, LINK_LOCAL, "http://metadata.internal", resolve)


def test_denied_addresses_of_a_name_are_dropped_and_the_name_resolved_once():
    resolve, calls = resolver("169.254.1.1", "10.0.0.5")
    allowed = allowed_addresses("app.internal", 8080, LINK_LOCAL, "http://app.internal:8080", resolve)
    assert [info[4] for info in allowed] == [("10.0.0.5", 8080)]
    assert calls == ["app.internal"]


def test_connection_goes_to_the_checked_address():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        resolve, _ = resolver("127.0.0.1")
        checked = allowed_addresses("anything", port, LINK_LOCAL, "http://anything", resolve)
        with connect_checked(checked, 2.0, "http://anything") as sock:
            assert sock.getpeername() == ("127.0.0.1", port)


@pytest.mark.parametrize(("host", "family"), [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)])
def test_an_ip_literal_is_not_resolved(host: str, family: int) -> None:
    resolve, calls = resolver("10.9.9.9")
    allowed = allowed_addresses(host, 8080, LINK_LOCAL, f"http://{host}:8080", resolve)
    assert calls == []
    assert [(info[0], info[4][:2]) for info in allowed] == [(family, (host, 8080))]


def test_a_denied_ip_literal_is_refused_without_resolving() -> None:
    resolve, calls = resolver()
    with pytest.raises(BackendDenied):
        allowed_addresses("169.254.169.254", 80, LINK_LOCAL, "http://169.254.169.254", resolve)
    assert calls == []
