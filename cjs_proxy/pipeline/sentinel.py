"""Redis through Sentinel: clients whose pools ask the sentinels where the master is.

redis-py's ``Sentinel`` does the protocol: a ``SentinelConnectionPool`` asks the
sentinels for the master's (or a replica's) address whenever one of its connections
(re)connects, and drops idle connections to a master that is no longer the master.
A failover is then, for the proxy, a few lookups that fail (``StoreError``: the last
good route serves the host meanwhile) until the sentinels name the new master.

The pools are bounded and blocking, as ``store.connect``'s are: redis-py has no
blocking sentinel pool, so ``BlockingSentinelPool`` combines its two pools (the
sentinel pool's address discovery, the blocking pool's bounded queue).
"""

from __future__ import annotations

from typing import Any

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

from cjs_proxy.pipeline.sentinel_url import SentinelTarget


class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """At most ``max_connections`` connections; a caller waits up to ``timeout`` for one.

    Method resolution: ``SentinelConnectionPool``'s ``reset``/``owns_connection``/
    address discovery first, then ``BlockingConnectionPool``'s queue (``get_connection``,
    ``release``, ``disconnect``), whose ``release`` already drops a connection the
    sentinel pool no longer owns (one to a demoted master).
    """


def sentinel_manager(target: SentinelTarget, timeout: float, **connection_kwargs: Any) -> Sentinel:
    """A ``Sentinel`` for ``target``: its sentinels, and the data nodes' connection settings."""
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if target.sentinel_password:
        sentinel_kwargs["password"] = target.sentinel_password
    if target.tls:
        sentinel_kwargs["ssl"] = True
        connection_kwargs["ssl"] = True
    return Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs,
                    socket_timeout=timeout, socket_connect_timeout=timeout,
                    db=target.db, username=target.username, password=target.password,
                    **connection_kwargs)


def sentinel_client(target: SentinelTarget, timeout: float, max_connections: int,
                    for_reads: bool = False) -> redis.Redis:
    """The master's client, or a replica's when ``for_reads`` and the URL says ``replicas=true``.

    A replica pool falls back to the master when no replica is up (redis-py's
    ``rotate_slaves``), so reads survive the loss of every replica.
    """
    manager = sentinel_manager(target, timeout, health_check_interval=30)
    options = {"connection_pool_class": BlockingSentinelPool,
               "max_connections": max_connections, "timeout": timeout}
    if for_reads and target.replicas:
        return manager.replica_for(target.service, **options)
    return manager.master_for(target.service, **options)


def feed_pool(target: SentinelTarget, timeout: float) -> SentinelConnectionPool:
    """The pool the route cache's invalidation feed makes its two connections from.

    On the node lookups read from (a replica with ``replicas=true``): tracking there
    announces a change once that node has it, so a lookup that follows reads it.
    RESP2, as the feed expects.
    """
    manager = sentinel_manager(target, timeout, protocol=2)
    return SentinelConnectionPool(target.service, manager, is_master=not target.replicas,
                                  **manager.connection_kwargs)


def resolve_master(target: SentinelTarget, timeout: float) -> tuple[str, int]:
    """The master's (host, port), as the sentinels name it now (for ``cjs-proxy redis-cli``)."""
    host, port = sentinel_manager(target, timeout).discover_master(target.service)
    return str(host), int(port)
