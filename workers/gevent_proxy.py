"""The cjs-proxy gunicorn worker: gunicorn's gevent worker, monkeypatched, plus log reopening
and TLS per listener.

gunicorn's own HTTP parser (with its request-smuggling fixes) reads client requests;
gevent makes every socket, including the backend pools and Redis, cooperative.
gunicorn's TLS settings apply to every listener at once; the proxy listens for HTTP and
HTTPS side by side, so connections on the HTTPS listeners are wrapped here instead.

Lifecycle hooks (README "Worker lifecycle and signals"): the switch away from root, the
memory watchdog, retiring through a successor (``cjs_proxy.lifecycle.handover``) at
``server.maxRequests``, and the bound on requests per client connection.

Answers gunicorn writes itself are made the proxy's: requests its parser rejects get
the proxy's error page (never gunicorn's, which quotes the request back), every response
names ``server.serverHeader`` as its ``Server``, and ``Expect: 100-continue`` is answered
only when the application reads the body, i.e. after routing and limits.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import ssl
import sys
import time
from typing import TYPE_CHECKING, Any

import gevent
from gunicorn import util
from gunicorn.http import wsgi as gunicorn_wsgi
from gunicorn.workers.base_async import ALREADY_HANDLED
from gunicorn.workers.ggevent import GeventWorker

from cjs_proxy import config
from cjs_proxy.config.views import ClientLimits, WorkerSettings, view
from cjs_proxy.lifecycle import handover, privileges
from cjs_proxy.lifecycle.watchdog import MemoryWatchdog, rss_bytes
from cjs_proxy.pipeline.error_pages import ErrorPages
from cjs_proxy.pipeline.metrics import FLUSH_INTERVAL, NoMetrics
from workers import response
from workers.client_connection import ClientBody, ClientConnection, ContinueOnRead

if TYPE_CHECKING:  # imported for real only in load_wsgi: after gevent's monkeypatching
    from cjs_proxy.wsgi import ProxyApp

#: Seconds a client has to complete the TLS handshake.
HANDSHAKE_TIMEOUT = 10.0
#: What the plain-text fallback page says of a request gunicorn's parser rejected.
UNREADABLE_REQUEST = "the request could not be read"


def freeze_startup_objects() -> None:
    """Leave what the worker built before serving (modules, the app, its settings) out of
    every later garbage collection.

    A full collection walks every tracked object: under a flood of connections it took
    30-58 ms in one worker (``bench/abuse.py``: the normal client's slowest requests were
    exactly those pauses). Objects that live as long as the process need not be walked.
    """
    gc.collect()
    gc.freeze()


class HeldAnswer:
    """Stands in for the client socket while gunicorn's ``handle_error`` answers.

    gunicorn picks the status of a rejected request (400, 414, 431...) and logs it, then
    writes its own page, which quotes the offending request line or header back. With
    this in place of the socket, the bytes it writes are kept here instead, so the
    proxy can send its own page with the same status. Anything else is the real socket's.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.written = b""

    def gettimeout(self) -> float:
        return 0.0  # already "non-blocking": gunicorn then leaves the real socket's mode alone

    def sendall(self, data: bytes) -> None:
        self.written += bytes(data)

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def status(self) -> int | None:
        """The status code gunicorn wrote, if it wrote a status line."""
        parts = self.written.split(b"\r\n", 1)[0].split()
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
            return int(parts[1])
        return None


