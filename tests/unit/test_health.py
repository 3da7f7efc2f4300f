"""Backend choice among live backends, the failure rule, failure streaks and the dead-marking policy."""

from __future__ import annotations

import logging
import random
from collections import Counter

import pytest

from cjs_proxy.exceptions import InvalidFrontend, NoLiveBackend
from cjs_proxy.pipeline.passive_health import (
    FAILURE_STREAKS_MAX,
    Backend,
    BackendHealth,
    choose_backend,
    is_failure_answer,
    live_backends,
)
from cjs_proxy.pipeline.redis_keys import KeySpace
from cjs_proxy.pipeline.router import Route
from cjs_proxy.pipeline.store import Frontend, StoreError

URLS = ("http://10.0.0.1:80", "http://10.0.0.2:80", "http://10.0.0.3:80")


def route(backends: tuple[str, ...] = URLS, dead: set[int] | None = None,
          host: str = "app.example") -> Route:
    return Route(host, Frontend(host, "app", backends, frozenset(dead or ())))


# ------------------------------------------------------------------ choose_backend


def test_live_backends_skip_dead_ids() -> None:
    assert live_backends(route(dead={1})) == [Backend(0, URLS[0]), Backend(2, URLS[2])]


def test_live_backends_ignore_dead_ids_out_of_range() -> None:
    assert len(live_backends(route(dead={7}))) == 3


@pytest.mark.parametrize("dead", [{0}, {1}, {2}, {0, 1}, {0, 2}, {1, 2}])
def test_choose_never_returns_a_dead_id(dead: set[int]) -> None:
    rng = random.Random(1)
    r = route(dead=dead)
    for _ in range(300):
        backend, panic = choose_backend(r, rng)
        assert backend.id not in dead
        assert backend.url == URLS[backend.id]
        assert panic is False


def test_single_live_backend_is_always_chosen() -> None:
    r = route(dead={0, 2})
    assert {choose_backend(r, random.Random(seed))[0] for seed in range(20)} == {Backend(1, URLS[1])}


def test_no_backends_raise_no_live_backend() -> None:
    with pytest.raises(NoLiveBackend) as info:
        choose_backend(route(backends=()))
    assert info.value.status == 502


def test_all_dead_tries_them_anyway_in_panic_mode() -> None:
    rng = random.Random(3)
    r = route(dead={0, 1, 2})
    seen = set()
    for _ in range(100):
        backend, panic = choose_backend(r, rng)
        assert panic is True
        seen.add(backend.id)
    assert seen == {0, 1, 2}


def test_all_dead_and_all_tried_raise_no_live_backend() -> None:
    with pytest.raises(NoLiveBackend):
        choose_backend(route(dead={0, 1, 2}), random.Random(0), tried=set(URLS))


def test_tried_backends_are_skipped() -> None:
    rng = random.Random(5)
    for _ in range(50):
        backend, _ = choose_backend(route(), rng, tried={URLS[0], URLS[2]})
        assert backend == Backend(1, URLS[1])


def test_live_but_all_tried_raises_even_if_dead_ones_remain() -> None:
    # Backend 2 is dead and untried, but not every backend is dead: no panic mode.
    with pytest.raises(NoLiveBackend):
        choose_backend(route(dead={2}), random.Random(0), tried={URLS[0], URLS[1]})


@pytest.mark.parametrize(("backends", "dead", "live"), [
    (URLS[:2], set(), (0, 1)),
    (URLS, {1}, (0, 2)),
])
def test_two_live_backends_share_the_load_evenly(backends: tuple[str, ...], dead: set[int],
                                                 live: tuple[int, int]) -> None:
    rng = random.Random(12345)
    r = route(backends=backends, dead=dead)
    counts = Counter(choose_backend(r, rng)[0].id for _ in range(2000))
    assert set(counts) == set(live)
    for backend_id in live:
        assert 800 <= counts[backend_id] <= 1200, counts  # 40% to 60%


def test_three_live_backends_are_all_used() -> None:
    rng = random.Random(7)
    counts = Counter(choose_backend(route(), rng)[0].id for _ in range(3000))
    assert set(counts) == {0, 1, 2}
    assert min(counts.values()) > 800


# ------------------------------------------------------------------ is_failure_answer


@pytest.mark.parametrize(("status", "failure"), [
    (200, False), (301, False), (400, False), (404, False), (405, False), (499, False),
    (501, False), (505, False), (507, False), (599, False),  # about the request, not the backend
    (502, True), (503, True), (504, True),
    (600, False),
])
def test_failure_answers(status: int, failure: bool) -> None:
    assert is_failure_answer(status, [], dead_on_500=True) is failure


