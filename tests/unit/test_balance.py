"""The balancing policies' pure logic, the merge of registered backends, and the cache's expiry."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from cjs_proxy.pipeline.balance import (
    Balancer,
    cookie_value,
    pick_leastconn,
    pick_p2c,
    pick_random,
    pick_roundrobin,
    sticky_id,
    weighted_index,
)
from cjs_proxy.pipeline.passive_health import Backend, choose_backend
from cjs_proxy.pipeline.router import Route, RouteCache
from cjs_proxy.pipeline.store import Frontend, decode_frontend

URLS = ("http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80")


def route(balance: str = "", weights: dict[str, str] | None = None, dead: frozenset[int] = frozenset(),
          urls: tuple[str, ...] = URLS) -> Route:
    return Route("app.test", Frontend("app.test", "app", urls, dead, balance=balance, weights=weights or {}))


def backends(urls: tuple[str, ...] = URLS) -> list[Backend]:
    return [Backend(i, url) for i, url in enumerate(urls)]


def test_weighted_index_walks_the_cumulative_ranges() -> None:
    assert [weighted_index([1, 3], p) for p in range(4)] == [0, 1, 1, 1]
    with pytest.raises(ValueError):
        weighted_index([1, 3], 4)


def test_roundrobin_cycles_by_weight() -> None:
    assert [pick_roundrobin(3, None, t) for t in range(6)] == [0, 1, 2, 0, 1, 2]
    assert Counter(pick_roundrobin(2, [1, 3], t) for t in range(400)) == {0: 100, 1: 300}


def test_random_honours_weights() -> None:
    rng = random.Random(7)
    counts = Counter(pick_random(2, [1, 3], rng) for _ in range(4000))
    assert abs(counts[0] - 1000) < 150


def test_leastconn_takes_the_least_busy_and_breaks_ties_at_random() -> None:
    rng = random.Random(1)
    assert pick_leastconn([5, 0, 3], rng) == 1
    assert set(pick_leastconn([2, 0, 0], rng) for _ in range(50)) == {1, 2}


def test_p2c_never_takes_the_busier_of_two() -> None:
    rng = random.Random(3)
    assert {pick_p2c([50, 0], None, rng) for _ in range(100)} == {1}
    picks = Counter(pick_p2c([50, 0, 0], None, rng) for _ in range(300))
    assert picks[0] == 0 and picks[1] > 0 and picks[2] > 0


def test_p2c_weighs_load_by_weight() -> None:
    rng = random.Random(3)
    assert {pick_p2c([3, 2], [4, 1], rng) for _ in range(50)} == {0}  # 3/4 < 2/1


def test_sticky_id_is_opaque_and_keyed() -> None:
    first = sticky_id(URLS[0], b"k1")
    assert first == sticky_id(URLS[0], b"k1") and len(first) == 16
    assert "10.0.0.1" not in first
    assert first != sticky_id(URLS[0], b"k2") and first != sticky_id(URLS[1], b"k1")


def test_cookie_value_finds_one_cookie() -> None:
    assert cookie_value("a=1; cjs_backend=abc; b=2", "cjs_backend") == "abc"
    assert cookie_value("xcjs_backend=abc", "cjs_backend") is None
    assert cookie_value("", "cjs_backend") is None


def test_unweighted_random_keeps_the_old_path() -> None:
    assert Balancer().picker(route(), {}) is None
    assert Balancer().picker(route("random"), {}) is None
    assert Balancer().picker(route("roundrobin"), {}) is not None
    assert Balancer("leastconn").picker(route(), {}) is not None


def test_unknown_policy_and_bad_weights_fall_back() -> None:
    balancer = Balancer()
    assert balancer.policy(route("fastest")) == "random"
    assert balancer.weights(route(weights={URLS[0]: "0", URLS[1]: "x"}), backends()) is None
    assert balancer.weights(route(weights={URLS[0]: "3"}), backends()) == [3, 1, 1]


def test_sticky_follows_the_cookie_among_the_candidates() -> None:
    balancer = Balancer(secret=b"s")
    r = route("sticky")
    environ = {"HTTP_COOKIE": f"cjs_backend={sticky_id(URLS[2], b's')}"}
    pick = balancer.picker(r, environ)
    assert pick is not None and {pick(backends()).url for _ in range(20)} == {URLS[2]}
    assert balancer.cookie_headers(r, Backend(2, URLS[2]), environ) == ()
    header = balancer.cookie_headers(r, Backend(0, URLS[0]), environ)
    assert header == (("Set-Cookie", f"cjs_backend={sticky_id(URLS[0], b's')}; Path=/; HttpOnly; SameSite=Lax"),)


def test_a_dead_sticky_backend_is_not_chosen() -> None:
    balancer = Balancer(secret=b"s")
    r = route("sticky", dead=frozenset({2}))
    pick = balancer.picker(r, {"HTTP_COOKIE": f"cjs_backend={sticky_id(URLS[2], b's')}"})
    assert {choose_backend(r, random.Random(), (), pick)[0].id for _ in range(30)} <= {0, 1}


def test_in_flight_is_counted_only_for_policies_that_read_it() -> None:
    balancer = Balancer()
    assert balancer.hold(route(), URLS[0]) is False
    assert balancer.hold(route("leastconn"), URLS[0]) is True
    assert balancer.in_flight == {URLS[0]: 1}
    balancer.release(URLS[0])
    assert balancer.in_flight == {}


# ------------------------------------------------------------- registered backends


def test_registered_backends_follow_the_static_ones_and_keep_their_marks_by_url() -> None:
    static = [b"app", URLS[0].encode()]
    routing = [[URLS[1].encode(), URLS[0].encode(), URLS[2].encode()], 1500, [URLS[2].encode()], b"p2c",
               [URLS[1].encode(), b"2"]]
    frontend = decode_frontend("app.test", static, [b"0"], routing)
    assert frontend.backends == URLS  # the static one listed once
    assert frontend.static_count == 1
    assert frontend.dead == {0, 2}
    assert frontend.is_registered(2) and not frontend.is_registered(0)
    assert frontend.expires_in == 1.5
    assert frontend.balance == "p2c" and frontend.weights == {URLS[1]: "2"}


def test_a_hipache_frontend_decodes_as_before() -> None:
    frontend = decode_frontend("app.test", [b"app", URLS[0].encode()], [b"0"], [[], -1, [], b"", []])
    assert frontend == Frontend("app.test", "app", URLS[:1], frozenset({0}))
    assert frontend.expires_in is None


class NoChange:
    def changed(self) -> bool:
        return False


def test_the_route_cache_drops_a_route_when_its_first_registration_expires() -> None:
    now = [100.0]
    cache = RouteCache(NoChange(), clock=lambda: now[0])  # type: ignore[arg-type]
    cache.put(Route("app.test", Frontend("app.test", "app", URLS, frozenset()), expires=102.0), cache.generation)
    assert cache.get("app.test") is not None
    now[0] = 102.0
    assert cache.get("app.test") is None
