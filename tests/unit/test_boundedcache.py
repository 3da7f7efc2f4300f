"""The bounded mapping: at most its bound, and the least recently used key goes first."""

from __future__ import annotations

import pytest

from cjs_proxy.boundedcache import BoundedCache


def filled(*keys: str, bound: int = 3) -> BoundedCache[str, int]:
    cache: BoundedCache[str, int] = BoundedCache(bound)
    for value, key in enumerate(keys):
        cache[key] = value
    return cache


def test_never_holds_more_than_its_bound() -> None:
    cache = filled(*(f"k{i}" for i in range(100)))
    assert len(cache) == 3
    assert list(cache) == ["k97", "k98", "k99"]


def test_the_least_recently_written_goes_first() -> None:
    cache = filled("a", "b", "c")
    cache["d"] = 3
    assert "a" not in cache and list(cache) == ["b", "c", "d"]


def test_a_read_keeps_a_key() -> None:
    cache = filled("a", "b", "c")
    assert cache.get("a") == 0
    cache["d"] = 3
    assert list(cache) == ["c", "a", "d"]


def test_rewriting_a_key_keeps_it_and_replaces_its_value() -> None:
    cache = filled("a", "b", "c")
    cache["a"] = 10
    cache["d"] = 3
    assert list(cache) == ["c", "a", "d"] and cache.get("a") == 10


def test_rewriting_at_the_bound_evicts_nothing() -> None:
    cache = filled("a", "b", "c")
    cache["b"] = 5
    assert len(cache) == 3 and "a" in cache


def test_membership_is_not_a_use() -> None:
    cache = filled("a", "b", "c")
    assert "a" in cache
    cache["d"] = 3
    assert "a" not in cache


def test_missing_keys_give_the_default() -> None:
    cache = filled("a")
    assert cache.get("x") is None
    assert cache.get("x", 7) == 7
    assert cache.pop("x") is None
    assert cache.pop("x", 7) == 7


def test_pop_forgets_and_returns() -> None:
    cache = filled("a", "b")
    assert cache.pop("a") == 0
    assert "a" not in cache and len(cache) == 1


def test_clear_forgets_everything() -> None:
    cache = filled("a", "b")
    cache.clear()
    assert len(cache) == 0 and cache.get("a") is None


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BoundedCache(0)
