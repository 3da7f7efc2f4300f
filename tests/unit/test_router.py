"""Host normalisation, Hipache's lookup order, backend URL checks, and the last-good-route fallback."""

from __future__ import annotations

import pytest

from cjs_proxy.exceptions import BadRequest, InvalidHost, StoreUnavailable, UnknownHost
from cjs_proxy.pipeline import router as router_module
from cjs_proxy.pipeline.router import Route, RouteCache, Router, backend_url_problem, lookup_candidates, normalize_host
from cjs_proxy.pipeline.store import Frontend, StoreError

# ------------------------------------------------------------------ normalize_host


@pytest.mark.parametrize(("raw", "expected"), [
    ("example.com", "example.com"),
    ("example.com:8080", "example.com"),
    ("example.com:80", "example.com"),
    ("EXAMPLE.com", "example.com"),  # Hipache lowercased only with a port: a bug
    ("A.EXAMPLE", "a.example"),
    ("A.EXAMPLE:80", "a.example"),
    ("example.com.", "example.com"),
    ("Example.COM.:443", "example.com"),
    ("localhost", "localhost"),
    ("127.0.0.1:8080", "127.0.0.1"),
    ("[::1]:8080", "[::1]"),
    ("[::1]", "[::1]"),
    ("[2001:DB8::1]:443", "[2001:db8::1]"),
    ("my_app-1.example", "my_app-1.example"),
    ("__ping__", "__ping__"),
    ("  spaced.example  ", "spaced.example"),
    ("a" * 63 + ".example", "a" * 63 + ".example"),
])
def test_normalize_host(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


@pytest.mark.parametrize("raw", [
    None,
    "",
    "   ",
    "a,b",
    "a.example, b.example",  # gunicorn joins repeated Host headers with commas
    "bad host",
    "a..b",
    ".",
    ".example.com",
    "host:port:x",
    "host:abc",
    "host:",
    "host:123456",
    "a" * 64,
    "a" * 64 + ".example",
    "-leading.example",
    "trailing-.example",
    "exa*mple.com",
    "*",
    "*.example.com",
    "user@example.com",
    "example.com/path",
    "[::1",
    "[not-ipv6]",
    "[::1]x",
    "[::1]:abc",
    "::1",
    ("a." * 127) + "aa",  # 256 characters
])
def test_normalize_host_rejects(raw: str | None) -> None:
    with pytest.raises(InvalidHost):
        normalize_host(raw)


def test_invalid_host_is_a_400() -> None:
    with pytest.raises(BadRequest) as info:
        normalize_host("bad host")
    assert info.value.status == 400
    assert "bad host" in info.value.detail


def test_normalize_host_is_idempotent() -> None:
    once = normalize_host("Foo.Example.:8080")
    assert normalize_host(once) == once


# --------------------------------------------------------------- lookup_candidates


@pytest.mark.parametrize(("host", "expected"), [
    ("a.b.c", ["a.b.c", "*.b.c", "*.c", "*"]),
    ("www.example.com", ["www.example.com", "*.example.com", "*.com", "*"]),
    ("example.com", ["example.com", "*.com", "*"]),
    ("localhost", ["localhost", "*"]),
    ("[::1]", ["[::1]", "*"]),
])
def test_lookup_candidates(host: str, expected: list[str]) -> None:
    assert lookup_candidates(host) == expected


def test_lookup_candidates_are_bounded_to_five_labels() -> None:
    candidates = lookup_candidates("too.deep.foo.bar.baz.qux.quux")
    assert candidates == [
        "too.deep.foo.bar.baz.qux.quux",
        "*.foo.bar.baz.qux.quux",
        "*.bar.baz.qux.quux",
        "*.baz.qux.quux",
        "*.qux.quux",
        "*.quux",
        "*",
    ]
    assert "*.deep.foo.bar.baz.qux.quux" not in candidates


def test_lookup_candidates_six_labels_reach_the_five_label_wildcard() -> None:
    assert lookup_candidates("a.b.c.d.e.f")[1] == "*.b.c.d.e.f"


def test_lookup_candidates_for_a_very_long_host_stay_short() -> None:
    host = ".".join(["x"] * 100)
    candidates = lookup_candidates(host)
    assert len(candidates) == 1 + router_module.MAX_WILDCARD_LABELS + 1
    assert max(len(c.split(".")) - 1 for c in candidates[1:]) == router_module.MAX_WILDCARD_LABELS


def test_wildcard_does_not_match_its_own_suffix() -> None:
    # `*.foo` matches `bar.foo` but not `foo`
    assert "*.foo" in lookup_candidates("bar.foo")
    assert "*.foo" not in lookup_candidates("foo")


# -------------------------------------------------------------------------- Router


def frontend(key: str = "app.example", identifier: str = "app",
             backends: tuple[str, ...] = ("http://127.0.0.1:1",)) -> Frontend:
    return Frontend(key, identifier, backends, frozenset())


class FakeStore:
    """Answers ``lookup`` from a script: a Frontend, None, or a StoreError to raise."""

    def __init__(self, answer: Frontend | StoreError | None = None) -> None:
        self.answer = answer
        self.calls: list[tuple[list[str], str]] = []

    def lookup(self, candidates: list[str], host: str,
               limit_args: tuple[str, ...] | None = None) -> tuple[Frontend, None] | None:
        self.calls.append((candidates, host))
        if isinstance(self.answer, StoreError):
            raise self.answer
        return None if self.answer is None else (self.answer, None)

    def limit(self, frontend_key: str, limit_args: tuple[str, ...]) -> list[object]:
        self.calls.append(([frontend_key], "limit"))
        if isinstance(self.answer, StoreError):
            raise self.answer
        return ["verdict for", frontend_key]


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_router(store: FakeStore, stale_ttl: float = 60, clock: FakeClock | None = None) -> Router:
    return Router(store, stale_ttl, clock=clock or FakeClock())  # type: ignore[arg-type]


def test_resolve_returns_the_store_frontend() -> None:
    found = frontend("*.example", "wild", ("http://a", "http://b"))
    store = FakeStore(found)
    route = make_router(store).resolve("app.example")
    assert route == Route("app.example", found)
    assert route.identifier == "wild"
    assert route.backends == ("http://a", "http://b")


def test_resolve_asks_the_store_for_hipache_candidates() -> None:
    store = FakeStore(frontend())
    make_router(store).resolve("x.app.example")
    assert store.calls == [(["x.app.example", "*.app.example", "*.example", "*"], "x.app.example")]


def test_unknown_host_raises_unknown_host() -> None:
    with pytest.raises(UnknownHost) as info:
        make_router(FakeStore(None)).resolve("nobody.example")
    assert info.value.status == 400
    assert "nobody.example" in info.value.detail


def test_store_error_without_history_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable) as info:
        make_router(FakeStore(StoreError("ConnectionError: refused"))).resolve("app.example")
    assert info.value.status == 503
    assert "refused" in info.value.detail