class ProxyWorker(GeventWorker):
    """gunicorn's ``gevent`` worker; the application is built by ``cjs_proxy.wsgi``.

    Its settings come from the master through gunicorn's own objects: the ``post_fork``
    hook of the configuration it was spawned with (``cjs_proxy.lifecycle.gunicorn_conf``,
    ``MasterHooks``) sets ``settings`` right after the fork, before ``init_process``.
    That hook is bound to the settings the master validated; gunicorn swaps hooks with
    its configuration on a reload, so a worker always runs with the settings of the
    configuration that spawned it, and they never pass through an environment that the
    master's other children (the embedded redis-server) would inherit. A worker whose
    master was configured some other way reads the config file itself.
    """

    #: The master's validated settings, handed over by the ``post_fork`` hook.
    settings: config.Settings | None = None
    #: The app this worker serves, once built (``load_wsgi``).
    proxy_app: ProxyApp | None = None
    tls_by_listener: dict[Any, ssl.SSLContext] = {}
    #: ``server.maxRequestsPerConnection`` (0: unbounded), read when the worker starts serving.
    requests_per_connection = 0
    #: Set once the worker has decided to go (``retire``).
    retiring = False
    #: Pages for the requests gunicorn's parser rejects (``server.staticDir``).
    error_pages = ErrorPages(None)
    #: ``server.serverHeader``, for the answers the worker writes itself.
    server_header = "cjs-proxy"
    #: The clocks and head budget of client connections (``ClientConnection``), set in ``load_wsgi``.
    client_limits: ClientLimits | None = None
    #: ``WorkerSettings`` view, built once in ``load_wsgi`` (before ``run``).
    options: WorkerSettings
    # Set by gunicorn's Worker (untyped): declared so the uses below are checked.
    max_requests: int
    retire_after: int
    wsgi: Any
    alive: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # gunicorn stops a worker at max_requests itself, which would leave a sole
        # worker's listener unattended: count the same way, but ``retire`` instead.
        self.retire_after, self.max_requests = self.max_requests, sys.maxsize

    def init_process(self) -> None:
        if self.settings is None:  # no post_fork hook of ours: not started by etc/gunicorn.py
            self.settings = config.load_settings()
        privileges.drop(self.cfg.uid, self.cfg.gid)  # completely: gunicorn keeps root's groups
        self._share_error_log()
        super().init_process()

    @property
    def proxy_settings(self) -> config.Settings:
        """The settings, once ``init_process`` made sure there are some."""
        if self.settings is None:
            raise RuntimeError("worker settings read before init_process")
        return self.settings

    def _share_error_log(self) -> None:
        """The proxy's own messages go where gunicorn's go (its error log, level and format)."""
        proxy_log = logging.getLogger("cjs_proxy")
        proxy_log.handlers = list(self.log.error_log.handlers)
        proxy_log.setLevel(self.log.error_log.level)
        proxy_log.propagate = False

    def run(self) -> None:
        """Start the memory watchdog, then serve (gunicorn's loop); say when accepting."""
        options = self.options
        self.requests_per_connection = options.requests_per_connection
        if options.max_memory_mb is not None:
            gevent.spawn(MemoryWatchdog(options.max_memory_mb, options.memory_check_interval,
                                        lambda reason: self.retire(reason, "memory"), sleep=gevent.sleep,
                                        logger=self.log).run)
        if self.metrics.enabled:
            gevent.spawn(self._metrics_loop, options.memory_check_interval)
        gevent.spawn(handover.announce_ready)  # first runs once super().run() is accepting
        freeze_startup_objects()
        try:
            super().run()
        finally:
            self.metrics.flush()  # the last requests' counts, before the process is gone
            if self.proxy_app is not None:
                self.proxy_app.access_log.flush()  # and their access-log lines (written once per loop turn)

    @property
    def metrics(self) -> NoMetrics:
        """The application's metrics (``cjs_proxy.wsgi``), or none before it is loaded."""
        return self.proxy_app.metrics if self.proxy_app is not None else NoMetrics()

    def _metrics_loop(self, rss_interval: float) -> None:
        """Write the accumulated metrics every ``FLUSH_INTERVAL``; measure the RSS (now, then every
        ``server.memoryCheckInterval``) for ``cjs_proxy_worker_rss_bytes``."""
        next_rss = 0.0
        while True:
            now = time.monotonic()
            if now >= next_rss:
                self.metrics.rss(rss_bytes())
                next_rss = now + rss_interval
            self.metrics.flush()
            gevent.sleep(FLUSH_INTERVAL)

    def retire(self, reason: str, recycle: str | None = None) -> None:
        """Leave gracefully and be replaced: stop accepting, finish in-flight requests, exit.

        The worker keeps accepting until the master has started its successor and that
        one accepts (``cjs_proxy.lifecycle.handover``); then the master's SIGTERM makes gunicorn's
        loop close the listeners and drain for up to ``graceful_timeout``.
        """
        if self.retiring or not self.alive:
            return
        self.retiring = True
        if recycle is not None:  # ``cjs_proxy_worker_recycles_total{reason}``
            self.metrics.recycled(recycle)
        if handover.request_successor():
            self.log.info("worker %s: %s; serving until its successor accepts", self.pid, reason)
            gevent.spawn_later(self.cfg.graceful_timeout + self.cfg.timeout, self._stop_accepting)
        else:
            self._stop_accepting(reason)

    def _stop_accepting(self, reason: str = "no answer from the master") -> None:
        if self.alive:
            self.log.info("worker %s: %s; finishing in-flight requests, then exiting", self.pid, reason)
            self.alive = False

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> None:
        """One request, with the lifecycle bounds around it.

        Keep-alive rebalancing: the ``server.maxRequestsPerConnection``-th request of a
        client connection is answered with ``Connection: close``, so long-lived clients
        reconnect now and then and land on whichever worker accepts (after a worker was
        replaced, all of them would otherwise stay on the survivors). gunicorn's parser
        numbers the requests of a connection (``req.req_number``) and ``req.force_close()``
        is what its ``Response.should_close`` reads: the header is sent and the
        connection closed after the response, with no per-socket bookkeeping here.

        ``server.maxRequests`` is counted by gunicorn (``self.nr``); we retire instead.
        ``Expect: 100-continue`` is answered on the first read of the body (``ContinueOnRead``).
        """
        if self.requests_per_connection and req.req_number >= self.requests_per_connection:
            req.force_close()
        conn = sock if isinstance(sock, ClientConnection) else None
        if conn is not None:
            conn.request_started()
        ContinueOnRead.defer(req, sock)
        ClientBody.track(req)
        try:
            super().handle_request(listener_name, req, sock, addr)
        except StopIteration:  # the connection closes after this answer
            if conn is not None and conn.must_linger:
                conn.linger()
            raise
        except TimeoutError:  # a write waited server.sendTimeout: the backend side is closed already
            self.log.debug("closing client connection %s: response left unread (server.sendTimeout)", addr)
            raise StopIteration from None
        finally:
            if conn is not None:
                conn.request_ended()
            if self.nr >= self.retire_after:
                self.retire(f"served {self.nr} requests (server.maxRequests)", "max_requests")

    def _answer_and_time(self, app: Any) -> Any:
        """The application, followed by the switch of the client's clock to ``server.sendTimeout``
        and the close (and linger) of a connection whose request body was not read to its end."""
        def serve(environ: dict[str, Any], start_response: Any) -> Any:
            result = app(environ, start_response)
            conn, body = environ.get("gunicorn.socket"), environ.get("wsgi.input")
            if isinstance(conn, ClientConnection) and result is not ALREADY_HANDLED:
                conn.response_started()
                if isinstance(body, ClientBody):
                    body.answered(conn)
            return result

        return serve

    def timeout_ctx(self) -> contextlib.AbstractContextManager[None]:
        """No ``gevent.Timeout`` around gunicorn's head reads: ``ClientConnection`` times each
        read itself (the idle wait with ``server.keepAliveTimeout``, the head with
        ``server.headerTimeout``), where gunicorn's one timer would cover both at once."""
        return contextlib.nullcontext()

    def load_wsgi(self) -> None:
        """Build the app, then the TLS contexts of the HTTPS listeners (once per worker).

        The app is built from this worker's settings (``build_application``) before
        gunicorn imports ``cjs_proxy.wsgi`` and reads its ``application``, which is then
        that same app. The ``Server`` name is gunicorn's module constant, which each
        ``Response`` copies when it is created: replacing it once here renames every
        response of the worker; its response class sends a head with the first body bytes
        (``workers.response``).
        """
        from cjs_proxy.wsgi import build_application

        settings = self.proxy_settings
        self.proxy_app = build_application(settings)
        super().load_wsgi()
        self.wsgi = self._answer_and_time(self.wsgi)
        self.client_limits = view(ClientLimits, settings)
        options = self.options = view(WorkerSettings, settings)
        self.server_header = options.server_header
        gunicorn_wsgi.SERVER = self.server_header
        response.install(self.cfg)
        self.error_pages = ErrorPages(options.static_dir)
        if settings["https.bind"]:
            # Only where HTTPS is served: cryptography adds ~10 MiB to a worker.
            from cjs_proxy.lifecycle.tls import listener_contexts

            self.tls_by_listener = listener_contexts(settings, [s.getsockname() for s in self.sockets],
                                                     self.proxy_app.router.store)

    def handle(self, listener: socket.socket, client: socket.socket, addr: Any) -> None:
        context = self.tls_by_listener.get(listener.getsockname())
        if context is not None:
            try:
                client.settimeout(HANDSHAKE_TIMEOUT)
                client = context.wrap_socket(client, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                self.log.debug("TLS handshake with %s failed: %s", addr, exc)
                client.close()
                return
        limits = self.client_limits or view(ClientLimits, self.proxy_settings)
        super().handle(listener, ClientConnection(client, limits), addr)

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """A request gunicorn could not read (or serve): its status and logging, our page.

        gunicorn decides the status (400, 414 for a long request line, 431 for too many
        or too large headers, 403, 501...) and logs the error; what it writes is held
        back (``HeldAnswer``) and replaced by ``server.staticDir``'s page for that status,
        which quotes nothing of the request.
        """
        held = HeldAnswer(client)
        super().handle_error(req, held, addr, exc)
        status = held.status()
        if status is None:
            return
        status_line, headers, body = self.error_pages.response(status, UNREADABLE_REQUEST)
        head = [f"HTTP/1.1 {status_line}", f"Server: {self.server_header}", f"Date: {util.http_date()}",
                "Connection: close", *(f"{name}: {value}" for name, value in headers)]
        try:
            util.write_nonblock(client, "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body)
        except OSError:
            self.log.debug("Failed to send error message.")

    def handle_usr1(self, sig: int, frame: Any) -> None:
        """SIGUSR1: gunicorn reopens its logs; the proxy reopens its access log too."""
        super().handle_usr1(sig, frame)
        # A worker still loading the app has none yet (the app opens the new file).
        if self.proxy_app is not None:
            gevent.spawn(self.proxy_app.reopen_logs)
