"""Routing against real processes: Redis frontends, Hipache's lookup order, errors, drivers."""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.harness import ANSWER_TIMEOUT, ROOT, free_port, raw_request

TIMEOUT = ANSWER_TIMEOUT


def get(proxy, host, path="/echo", **headers):
    return requests.get(f"{proxy.url}{path}", headers={"Host": host, **headers}, timeout=TIMEOUT)


def served_by(proxy, host):
    """(backend name, identifier) of the answer to ``host``; fails on a non-200."""
    response = get(proxy, host, **{"X-Debug": "1"})
    assert response.status_code == 200, (host, response.status_code, response.text[:200])
    return response.json()["server"], response.headers["x-debug-vhost"]


def bundled_page(status):
    return (ROOT / "errors" / f"{status}.html").read_bytes()


# ------------------------------------------------------------------ live changes


def test_vhost_added_and_removed_while_running(proxy, backends, rdb, host):
    assert get(proxy, host).status_code == 400
    rdb.rpush(f"frontend:{host}", "live-app", backends[0].url)
    assert served_by(proxy, host) == ("a", "live-app")
    rdb.delete(f"frontend:{host}")
    response = get(proxy, host)
    assert response.status_code == 400
    assert response.content == bundled_page(400)


def test_vhost_changed_while_running_is_used_on_next_request(proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "v1", backends[0].url)
    assert served_by(proxy, host) == ("a", "v1")
    with rdb.pipeline() as pipe:
        pipe.delete(f"frontend:{host}")
        pipe.rpush(f"frontend:{host}", "v2", backends[1].url)
        pipe.execute()
    for _ in range(4):  # every worker sees the change at once
        assert served_by(proxy, host) == ("b", "v2")


# ------------------------------------------------------------------ lookup order


def test_wildcard_lookup_order(proxy, backends, rdb):
    a, b, c = backends
    rdb.rpush("frontend:a.b.example", "exact", a.url)
    rdb.rpush("frontend:*.b.example", "wild-b", b.url)
    rdb.rpush("frontend:*.example", "wild-example", c.url)
    rdb.rpush("frontend:*", "catch-all", a.url)
    assert served_by(proxy, "a.b.example") == ("a", "exact")
    assert served_by(proxy, "x.b.example") == ("b", "wild-b")
    assert served_by(proxy, "deeper.x.b.example") == ("b", "wild-b")
    assert served_by(proxy, "y.example") == ("c", "wild-example")
    assert served_by(proxy, "other.host") == ("a", "catch-all")
    response = get(proxy, "x.b.example", **{"X-Debug": "1"})
    assert response.headers["x-debug-frontend-key"] == "*.b.example"


def test_empty_list_falls_through_to_next_candidate(proxy, backends, rdb):
    # An exact key with an empty list does not exist in Redis; the wildcard answers.
    rdb.rpush("frontend:*.example", "wild-example", backends[2].url)
    assert served_by(proxy, "gone.example") == ("c", "wild-example")


def test_wildcard_does_not_match_bare_domain(proxy, backends, rdb):
    rdb.rpush("frontend:*.foo", "wild-foo", backends[1].url)
    assert served_by(proxy, "bar.foo") == ("b", "wild-foo")
    assert get(proxy, "foo").status_code == 400


def test_wildcard_suffix_is_at_most_five_labels(proxy, backends, rdb):
    deep = "too.deep.foo.bar.baz.qux.quux"
    rdb.rpush("frontend:*.deep.foo.bar.baz.qux.quux", "six-labels", backends[1].url)
    assert get(proxy, deep).status_code == 400  # the 6-label key is never tried
    rdb.rpush("frontend:*.foo.bar.baz.qux.quux", "five-labels", backends[0].url)
    for _ in range(3):
        assert served_by(proxy, deep) == ("a", "five-labels")


# ------------------------------------------------------------- host normalisation


def test_host_is_normalised(proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "norm-app", backends[0].url)
    for variant in (host.upper(), f"{host}:8080", f"{host}.", f"{host.upper()}.:80"):
        assert served_by(proxy, variant) == ("a", "norm-app"), variant


def test_host_header_is_forwarded_unchanged(proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "norm-app", backends[0].url)
    sent = f"{host.upper()}:8080"
    response = get(proxy, sent)
    assert response.status_code == 200
    assert dict(response.json()["headers"])["Host"] == sent


def test_unknown_host_gets_400_error_page(proxy, rdb, host):
    response = get(proxy, host)
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.content == bundled_page(400)


