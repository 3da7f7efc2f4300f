"""The request pipeline: request -> route -> limit -> forward (or tunnel) -> log.

``router`` resolves a host in Redis (``store``, ``lua/``, names from ``redis_keys``;
cached until ``invalidation`` hears of a change) and ``ratelimit`` decides the limits
in the same call; ``passive_health`` picks a live backend and marks failing ones;
``headers`` rewrites what crosses; ``upstream`` forwards over pooled connections that
speak strict HTTP/1.1 (``http1``), ``websocket`` tunnels upgrades; ``accesslog`` writes
one line per exchange and ``error_pages`` renders the proxy's own answers. ``sockets``
checks readiness without entering gevent's hub.
"""