def test_store_error_serves_a_recent_route() -> None:
    clock = FakeClock()
    store = FakeStore(frontend())
    router = make_router(store, stale_ttl=60, clock=clock)
    good = router.resolve("app.example")
    store.answer = StoreError("down")
    clock.now += 59
    stale = router.resolve("app.example")
    assert stale.frontend == good.frontend
    assert stale.stale and not good.stale


def test_store_error_after_stale_ttl_is_store_unavailable() -> None:
    clock = FakeClock()
    store = FakeStore(frontend())
    router = make_router(store, stale_ttl=60, clock=clock)
    router.resolve("app.example")
    store.answer = StoreError("down")
    clock.now += 61
    with pytest.raises(StoreUnavailable):
        router.resolve("app.example")


def test_stale_route_age_counts_from_the_last_success() -> None:
    clock = FakeClock()
    store = FakeStore(frontend())
    router = make_router(store, stale_ttl=60, clock=clock)
    router.resolve("app.example")
    clock.now += 50
    router.resolve("app.example")  # refreshed
    store.answer = StoreError("down")
    clock.now += 50  # 100 s after the first success, 50 after the last
    assert router.resolve("app.example").host == "app.example"


def test_stale_route_is_per_host() -> None:
    store = FakeStore(frontend())
    router = make_router(store)
    router.resolve("app.example")
    store.answer = StoreError("down")
    with pytest.raises(StoreUnavailable):
        router.resolve("other.example")