def test_http10_request_without_host_is_400(proxy, rdb, backends):
    rdb.rpush("frontend:*", "catch-all", backends[0].url)  # even a catch-all needs a Host
    answer = raw_request(proxy.port, b"GET /echo HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.") and answer.split(b" ", 2)[1] == b"400", answer[:200]


def test_malformed_host_is_400(proxy, rdb, backends):
    rdb.rpush("frontend:*", "catch-all", backends[0].url)  # malformed hosts never reach it
    for bad in (b"bad host!", b"a..b", b"-leading.example", b"example.com:http", b"[::1"):
        answer = raw_request(proxy.port, b"GET /echo HTTP/1.1\r\nHost: " + bad + b"\r\nConnection: close\r\n\r\n")
        assert answer.split(b" ", 2)[1] == b"400", (bad, answer[:200])


def test_ping_host_answers_without_redis_route(proxy, rdb):
    assert rdb.dbsize() == 0
    response = get(proxy, "__ping__", "/anything")
    assert response.status_code == 200
    assert response.text == "ok"


# ----------------------------------------------------------------- backends


def test_frontend_with_only_identifier_is_502(proxy, rdb, host):
    rdb.rpush(f"frontend:{host}", "no-backends")
    response = get(proxy, host)
    assert response.status_code == 502
    assert response.content == bundled_page(502)


def test_dead_backends_are_skipped(proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "dead-app", backends[0].url, backends[1].url)
    rdb.sadd(f"dead:{host}", 0)
    with requests.Session() as session:
        servers = {session.get(f"{proxy.url}/echo", headers={"Host": host}, timeout=TIMEOUT).json()["server"]
                   for _ in range(20)}
    assert servers == {"b"}


def test_dead_set_is_keyed_by_requested_host(proxy, backends, rdb):
    rdb.rpush("frontend:*.deadwild.test", "wild", backends[0].url, backends[1].url)
    rdb.sadd("dead:*.deadwild.test", 0)  # the wildcard key's dead set is not consulted
    rdb.sadd("dead:x.deadwild.test", 1)
    with requests.Session() as session:
        servers = {session.get(f"{proxy.url}/echo", headers={"Host": "x.deadwild.test"},
                               timeout=TIMEOUT).json()["server"] for _ in range(20)}
    assert servers == {"a"}


def test_all_backends_dead_is_502(proxy, rdb, host):
    # Marked dead and really down: nothing can answer (with or without a "try them
    # anyway" fallback), so the client gets 502, not a hang or a 500.
    down = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    rdb.rpush(f"frontend:{host}", "dead-app", *down)
    rdb.sadd(f"dead:{host}", 0, 1)
    response = get(proxy, host)
    assert response.status_code == 502
    assert response.content == bundled_page(502)


def test_random_balancing_over_live_backends(proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "balanced", backends[0].url, backends[1].url)

    def fifty() -> list[str]:
        with requests.Session() as session:
            return [session.get(f"{proxy.url}/echo", headers={"Host": host}, timeout=TIMEOUT).json()["server"]
                    for _ in range(50)]

    with ThreadPoolExecutor(4) as pool:
        counts = collections.Counter(name for names in pool.map(lambda _: fifty(), range(4)) for name in names)
    assert sum(counts.values()) == 200
    assert set(counts) == {"a", "b"}
    assert 60 <= counts["a"] <= 140, counts


# --------------------------------------------------------------------- debug


DEBUG_HEADERS = ("x-debug-backend-url", "x-debug-backend-id", "x-debug-vhost",
                 "x-debug-frontend-key", "x-debug-time-total")


def test_debug_headers_only_when_asked(proxy, backends, rdb, host):
    rdb.rpush(f"frontend:{host}", "debug-app", backends[0].url)
    plain = get(proxy, host)
    assert plain.status_code == 200
    assert not [h for h in plain.headers if h.lower().startswith("x-debug")]
    debug = get(proxy, host, **{"X-Debug": "1"})
    assert debug.status_code == 200
    for name in DEBUG_HEADERS:
        assert name in debug.headers, name
    assert debug.headers["x-debug-backend-url"] == backends[0].url
    assert debug.headers["x-debug-backend-id"] == "0"
    assert debug.headers["x-debug-vhost"] == "debug-app"
    assert debug.headers["x-debug-frontend-key"] == host
    assert float(debug.headers["x-debug-time-total"]) >= 0


