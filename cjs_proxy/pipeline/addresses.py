"""Backend addresses: resolved once, each checked against ``server.denyBackends``, and
only a checked address connected to.

Backend URLs are tenants' data, so one could name the cloud metadata service
(169.254.169.254), the proxy's own listeners or an admin port. A name is resolved
here, once; every address it resolves to is checked, and the socket connects to an
address from that checked list, never to the name again: a second resolution could
answer differently (DNS rebinding), and that one would not have been checked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any

from cjs_proxy.exceptions import BackendDenied, BackendTimeout, BackendUnavailable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: One ``getaddrinfo`` entry: (family, type, proto, canonname, sockaddr).
AddrInfo = tuple[Any, ...]
Resolver = Callable[..., Sequence[AddrInfo]]


def is_denied(address: str, deny: Sequence[Network]) -> bool:
    """Whether ``address`` (an IPv6 scope id allowed) is in a denied network.

    An IPv4-mapped IPv6 address (``::ffff:169.254.169.254``) reaches the IPv4 host, so it
    is checked as that IPv4 address too.
    """
    ip = ipaddress.ip_address(address.partition("%")[0])
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    return any(candidate in net for candidate in candidates for net in deny)


def literal_address(host: str, port: int) -> list[AddrInfo] | None:
    """``getaddrinfo``'s answer for an IP literal, without asking it.

    Under gevent, ``getaddrinfo`` goes through a thread pool even for ``127.0.0.1``: a
    round trip to another thread for every new backend connection, for nothing to resolve.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 4:
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
    return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]


def allowed_addresses(host: str, port: int, deny: Sequence[Network], backend_url: str,
                      resolve: Resolver = socket.getaddrinfo) -> list[AddrInfo]:
    """The addresses of ``host`` a connection may go to; ``BackendDenied`` when none is left."""
    try:
        infos = literal_address(host, port) or list(resolve(host, port, 0, socket.SOCK_STREAM))
    except OSError as exc:  # socket.gaierror included
        raise BackendUnavailable(f"{backend_url}: cannot resolve {host!r}: {exc.strerror or exc}",
                                 before_request=True) from exc
    allowed = [info for info in infos if not is_denied(info[4][0], deny)]
    if not allowed:
        shown = ", ".join(sorted({str(info[4][0]) for info in infos})[:4])
        raise BackendDenied(f"{backend_url}: {host} is {shown}, in server.denyBackends: not connected to")
    return allowed


def connect_checked(addresses: Sequence[AddrInfo], timeout: float, backend_url: str) -> socket.socket:
    """A connection to the first of ``addresses`` that accepts one (as ``socket.create_connection``)."""
    last: OSError | None = None
    for family, kind, proto, _name, sockaddr in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    if isinstance(last, TimeoutError):
        raise BackendTimeout(f"{backend_url}: connect timed out", before_request=True) from last
    detail = (last.strerror or str(last)) if last else "no address"
    raise BackendUnavailable(f"{backend_url}: {detail}", before_request=True) from last
