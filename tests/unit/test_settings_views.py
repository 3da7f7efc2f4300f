"""Typed settings views: every field reads a key of the registry, with the type it declares."""

from __future__ import annotations

import dataclasses
import types
import typing

import pytest

from cjs_proxy import config
from cjs_proxy.config.views import ALL_VIEWS, keys_of, setting, view

DEFAULTS = config.parse_settings({})


@pytest.mark.parametrize("cls", ALL_VIEWS, ids=lambda c: c.__name__)
def test_every_view_builds_from_the_defaults_with_its_declared_types(cls: type) -> None:
    built = view(cls, DEFAULTS)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        allowed = hints[field.name]
        options = typing.get_args(allowed) if isinstance(allowed, types.UnionType) else (allowed,)
        runtime = tuple(typing.get_origin(t) or t for t in options)
        value = getattr(built, field.name)
        # A number setting may hold an int default; bool is not accepted for int.
        ok = isinstance(value, runtime) or (float in runtime and isinstance(value, int))
        assert ok, f"{cls.__name__}.{field.name} ({keys_of(cls)[field.name]}) is {value!r}, declared {allowed}"


@pytest.mark.parametrize("cls", ALL_VIEWS, ids=lambda c: c.__name__)
def test_every_key_is_in_the_registry(cls: type) -> None:
    assert set(keys_of(cls).values()) <= set(config.SETTINGS_BY_KEY)


def test_a_key_missing_from_the_registry_fails_at_build_time() -> None:
    @dataclasses.dataclass(frozen=True)
    class Typo:
        debug: bool = setting("server.debgu")

    with pytest.raises(KeyError, match=r"Typo.debug reads 'server.debgu'"):
        view(Typo, DEFAULTS)


def test_views_are_frozen() -> None:
    built = view(ALL_VIEWS[0], DEFAULTS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.redis_timeout = 1.0  # type: ignore[attr-defined,misc]
