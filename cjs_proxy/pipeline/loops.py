"""Loop detection: every forwarded request names this node in ``Via``; a request that
already names it has come back round and is refused (508).

A frontend whose backend is the proxy itself (directly, or through another proxy or a
load balancer in front of it) would otherwise forward the same request to itself until
a timeout, each hop holding a connection and a worker slot: 100 hops for HTTP, 1,000
for WebSocket upgrades, and other clients waiting meanwhile. The node id is
``server.nodeId``, or one the master draws at start and hands to all its workers
(``lifecycle/gunicorn_conf.py``), so any worker of the node recognises any other's mark.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

from cjs_proxy.exceptions import LoopDetected


def new_node_id() -> str:
    """A node id for a master (or a worker started without one): random, never guessed by a client."""
    return f"cjs-{secrets.token_hex(6)}"


def received_by(via: str) -> Iterator[str]:
    """The ``received-by`` of each ``Via`` entry (``1.1 name (comment)`` gives ``name``)."""
    for entry in via.split(","):
        parts = entry.split()
        if len(parts) >= 2:
            yield parts[1]


def refuse_loop(environ: dict[str, Any], node_id: str) -> None:
    """508 when this node already forwarded the request: it went round and came back."""
    via = environ.get("HTTP_VIA")
    if via and node_id in received_by(via):
        raise LoopDetected(f"request already passed through this node ({node_id}): Via {via[:200]!r}")


def forwarded_via(environ: dict[str, Any], node_id: str) -> str:
    """The ``Via`` to forward: the client's, with this hop appended (``1.1 <nodeId>``).

    The protocol version is the one the request was received with, as RFC 9110 7.6.3 asks.
    """
    protocol = environ.get("SERVER_PROTOCOL", "HTTP/1.1")
    version = protocol.partition("/")[2] or "1.1"
    entry = f"{version} {node_id}"
    previous = environ.get("HTTP_VIA")
    return f"{previous}, {entry}" if previous else entry
