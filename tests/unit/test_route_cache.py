"""The route cache's dependency index: which announced keys drop which cached hosts, and nothing else."""

from __future__ import annotations

from collections.abc import Callable

from cjs_proxy.pipeline.invalidation import Changes
from cjs_proxy.pipeline.router import Route, RouteCache, Router, dependencies
from cjs_proxy.pipeline.store import Frontend
from cjs_proxy.pipeline.tracked import TrackedCache


class ScriptedFeed:
    """Announces what the test says changed, at the cache's next check."""

    def __init__(self) -> None:
        self.pending: list[Changes] = []

    def announce(self, *keys: str) -> None:
        self.pending.append(list(keys))

    def flush(self) -> None:
        self.pending.append(True)

    def changed(self) -> Changes:
        pending, self.pending = self.pending, []
        if any(p is True for p in pending):
            return True
        keys = [key for p in pending if isinstance(p, list) for key in p]
        return keys or False


class Frontends:
    """A store answering like ``lua/route.lua``: the first candidate that has a frontend."""

    def __init__(self, *names: str) -> None:
        self.frontends = {name: Frontend(name, f"app {name}", ("http://127.0.0.1:1",), frozenset())
                          for name in names}
        self.lookups: list[str] = []
        #: Runs inside the next lookup: a change announced while it is in flight.
        self.meanwhile: Callable[[], None] | None = None

    def lookup(self, candidates: list[str], host: str,
               limit_args: tuple[str, ...] | None = None) -> tuple[Frontend, None] | None:
        self.lookups.append(host)
        if self.meanwhile is not None:
            self.meanwhile()
            self.meanwhile = None
        for name in candidates:
            if name in self.frontends:
                return self.frontends[name], None
        return None


def cached(store: Frontends, feed: ScriptedFeed, max_entries: int = 100) -> Router:
    return Router(store, 60, cache=RouteCache(feed, max_entries=max_entries))  # type: ignore[arg-type]


def looked_up_again(router: Router, store: Frontends, *hosts: str) -> list[str]:
    """Which of ``hosts`` the next requests had to look up in Redis."""
    before = len(store.lookups)
    for host in hosts:
        router.resolve(host)
    return store.lookups[before:]


HOSTS = ("a.example.com", "b.example.com", "c.example.com", "other.test")


def warm() -> tuple[Router, Frontends, ScriptedFeed]:
    """a.example.com has its own frontend, b and c are served by ``*.example.com``, other.test by ``*``."""
    store, feed = Frontends("a.example.com", "*.example.com", "*"), ScriptedFeed()
    router = cached(store, feed)
    assert looked_up_again(router, store, *HOSTS) == list(HOSTS)
    assert looked_up_again(router, store, *HOSTS) == []
    return router, store, feed


def test_an_exact_match_depends_on_its_own_keys_only() -> None:
    route = Route("a.example.com", Frontend("a.example.com", "app", (), frozenset()))
    assert sorted(dependencies(route)) == sorted([
        "frontend:a.example.com", "backends:a.example.com", "dead:a.example.com", "deadurls:a.example.com",
        "identifier:a.example.com", "balance:a.example.com", "weights:a.example.com", "tier:a.example.com"])


def test_a_wildcard_match_depends_on_every_earlier_candidate_and_on_the_wildcard() -> None:
    route = Route("x.b.example.com", Frontend("*.example.com", "app", (), frozenset()))
    assert sorted(dependencies(route)) == sorted([
        "frontend:x.b.example.com", "backends:x.b.example.com",
        "frontend:*.b.example.com", "backends:*.b.example.com",
        "frontend:*.example.com", "backends:*.example.com",
        "dead:x.b.example.com", "deadurls:x.b.example.com",  # marks are keyed by the requested host
        "identifier:*.example.com", "balance:*.example.com", "weights:*.example.com", "tier:*.example.com"])


def test_writes_to_other_hosts_keys_drop_nothing() -> None:
    router, store, feed = warm()
    feed.announce(*(f"backends:registered-{i}.test" for i in range(50)), "dead:elsewhere.test",
                  "frontend:*.com", "balance:b.example.com", "weights:c.example.com", "dead:*.example.com")
    assert looked_up_again(router, store, *HOSTS) == []


def test_a_dead_mark_drops_only_the_host_it_was_written_for() -> None:
    router, store, feed = warm()
    feed.announce("dead:a.example.com")
    assert looked_up_again(router, store, *HOSTS) == ["a.example.com"]
    feed.announce("deadurls:b.example.com")
    assert looked_up_again(router, store, *HOSTS) == ["b.example.com"]


def test_a_wildcard_frontend_change_drops_every_host_it_serves() -> None:
    router, store, feed = warm()
    feed.announce("frontend:*.example.com")
    assert looked_up_again(router, store, *HOSTS) == ["b.example.com", "c.example.com"]
    feed.announce("balance:*.example.com")
    assert looked_up_again(router, store, *HOSTS) == ["b.example.com", "c.example.com"]