def test_stale_ttl_zero_disables_remembering() -> None:
    store = FakeStore(frontend())
    router = make_router(store, stale_ttl=0)
    router.resolve("app.example")
    store.answer = StoreError("down")
    with pytest.raises(StoreUnavailable):
        router.resolve("app.example")


def test_unknown_host_forgets_the_remembered_route() -> None:
    store = FakeStore(frontend())
    router = make_router(store)
    router.resolve("app.example")
    store.answer = None
    with pytest.raises(UnknownHost):
        router.resolve("app.example")
    store.answer = StoreError("down")
    with pytest.raises(StoreUnavailable):
        router.resolve("app.example")


def test_stale_routes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router_module, "STALE_ROUTES_MAX", 3)
    store = FakeStore(frontend())
    router = make_router(store)
    for name in ("a", "b", "c", "d"):
        router.resolve(f"{name}.example")
    store.answer = StoreError("down")
    with pytest.raises(StoreUnavailable):
        router.resolve("a.example")  # the oldest was dropped
    assert router.resolve("d.example").host == "d.example"


def test_stale_routes_keep_the_hosts_still_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router_module, "STALE_ROUTES_MAX", 3)
    store = FakeStore(frontend())
    router = make_router(store)
    for name in ("a", "b", "c", "a", "d"):  # a is requested again before d arrives
        router.resolve(f"{name}.example")
    store.answer = StoreError("down")
    with pytest.raises(StoreUnavailable):
        router.resolve("b.example")  # the least recently used was dropped
    assert router.resolve("a.example").stale


# ------------------------------------------------------------------- route cache


class FakeFeed:
    """An invalidation feed whose next answers the test scripts."""

    def __init__(self, answers: list[bool] | None = None) -> None:
        self.answers = list(answers or [])

    def changed(self) -> bool:
        return self.answers.pop(0) if self.answers else False


def cached_router(store: FakeStore, feed: FakeFeed) -> Router:
    return Router(store, 60, clock=FakeClock(), cache=RouteCache(feed))  # type: ignore[arg-type]


def test_cached_route_is_served_without_asking_the_store() -> None:
    store = FakeStore(frontend())
    router = cached_router(store, FakeFeed([True]))  # the feed is just connecting
    first = router.resolve("app.example")
    assert router.resolve("app.example") == first
    assert router.resolve("app.example") == first
    assert len(store.calls) == 1


def test_any_change_announced_by_redis_empties_the_cache() -> None:
    store = FakeStore(frontend())
    feed = FakeFeed()
    router = cached_router(store, feed)
    router.resolve("app.example")
    store.answer = frontend(identifier="moved")
    feed.answers = [True]
    assert router.resolve("app.example").identifier == "moved"
    assert len(store.calls) == 2


def test_a_lookup_overtaken_by_a_change_is_not_cached() -> None:
    store = FakeStore(frontend())
    feed = FakeFeed([False, True])  # nothing before the lookup, a change while it ran
    router = cached_router(store, feed)
    router.resolve("app.example")
    router.resolve("app.example")
    assert len(store.calls) == 2


def test_requests_with_rate_limits_always_ask_redis_for_their_limits_only() -> None:
    store = FakeStore(frontend())
    router = cached_router(store, FakeFeed())
    first = router.resolve("app.example")
    limited = router.resolve("app.example", ("127.0.0.1", "{}"))
    assert store.calls == [(lookup_candidates("app.example"), "app.example"), (["app.example"], "limit")]
    assert limited.frontend is first.frontend and limited.limit_answer == ["verdict for", "app.example"]
    # The cached route itself carries no verdict: the next request gets its own.
    assert router.resolve("app.example").limit_answer is None


def test_a_limited_lookup_fills_the_cache_without_its_verdict() -> None:
    store = FakeStore(frontend())
    router = cached_router(store, FakeFeed())
    router.resolve("app.example", ("127.0.0.1", "{}"))
    assert router.resolve("app.example").limit_answer is None
    assert len(store.calls) == 1