def test_500_depends_on_the_setting() -> None:
    assert is_failure_answer(500, [], dead_on_500=True) is True
    assert is_failure_answer(500, [], dead_on_500=False) is False


def test_503_with_retry_after_is_maintenance() -> None:
    assert is_failure_answer(503, [("Retry-After", "120")], dead_on_500=True) is False
    assert is_failure_answer(503, [("retry-after", "120")], dead_on_500=True) is False
    assert is_failure_answer(503, [("Content-Type", "text/html")], dead_on_500=True) is True


# ------------------------------------------------------------------ BackendHealth


class FakeStore:
    def __init__(self, written: bool = True, error: StoreError | None = None) -> None:
        self.written = written
        self.error = error
        self.marks: list[tuple[str, int, str, int, int]] = []

    keys = KeySpace()

    def mark_dead(self, host: str, backend_id: int, backend_url: str, backend_count: int,
                  ttl: int) -> bool:
        if self.error:
            raise self.error
        self.marks.append((host, backend_id, backend_url, backend_count, ttl))
        return self.written


def health(store: FakeStore, dead_on_500: bool = True, dead_after: int = 1) -> BackendHealth:
    return BackendHealth(store, dead_ttl=30, dead_on_500=dead_on_500,  # type: ignore[arg-type]
                         rng=random.Random(0), clock=lambda: 100.0, dead_after=dead_after)


def test_mark_dead_writes_for_the_requested_host() -> None:
    store = FakeStore()
    r = Route("x.app.example", Frontend("*.app.example", "app", URLS, frozenset()))
    health(store).mark_dead(r, Backend(1, URLS[1]), "connection refused")
    assert store.marks == [("x.app.example", 1, URLS[1], 3, 30)]


def test_only_backend_is_never_marked() -> None:
    store = FakeStore()
    r = route(backends=URLS[:1])
    health(store).mark_dead(r, Backend(0, URLS[0]), "connection refused")
    assert store.marks == []


def test_store_error_while_marking_is_not_raised() -> None:
    store = FakeStore(error=StoreError("down"))
    health(store).mark_dead(route(), Backend(0, URLS[0]), "timeout")


@pytest.mark.parametrize(("status", "headers", "dead_on_500", "marked"), [
    (502, [], True, True),
    (200, [], True, False),
    (501, [], True, False),  # an unknown method: any client can cause it
    (505, [], True, False),
    (405, [], True, False),
    (500, [], False, False),
    (500, [], True, True),
    (503, [("Retry-After", "5")], True, False),
])
def test_check_answer(status: int, headers: list[tuple[str, str]], dead_on_500: bool,
                      marked: bool) -> None:
    store = FakeStore()
    health(store, dead_on_500).check_answer(route(), Backend(2, URLS[2]), status, headers)
    assert bool(store.marks) is marked


def test_choose_in_panic_mode_returns_a_backend() -> None:
    backend = health(FakeStore()).choose(route(dead={0, 1, 2}))
    assert backend.id in (0, 1, 2)


# ------------------------------------------------------------------ failure streaks

BACKEND = Backend(2, URLS[2])


def test_default_marks_on_the_first_failure_as_hipache_does() -> None:
    store = FakeStore()
    health(store).check_answer(route(), BACKEND, 502, [])
    assert store.marks == [("app.example", 2, URLS[2], 3, 30)]


def test_marked_only_after_dead_after_failures_in_a_row() -> None:
    store = FakeStore()
    policy = health(store, dead_after=3)
    policy.check_answer(route(), BACKEND, 502, [])
    policy.record_failure(route(), BACKEND, "connection refused")
    assert store.marks == []
    policy.check_answer(route(), BACKEND, 504, [])
    assert store.marks == [("app.example", 2, URLS[2], 3, 30)]


@pytest.mark.parametrize("status", [200, 404, 501])
def test_any_other_answer_ends_the_streak(status: int) -> None:
    store = FakeStore()
    policy = health(store, dead_after=3)
    for _ in range(2):
        policy.check_answer(route(), BACKEND, 502, [])
    policy.check_answer(route(), BACKEND, status, [])
    for _ in range(2):
        policy.check_answer(route(), BACKEND, 502, [])
    assert store.marks == []
    policy.check_answer(route(), BACKEND, 502, [])
    assert len(store.marks) == 1


