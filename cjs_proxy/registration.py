"""Self-registration: a backend announces itself to the proxies and leaves when it stops.

A registration is a member of ``backends:<host>`` (beside Hipache's ``frontend:`` list,
never inside it) whose score is its expiry on Redis' clock. The registrar renews it
every ``ttl/3`` seconds, so two renewals may be lost before it lapses, and removes it
when it stops; if it dies without removing (SIGKILL, machine lost), the proxies stop
using the backend within ``ttl`` seconds anyway.

``cjs-proxy register`` runs a ``Registrar`` in the foreground; applications use
``registered()``::

    with cjs_proxy.registration.registered("app.example.com", "http://10.0.0.5:8000", ttl=10):
        serve()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from cjs_proxy import config
from cjs_proxy.admin.store import AdminStore
from cjs_proxy.pipeline.router import backend_url_problem

log = logging.getLogger("cjs_proxy.registration")

#: Seconds between two attempts while Redis does not answer (at most; ``ttl/3`` if shorter).
RETRY_INTERVAL = 1.0
#: Seconds a Redis call of the registrar may take (at most; ``ttl/3`` if shorter).
REDIS_TIMEOUT = 5.0
#: Errors that mean "Redis did not answer this time": logged, and tried again.
REDIS_ERRORS = (redis.RedisError, OSError)


class RegistrationError(ValueError):
    """The registration asked for cannot be made (bad URL, TTL or weight)."""


def check_registration(host: str, url: str, ttl: int, weight: int | None) -> None:
    problem = backend_url_problem(url)
    if problem is not None:
        raise RegistrationError(f"backend URL {url!r}: {problem}")
    if not host or any(c.isspace() for c in host):
        raise RegistrationError(f"host {host!r}: expected a host name")
    if ttl < 1:
        raise RegistrationError(f"ttl {ttl}: expected at least 1 second")
    if weight is not None and weight < 1:
        raise RegistrationError(f"weight {weight}: expected a positive integer")


class Registrar:
    """Keeps one backend registered for one host: register, renew every ``ttl/3``, deregister."""

    def __init__(self, store: AdminStore, host: str, url: str, ttl: int = 10,
                 weight: int | None = None, identifier: str | None = None) -> None:
        check_registration(host, url, ttl, weight)
        self.store = store
        self.host = host.lower()
        self.url = url
        self.ttl = ttl
        self.weight = weight
        self.identifier = identifier
        self.failing = False

    @property
    def period(self) -> float:
        return self.ttl / 3

    def register(self) -> None:
        """One registration (or renewal); Redis' errors are the caller's."""
        new = self.store.register(self.host, self.url, self.ttl, self.weight, self.identifier)
        if new:
            log.info("registered %s for %s (ttl %ds)", self.url, self.host, self.ttl)

    def renew(self) -> bool:
        """One renewal; a failure is logged (and retried by ``run``), never raised."""
        try:
            self.register()
        except REDIS_ERRORS as exc:
            log.warning("cannot renew %s for %s (%s); retrying", self.url, self.host, exc)
            self.failing = True
            return False
        if self.failing:
            log.info("renewed %s for %s again", self.url, self.host)
            self.failing = False
        return True

    def run(self, stop: threading.Event) -> None:
        """Renew until ``stop`` is set: every ``ttl/3`` seconds, more often while Redis is away."""
        wait = self.period
        while not stop.wait(wait):
            wait = self.period if self.renew() else min(RETRY_INTERVAL, self.period)

    def deregister(self) -> bool:
        """Remove the backend at once; False (logged) if Redis cannot be told (it lapses by itself)."""
        try:
            self.store.deregister(self.host, self.url, owns_weight=self.weight is not None)
        except REDIS_ERRORS as exc:
            log.warning("cannot remove %s for %s (%s); it leaves within %ds", self.url, self.host, exc, self.ttl)
            return False
        log.info("removed %s for %s", self.url, self.host)
        return True


def store_for(redis_url: str | None, ttl: int, config_path: str | None = None) -> AdminStore:
    """The store a registrar writes to: ``redis_url``, else the config file's driver (write URL)."""
    if redis_url is None:
        redis_url = config.driver_urls(config.load_settings(config_path))[1]
    return AdminStore.from_urls(redis_url, redis_url, min(REDIS_TIMEOUT, max(0.5, ttl / 3)), max_connections=2)


@contextmanager
def registered(host: str, url: str, ttl: int = 10, *, weight: int | None = None, identifier: str | None = None,
               redis_url: str | None = None) -> Iterator[Registrar]:
    """Keep ``url`` registered for ``host`` while the block runs (renewed by a background thread).

    Registering is done before the block starts: if Redis cannot be reached then, the
    error is raised. Later failures are logged and retried; on leaving the block the
    backend is removed at once.
    """
    store = store_for(redis_url, ttl)
    registrar = Registrar(store, host, url, ttl, weight, identifier)
    stop = threading.Event()
    try:
        registrar.register()
        renewer = threading.Thread(target=registrar.run, args=(stop,), name=f"register {url}", daemon=True)
        renewer.start()
        try:
            yield registrar
        finally:
            stop.set()
            renewer.join()
            registrar.deregister()
    finally:
        store.close()
