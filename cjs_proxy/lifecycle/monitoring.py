"""The master's side of metrics: the multiprocess folder, the admin listener, dead workers, reloads.

Each worker writes its metric values to memory-mapped files in one folder
(``prometheus_client`` multiprocess mode) and the admin listener sums them at scrape
time. The folder is named in ``PROMETHEUS_MULTIPROC_DIR`` by the master before any
worker starts and before ``prometheus_client`` is first imported (its value class is
chosen at import, and the workers inherit the master's modules). An operator's own
``PROMETHEUS_MULTIPROC_DIR`` is used and wiped of old files; otherwise a fresh
temporary folder is made, and removed when the master exits.

The hooks here are called by ``cjs_proxy.lifecycle.gunicorn_conf``'s ones: one line each.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from cjs_proxy import config
from cjs_proxy.lifecycle.admin_server import AdminBindError, AdminPages, AdminServer, Readiness, RedisProbe
from cjs_proxy.lifecycle.sentinel_probe import SentinelProbe
from cjs_proxy.pipeline.sentinel_url import is_sentinel_url

log = logging.getLogger("cjs_proxy.lifecycle.monitoring")

ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Longest wait for Redis to answer a ``/readyz`` probe.
PROBE_TIMEOUT = 2.0


def prepare_folder(environ: MutableMapping[str, str], uid: int | None = None,
                   gid: int | None = None) -> tuple[Path, bool]:
    """The multiprocess folder, empty and writable by the workers, named in ``environ``.

    Returns (folder, owned): ``owned`` is true when we made it, and so remove it at exit.
    Files left by a previous run would be summed into this one's counters: wiped.
    """
    given = environ.get(ENV)
    if given:
        folder, owned = Path(given), False
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
    else:
        folder, owned = Path(tempfile.mkdtemp(prefix="cjs-proxy-metrics-")), True
    if os.geteuid() == 0 and uid is not None and uid != 0:
        os.chown(folder, uid, gid if gid is not None else -1)  # workers drop root, then write here
    environ[ENV] = str(folder)
    values: Any = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported too early: its value class must be the multiprocess one now
        values.ValueClass = values.get_value_class()
    return folder, owned


def scrape(folder: Path) -> tuple[bytes, str]:
    """Every process's values in ``folder``, summed: the text exposition format."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class Monitoring:
    """What the master keeps for metrics: the folder, the admin listener, the reload counter."""

    def __init__(self, folder: Path, owned: bool, admin: AdminServer) -> None:
        self.folder = folder
        self.owned = owned
        self.admin = admin
        from cjs_proxy.pipeline.metrics import recycles_counter  # after ENV is set: multiprocess values

        self.reloads = recycles_counter().labels("reload")

    @classmethod
    def start(cls, settings: config.Settings, uid: int | None, gid: int | None,
              alive: Callable[[], bool]) -> Monitoring | None:
        """The folder and the listening admin server, or None when ``admin.bind`` is empty."""
        addresses = config.admin_addresses(settings)
        if not addresses:
            return None
        folder, owned = prepare_folder(os.environ, uid, gid)
        url, timeout = config.driver_urls(settings)[0], min(settings["server.redisTimeout"], PROBE_TIMEOUT)
        probe = SentinelProbe(url, timeout) if is_sentinel_url(url) else RedisProbe(url, timeout)
        pages = AdminPages(lambda: scrape(folder), Readiness(probe, settings["server.staleRouteTTL"]), alive)
        try:
            admin = AdminServer(addresses, pages)
        except AdminBindError:
            if owned:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        admin.start()
        return cls(folder, owned, admin)

    def worker_exited(self, pid: int) -> None:
        """A dead worker's live gauges (in flight, tunnels, RSS) leave the sum; its counters stay."""
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, str(self.folder))

    def close(self) -> None:
        self.admin.close()
        if self.owned:
            shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------- gunicorn hooks


def on_starting(server: Any, settings: config.Settings) -> None:
    """Listen on ``admin.bind`` before any worker starts; a port that cannot be had stops the start."""
    try:
        monitoring = Monitoring.start(settings, server.cfg.uid, server.cfg.gid, lambda: bool(server.WORKERS))
    except AdminBindError as exc:
        server.log.error("cjs-proxy: cannot start the admin listener: %s", exc)
        raise SystemExit(3) from None
    server.cjs_monitoring = monitoring  # on the arbiter: survives config reloads
    if monitoring is not None:
        server.log.info("admin listener (/metrics /healthz /readyz) on %s",
                        ", ".join(f"{a}:{p}" for a, p in monitoring.admin.addresses))


def post_fork(server: Any) -> None:
    monitoring = getattr(server, "cjs_monitoring", None)
    if monitoring is not None:
        monitoring.admin.close_in_child()


def child_exit(server: Any, pid: int) -> None:
    monitoring = getattr(server, "cjs_monitoring", None)
    if monitoring is not None:
        monitoring.worker_exited(pid)


def on_reload(server: Any) -> None:
    """SIGHUP replaces every worker: each one counts as a ``reload`` recycle."""
    monitoring = getattr(server, "cjs_monitoring", None)
    if monitoring is not None:
        monitoring.reloads.inc(len(server.WORKERS))


def on_exit(server: Any) -> None:
    monitoring = getattr(server, "cjs_monitoring", None)
    if monitoring is not None:
        monitoring.close()
