"""The request pipeline: request -> route -> limit -> forward (or tunnel) -> log.

``request`` reads what the client asked (``redirect`` answers plain HTTP with HTTPS
when configured); ``router`` resolves a host in Redis (``store``, ``lua/``, names from
``redis_keys``; cached until ``invalidation`` hears of a change) and ``ratelimit``
decides the limits in the same call; ``passive_health`` picks a live backend and marks
failing ones; ``headers`` rewrites what crosses; ``upstream`` forwards over pooled
connections that speak strict HTTP/1.1 (``http1``) and ``relay`` streams the answer
back, ``websocket`` tunnels upgrades; ``exchange`` records each request for
``accesslog`` (one line per exchange) and ``debug_headers``; ``error_pages`` renders
the proxy's own answers. ``sockets`` checks readiness without entering gevent's hub.
"""
