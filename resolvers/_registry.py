"""Scheme -> builder registry: explicit ``register()`` plus the ``meshkit.resolvers``
entry-point group, loaded lazily on first lookup of an unknown scheme."""

from __future__ import annotations

import threading
from importlib import metadata

from resolvers._base import ResolverBuilder

ENTRY_POINT_GROUP = "meshkit.resolvers"

_builders: dict[str, ResolverBuilder] = {}
_lock = threading.Lock()
_entry_points_loaded = False


def register(builder: ResolverBuilder) -> None:
    """Register ``builder`` for ``builder.scheme``, replacing any earlier one."""
    scheme = getattr(builder, "scheme", None)
    if not isinstance(scheme, str) or not scheme:
        raise ValueError("a resolver builder needs a non-empty 'scheme' attribute")
    with _lock:
        _builders[scheme.lower()] = builder


def get(scheme: str) -> ResolverBuilder:
    """The builder for ``scheme``; ``LookupError`` listing the known schemes if none."""
    key = scheme.lower()
    with _lock:
        found = _builders.get(key)
    if found is None:
        _load_entry_points()
        with _lock:
            found = _builders.get(key)
    if found is None:
        raise LookupError(f"no resolver for scheme {scheme!r}; known: {', '.join(schemes())}")
    return found


def schemes() -> list[str]:
    """Registered scheme names, sorted."""
    with _lock:
        return sorted(_builders)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        with _lock:
            if ep.name.lower() in _builders:
                continue
        loaded = ep.load()
        builder = loaded() if isinstance(loaded, type) else loaded
        with _lock:
            _builders.setdefault(ep.name.lower(), builder)
