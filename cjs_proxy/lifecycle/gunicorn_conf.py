"""gunicorn's settings, derived from the YAML config (``etc/gunicorn.py`` loads these).

Imports nothing heavy: the master must not import requests, redis or ssl before the
workers monkeypatch them with gevent.

How the validated settings reach the workers: through gunicorn's own hooks, in memory.
gunicorn's ``Config`` has no room for an application's values (a config file's unknown
names are ignored; a ``Setting`` subclass registers only for ``Config`` objects made
after it), and ``raw_env`` goes through ``os.environ``, which every child of the master
inherits: the embedded redis-server would be handed every setting, a TLS passphrase
among them. Hooks, though, are ``Config`` values like any other: the ones below are
methods of a ``MasterHooks`` bound to the ``Settings`` validated with them. gunicorn
keeps them per configuration (a reload that is accepted brings new hooks with the new
settings, a refused one keeps the running ones) and calls ``post_fork`` in each new
worker right after the fork, with the worker object, before the worker loads the app.
There the settings are handed to the worker (``ProxyWorker.settings``): a copy of the
master's memory, never written to an environment.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from cjs_proxy import config
from cjs_proxy.config.views import ProcessSettings, view
from cjs_proxy.lifecycle import handover, monitoring, privileges
from cjs_proxy.lifecycle.embedded import EmbeddedRedis, EmbeddedRedisError, find_redis_server
from cjs_proxy.lifecycle.tlspolicy import tls_policy

WORKER_CLASS = "workers.gevent_proxy.ProxyWorker"
log = logging.getLogger("cjs_proxy")


#: The gunicorn values in effect, kept so that a reload (SIGHUP) with a broken file
#: keeps the proxy running on them instead of stopping it. gunicorn executes
#: etc/gunicorn.py again on each reload, but this module is imported only once.
_running: dict[str, Any] | None = None
#: ``server.nodeId`` when the file sets none: drawn once per master (this module is
#: imported once), so every worker and every reload of the master names itself the same.
_generated_node_id: str | None = None


def with_node_id(settings: config.Settings) -> config.Settings:
    """``settings`` with ``server.nodeId`` filled in: the file's, else this master's own."""
    global _generated_node_id
    if settings["server.nodeId"] is not None:
        return settings
    if _generated_node_id is None:
        from cjs_proxy.pipeline.loops import new_node_id

        _generated_node_id = new_node_id()
    return config.Settings({**settings, "server.nodeId": _generated_node_id}, settings.path, settings.explicit)


def gunicorn_settings(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """gunicorn setting names and values from the YAML file.

    A broken file stops start-up with the error; on a reload it is refused, logged,
    and the running configuration stays in effect.
    """
    global _running
    environ = dict(os.environ if environ is None else environ)
    try:
        values = _values_from_file(environ)
    except (config.ConfigError, privileges.PrivilegeError) as exc:
        problem = f"configuration error: {exc}" if isinstance(exc, config.ConfigError) else str(exc)
        if _running is None:
            sys.stderr.write(f"cjs-proxy: {problem}\n")
            raise SystemExit(2) from None
        sys.stderr.write(f"cjs-proxy: reload refused, the running configuration stays in effect: {problem}\n")
        return _running
    _running = values
    return values


def _values_from_file(environ: dict[str, str]) -> dict[str, Any]:
    settings = with_node_id(config.load_settings(environ=environ))
    config.check_files(settings)
    for warning in tls_policy(settings).warnings:  # here, once: not in every worker
        sys.stderr.write(f"cjs-proxy: warning: {settings.path}: {warning}\n")
    processes = view(ProcessSettings, settings)
    values: dict[str, Any] = {
        "bind": config.listen_addresses(settings),
        "workers": processes.workers,
        "worker_class": WORKER_CLASS,
        "worker_connections": processes.worker_connections,
        "keepalive": processes.keep_alive_timeout,
        "graceful_timeout": processes.graceful_timeout,
        "max_requests": processes.max_requests,
        "max_requests_jitter": processes.max_requests_jitter,
        "timeout": 30,
        "proc_name": "cjs-proxy",
        "accesslog": None,  # the proxy writes its own, with vhost and upstream fields
        "errorlog": "-",
        "loglevel": "info",
        "control_socket_disable": True,
        "forwarded_allow_ips": "",  # scheme and client come from the listener, not headers
        "raw_env": [f"{config.ENV_CONFIG}={settings.path}"],  # a path, no secret: every child may see it
        **MasterHooks(settings).gunicorn_hooks(),
    }
    if os.geteuid() == 0:
        try:
            values.update(privileges.gunicorn_identity(settings))
        except privileges.PrivilegeError as exc:
            raise privileges.PrivilegeError(f"cannot drop root: {settings.path}: {exc}") from None
    return values


class MasterHooks:
    """gunicorn's server hooks, bound to the settings validated from the same config file."""

    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings

    def gunicorn_hooks(self) -> dict[str, Any]:
        return {"on_starting": self.on_starting, "post_fork": self.post_fork, "child_exit": self.child_exit,
                "on_reload": self.on_reload, "on_exit": self.on_exit}

    def on_starting(self, server: Any) -> None:
        """Open the workers' handover channel and the admin listener; start the embedded
        redis-server if no driver is configured."""
        handover.start(server)
        monitoring.on_starting(server, self.settings)
        if self.settings["driver"] is not None:
            return
        try:
            embedded = EmbeddedRedis(self.settings["embedded.dataDir"],
                                     find_redis_server(self.settings["embedded.redisServer"]))
            embedded.start()
        except EmbeddedRedisError as exc:
            server.log.error("cjs-proxy: cannot start the embedded store: %s", exc)
            raise SystemExit(3) from None
        server.log.info("embedded redis on unix://%s (data in %s)", embedded.socket_path, embedded.data_dir)
        server.cjs_embedded_redis = embedded  # on the arbiter: survives config reloads

    def post_fork(self, server: Any, worker: Any) -> None:
        """In the new worker, before it loads the app: its end of the handover pipe, and its settings."""
        handover.close_master_end()
        monitoring.post_fork(server)
        worker.settings = self.settings

    def child_exit(self, server: Any, worker: Any) -> None:
        handover.worker_exited(worker.pid)
        monitoring.child_exit(server, worker.pid)

    def on_reload(self, server: Any) -> None:
        handover.forget_pending()
        monitoring.on_reload(server)

    def on_exit(self, server: Any) -> None:
        monitoring.on_exit(server)
        embedded = getattr(server, "cjs_embedded_redis", None)
        if embedded is not None:
            embedded.stop()