def test_a_limited_request_on_a_cached_route_is_stale_when_redis_cannot_decide() -> None:
    store = FakeStore(frontend())
    router = cached_router(store, FakeFeed())
    router.resolve("app.example")
    store.answer = StoreError("ConnectionError: refused")
    limited = router.resolve("app.example", ("127.0.0.1", "{}"))
    assert limited.stale and limited.limit_answer is None  # the limiter applies rateLimit.onError


def test_a_route_with_another_verdict_keeps_its_checked_backends() -> None:
    r = Route("app.example", frontend(backends=("http://ok:1", "not a url")), expires=12.5)
    assert list(r.unusable) == [1]
    again = r.with_limit_answer(["v"])
    assert again.__dict__["unusable"] is r.unusable and again.limit_answer == ["v"] and again.expires == 12.5
    fresh = Route("app.example", frontend(backends=("not a url",)))
    copy = fresh.with_limit_answer(None)  # checked once, on the cached route, and shared
    assert copy.__dict__["unusable"] is fresh.__dict__["unusable"] == {0: "whitespace or control characters"}


def test_unknown_hosts_are_not_cached() -> None:
    store = FakeStore(None)
    router = cached_router(store, FakeFeed())
    for _ in range(2):
        with pytest.raises(UnknownHost):
            router.resolve("nobody.example")
    assert len(store.calls) == 2


def test_a_change_noticed_while_storing_still_empties_the_cache() -> None:
    store = FakeStore(frontend("b.example"))
    feed = FakeFeed()
    router = cached_router(store, feed)
    router.resolve("b.example")  # cached
    store.answer = frontend("a.example")
    feed.answers = [False, True]  # the change shows up while a.example is being stored
    router.resolve("a.example")
    router.resolve("b.example")
    assert [host for _, host in store.calls] == ["b.example", "a.example", "b.example"]


def test_a_full_cache_forgets_only_the_least_recently_used_host() -> None:
    store = FakeStore(frontend())
    router = Router(store, 60, clock=FakeClock(), cache=RouteCache(FakeFeed(), max_entries=2))  # type: ignore[arg-type]
    for name in ("a", "b", "a", "c"):  # a is served from the cache before c arrives
        router.resolve(f"{name}.example")
    router.resolve("a.example")
    router.resolve("b.example")
    assert [host for _, host in store.calls] == ["a.example", "b.example", "c.example", "b.example"]


# ------------------------------------------------------------------ backend URLs


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9000",
    "http://127.0.0.1:9000/",
    "https://app.internal",
    "HTTP://App.Internal:8080/some/path?q=1",  # the path is ignored, as in Hipache
    "http://my_app-1.internal:1",
    "http://[::1]:65535",
    "http://[2001:db8::1]",
    "http://user:secret@127.0.0.1:9000",
    "http://127.0.0.1:",  # empty port: the scheme's default
])
def test_usable_backend_urls(url: str) -> None:
    assert backend_url_problem(url) is None


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:notaport/",
    "http://127.0.0.1:0",
    "http://127.0.0.1:65536",
    "http://127.0.0.1:-1",
    "ftp://x",
    "ws://127.0.0.1:9000",
    "http://",
    "http://:9000",
    "http:/127.0.0.1",
    "garbage",
    "",
    "127.0.0.1:9000",
    "http://127.0.0.1:9000/\r\nX-Injected: 1",
    "http://127.0.0.1\r\n:9000",
    "http://127.0.0.1 :9000",
    " http://127.0.0.1:9000",
    "http://127.0.0.1:9000\t",
    "http://127.0.0.1:9000/\x00",
    "http://127.0.0.1:9000/\u2028",
    "http://[::1",
    "http://[0]",
    "http://h[::1]",
    "http://a@b@127.0.0.1",
    "http://bücher.example",  # IDN hosts go in Redis as punycode
])
def test_malformed_backend_urls(url: str) -> None:
    assert backend_url_problem(url) is not None


def test_route_names_its_unusable_backends_by_id() -> None:
    r = Route("app.example", Frontend("app.example", "app",
                                      ("ftp://x", "http://127.0.0.1:9000", "http://127.0.0.1:x"), frozenset()))
    assert set(r.unusable) == {0, 2}
    assert "http" in r.unusable[0]
