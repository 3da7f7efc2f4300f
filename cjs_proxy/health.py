"""Backend choice among the live ones; the dead-marking policy grows here."""

from __future__ import annotations

import random
from dataclasses import dataclass

from .exceptions import NoLiveBackend
from .router import Route


@dataclass(frozen=True)
class Backend:
    """One backend of a frontend: its 0-based id (Hipache's) and its URL."""

    id: int
    url: str


def live_backends(route: Route) -> list[Backend]:
    dead = route.frontend.dead
    return [Backend(i, url) for i, url in enumerate(route.backends) if i not in dead]


def choose_backend(route: Route, rng: random.Random = random._inst) -> Backend:  # type: ignore[attr-defined]
    """A live backend picked uniformly at random (Hipache's balancing)."""
    candidates = live_backends(route)
    if not candidates:
        if not route.backends:
            raise NoLiveBackend(f"frontend {route.frontend.key!r} lists no backend")
        raise NoLiveBackend(f"every backend of {route.frontend.key!r} is marked dead")
    return candidates[rng.randrange(len(candidates))] if len(candidates) > 1 else candidates[0]