def test_a_new_frontend_for_an_earlier_candidate_takes_over() -> None:
    router, store, feed = warm()
    store.frontends["b.example.com"] = Frontend("b.example.com", "b's own", ("http://127.0.0.1:2",), frozenset())
    feed.announce("frontend:b.example.com")
    assert looked_up_again(router, store, *HOSTS) == ["b.example.com"]
    assert router.resolve("b.example.com").identifier == "b's own"
    feed.announce("backends:*.example.com")  # no longer what b is read from
    assert looked_up_again(router, store, *HOSTS) == ["c.example.com"]


def test_the_catch_all_drops_only_hosts_that_fell_through_to_it() -> None:
    router, store, feed = warm()
    feed.announce("frontend:*")
    assert looked_up_again(router, store, *HOSTS) == ["other.test"]


def test_a_flush_empties_the_cache_and_its_index() -> None:
    router, store, feed = warm()
    feed.flush()
    assert router.cache is not None
    router.cache.get("nothing.test")  # the check that reads the flush
    assert len(router.cache.routes) == 0 and not router.cache.routes.dependents
    assert looked_up_again(router, store, *HOSTS) == list(HOSTS)


def test_evicted_routes_leave_the_index() -> None:
    store, feed = Frontends("*"), ScriptedFeed()
    router = cached(store, feed, max_entries=3)
    hosts = [f"h{i}.test" for i in range(50)]
    for host in hosts:
        router.resolve(host)
    assert router.cache is not None
    routes = router.cache.routes
    assert list(routes.dependencies) == hosts[-3:]
    assert set().union(*routes.dependents.values()) == set(hosts[-3:])
    assert len(routes.dependents) == len({n for h in hosts[-3:] for n in routes.dependencies[h]})
    feed.announce("dead:h0.test", "frontend:*")  # an evicted host's key, and one every kept host read
    assert looked_up_again(router, store, *hosts[-3:]) == hosts[-3:]


def test_an_expired_registration_drops_the_route_and_its_index_entry() -> None:
    now = [100.0]
    cache = RouteCache(ScriptedFeed(), clock=lambda: now[0])  # type: ignore[arg-type]
    cache.put(Route("r.test", Frontend("r.test", "app", ("http://127.0.0.1:1",), frozenset()), expires=101.0),
              cache.generation)
    assert cache.get("r.test") is not None
    now[0] = 101.0
    assert cache.get("r.test") is None
    assert not cache.routes.dependents and not cache.routes.dependencies


def test_a_lookup_overtaken_by_a_change_to_its_own_keys_is_not_stored() -> None:
    store, feed = Frontends("*.example.com"), ScriptedFeed()
    router = cached(store, feed)
    store.meanwhile = lambda: feed.announce("frontend:*.example.com")
    router.resolve("b.example.com")
    assert looked_up_again(router, store, "b.example.com") == ["b.example.com"]
    assert looked_up_again(router, store, "b.example.com") == []


def test_a_lookup_during_other_hosts_changes_is_stored() -> None:
    store, feed = Frontends("*.example.com"), ScriptedFeed()
    router = cached(store, feed)
    store.meanwhile = lambda: feed.announce("backends:renewing.test", "dead:a.example.com")
    router.resolve("b.example.com")
    assert looked_up_again(router, store, "b.example.com") == []


def test_a_lookup_overtaken_by_a_flush_is_not_stored() -> None:
    store, feed = Frontends("*.example.com"), ScriptedFeed()
    router = cached(store, feed)
    store.meanwhile = feed.flush
    router.resolve("b.example.com")
    assert looked_up_again(router, store, "b.example.com") == ["b.example.com"]


def test_a_read_older_than_the_changes_remembered_is_refused() -> None:
    """The change records are bounded: a read that started before the oldest forgotten one cannot be checked."""
    cache: TrackedCache[str] = TrackedCache(max_entries=10, max_changes=2)
    started = cache.generation
    cache.changed(["dead:x"])
    assert cache.unchanged_since(started, ["dead:y"])
    cache.changed(["dead:z"])
    cache.changed(["dead:w"])  # dead:x is forgotten now
    assert not cache.put("y", "value", ("dead:y",), started)
    assert cache.put("y", "value", ("dead:y",), cache.generation)


def test_a_change_touches_only_the_entries_that_depend_on_it() -> None:
    cache: TrackedCache[int] = TrackedCache(max_entries=10_000)
    for i in range(10_000):
        cache.put(f"h{i}", i, (f"dead:h{i}", "frontend:*"), cache.generation)
    assert cache.changed(["dead:h7", "dead:unknown"]) == {"h7"}
    assert len(cache) == 9_999 and "h7" not in cache.dependencies
    assert len(cache.dependents["frontend:*"]) == 9_999
    assert cache.changed(["frontend:*"]) == {f"h{i}" for i in range(10_000) if i != 7}
    assert len(cache) == 0 and not cache.dependents and not cache.dependencies
