"""The cjs-proxy gunicorn worker: gunicorn's gevent worker, monkeypatched, plus log reopening.

gunicorn's own HTTP parser (with its request-smuggling fixes) reads client requests;
gevent makes every socket, including the backend pools and Redis, cooperative.
"""

from __future__ import annotations

from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker


class ProxyWorker(GeventWorker):
    """gunicorn's ``gevent`` worker; the application is built by ``cjs_proxy.wsgi``."""

    def handle_usr1(self, sig: int, frame: Any) -> None:
        """SIGUSR1: gunicorn reopens its logs; the proxy reopens its access log too."""
        super().handle_usr1(sig, frame)
        # A worker still loading the app has no ``wsgi`` yet (the app opens the new file).
        reopen = getattr(getattr(self, "wsgi", None), "reopen_logs", None)
        if reopen is not None:
            gevent.spawn(reopen)