def test_debug_headers_on_errors(proxy, rdb, host):
    response = get(proxy, host, **{"X-Debug": "1"})
    assert response.status_code == 400
    assert "x-debug-error" in response.headers


def test_no_debug_headers_when_debug_disabled(make_proxy, backends, rdb, host):
    quiet = make_proxy(server_debug=False)
    rdb.rpush(f"frontend:{host}", "debug-app", backends[0].url)
    for target, status in ((host, 200), ("unknown-" + host, 400)):
        response = get(quiet, target, **{"X-Debug": "1"})
        assert response.status_code == status
        assert not [h for h in response.headers if h.lower().startswith("x-debug")], response.headers


# -------------------------------------------------------------------- drivers


def test_driver_prefix(make_proxy, redis_server, backends, rdb, host):
    prefixed = make_proxy(redis_url=f"{redis_server.url}#pfx:")
    rdb.rpush(f"pfx:frontend:{host}", "prefixed", backends[0].url)
    rdb.rpush(f"frontend:{host}", "unprefixed", backends[1].url)
    rdb.rpush(f"frontend:only-{host}", "unprefixed", backends[1].url)
    assert served_by(prefixed, host) == ("a", "prefixed")
    assert get(prefixed, f"only-{host}").status_code == 400
    rdb.rpush(f"pfx:frontend:{host}-2", "dead-app", backends[0].url, backends[1].url)
    rdb.sadd(f"pfx:dead:{host}-2", 0)
    rdb.sadd(f"dead:{host}-2", 1)
    for _ in range(10):
        assert served_by(prefixed, f"{host}-2")[0] == "b"


def test_driver_list_reads_from_first_url(make_proxy, redis_server, backends, rdb, host):
    db0, db1 = redis_server.url, redis_server.url.rsplit("/", 1)[0] + "/1"
    two = make_proxy(redis_url=[db0, db1])
    rdb.rpush(f"frontend:{host}", "two-urls", backends[0].url)
    assert served_by(two, host) == ("a", "two-urls")
    writer = redis_server.client()
    writer.select(1)
    writer.rpush(f"frontend:only-{host}", "write-side", backends[1].url)
    writer.close()
    assert get(two, f"only-{host}").status_code == 400


def test_legacy_redis_host_port_config(make_proxy, redis_server, backends, rdb, host):
    legacy = make_proxy(redis_url=None, redis={"host": "127.0.0.1", "port": redis_server.port})
    assert "driver" not in legacy.config
    rdb.rpush(f"frontend:{host}", "legacy", backends[2].url)
    assert served_by(legacy, host) == ("c", "legacy")


# ---------------------------------------------------------------- error pages


def test_custom_static_dir_pages(make_proxy, tmp_path, rdb, host):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "400.html").write_bytes(b"<h1>custom 400</h1>")
    (pages / "error_400.html").write_bytes(b"<h1>old hipache 400</h1>")  # our own name wins
    (pages / "default.html").write_bytes(b"<h1>custom default</h1>")
    custom = make_proxy(server_staticDir=str(pages), server_maxRequestBodySize=10)
    unknown = get(custom, host)
    assert unknown.status_code == 400
    assert unknown.headers["Content-Type"].startswith("text/html")
    assert unknown.content == b"<h1>custom 400</h1>"
    rdb.rpush(f"frontend:{host}", "no-backends")
    empty = get(custom, host)  # no 502.html in the folder: default.html answers
    assert empty.status_code == 502
    assert empty.content == b"<h1>custom default</h1>"


def test_hipache_named_static_dir_pages(make_proxy, tmp_path, rdb, host):
    pages = tmp_path / "hipache-pages"
    pages.mkdir()
    (pages / "error_400.html").write_bytes(b"<h1>hipache 400</h1>")
    (pages / "error_502.html").write_bytes(b"<h1>hipache 502</h1>")
    (pages / "error_default.html").write_bytes(b"<h1>hipache default</h1>")
    custom = make_proxy(server_staticDir=str(pages), server_maxRequestBodySize=10)
    unknown = get(custom, host)
    assert unknown.status_code == 400
    assert unknown.content == b"<h1>hipache 400</h1>"
    rdb.rpush(f"frontend:{host}", "no-backends")
    empty = get(custom, host)
    assert empty.status_code == 502
    assert empty.content == b"<h1>hipache 502</h1>"
    too_big = requests.post(f"{custom.url}/echo", headers={"Host": host}, data=b"x" * 100, timeout=TIMEOUT)
    assert too_big.status_code == 413
    assert too_big.content == b"<h1>hipache default</h1>"