def test_streaks_are_per_backend_and_per_host() -> None:
    store = FakeStore()
    policy = health(store, dead_after=2)
    policy.check_answer(route(), Backend(0, URLS[0]), 502, [])
    policy.check_answer(route(), Backend(1, URLS[1]), 502, [])
    policy.check_answer(route(host="other.example"), Backend(0, URLS[0]), 502, [])
    assert store.marks == []
    policy.check_answer(route(), Backend(0, URLS[0]), 502, [])
    assert store.marks == [("app.example", 0, URLS[0], 3, 30)]


def test_a_mark_starts_a_new_streak() -> None:
    store = FakeStore()
    policy = health(store, dead_after=2)
    for _ in range(3):
        policy.check_answer(route(), BACKEND, 502, [])
    assert len(store.marks) == 1  # the third failure is the first of a new streak


def test_streaks_memory_is_bounded() -> None:
    policy = health(FakeStore(), dead_after=5)
    for i in range(FAILURE_STREAKS_MAX + 100):
        policy.record_failure(route(host=f"h{i}.example"), BACKEND, "timeout")
    assert len(policy.streaks) == FAILURE_STREAKS_MAX
    assert ("h0.example", URLS[2]) not in policy.streaks  # the oldest went first


# ------------------------------------------------------------------ malformed backend URLs

BAD = ("http://127.0.0.1:notaport/", "ftp://x", "http://10.0.0.9:80/\r\nX-Injected: 1")


def test_malformed_urls_are_never_chosen() -> None:
    rng = random.Random(2)
    r = route(backends=(BAD[0], URLS[0], BAD[1], URLS[1]))
    assert {choose_backend(r, rng)[0] for _ in range(100)} == {Backend(1, URLS[0]), Backend(3, URLS[1])}


def test_no_usable_url_raises_invalid_frontend_as_a_logged_502() -> None:
    with pytest.raises(InvalidFrontend) as info:
        choose_backend(route(backends=BAD))
    assert info.value.status == 502
    assert info.value.logged  # the health policy's rate-limited line, not one per request


def test_panic_mode_is_among_usable_backends_only() -> None:
    rng = random.Random(4)
    r = route(backends=(BAD[1], URLS[0], URLS[1]), dead={1, 2})
    picks = {choose_backend(r, rng) for _ in range(50)}
    assert picks == {(Backend(1, URLS[0]), True), (Backend(2, URLS[1]), True)}


def test_a_dead_good_backend_beside_malformed_ones_is_still_tried_in_panic_mode() -> None:
    backend, panic = choose_backend(route(backends=(BAD[1], URLS[0]), dead={1}))
    assert backend == Backend(1, URLS[0]) and panic


def test_only_usable_backend_is_never_marked() -> None:
    store = FakeStore()
    health(store).record_failure(route(backends=(BAD[1], URLS[0])), Backend(1, URLS[0]), "refused")
    assert store.marks == []


def test_malformed_urls_are_logged_once_per_interval_naming_the_key(caplog: pytest.LogCaptureFixture) -> None:
    policy = health(FakeStore())
    r = route(backends=(BAD[2], URLS[0]), host="x.app.example")
    with caplog.at_level(logging.WARNING, logger="cjs_proxy.pipeline.passive_health"):
        for _ in range(5):
            assert policy.choose(r) == Backend(1, URLS[0])
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith("frontend:x.app.example: ")
    assert "#0 " in lines[0] and "serving from the others" in lines[0]
    assert "\r" not in lines[0] and "\n" not in lines[0]  # escaped: no forged log line


def test_no_usable_url_is_logged_before_the_502(caplog: pytest.LogCaptureFixture) -> None:
    policy = health(FakeStore())
    with caplog.at_level(logging.WARNING, logger="cjs_proxy.pipeline.passive_health"), pytest.raises(InvalidFrontend):
        policy.choose(route(backends=BAD))
    assert len(caplog.records) == 1
    assert "frontend:app.example" in caplog.records[0].getMessage()
    assert "answering 502" in caplog.records[0].getMessage()


def test_retries_do_not_log_again(caplog: pytest.LogCaptureFixture) -> None:
    policy = health(FakeStore())
    policy.events.clock = iter(range(0, 1000, 60)).__next__  # every call a new interval
    r = route(backends=(BAD[1], URLS[0], URLS[1]))
    with caplog.at_level(logging.WARNING, logger="cjs_proxy.pipeline.passive_health"):
        first = policy.choose(r)
        policy.choose(r, tried=[first.url])
    assert len(caplog.records) == 1


def test_long_malformed_urls_are_shortened_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cjs_proxy.pipeline.passive_health"), pytest.raises(InvalidFrontend):
        health(FakeStore()).choose(route(backends=("x" * 100_000,)))
    assert len(caplog.records[0].getMessage()) < 400
