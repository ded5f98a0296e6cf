"""Policy name -> builder registry: explicit ``register()`` plus the ``meshkit.balancers``
entry-point group, loaded lazily on first lookup of an unknown name."""

from __future__ import annotations

import threading
from importlib import metadata

from balancers._base import BalancerBuilder

ENTRY_POINT_GROUP = "meshkit.balancers"

_builders: dict[str, BalancerBuilder] = {}
_lock = threading.Lock()
_entry_points_loaded = False


def register(builder: BalancerBuilder) -> None:
    """Register ``builder`` under ``builder.name``, replacing any earlier one."""
    name = getattr(builder, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError("a balancer builder needs a non-empty 'name' attribute")
    with _lock:
        _builders[name] = builder


def get(name: str) -> BalancerBuilder:
    """The builder registered as ``name``; ``LookupError`` listing known names if none."""
    with _lock:
        found = _builders.get(name)
    if found is None:
        _load_entry_points()
        with _lock:
            found = _builders.get(name)
    if found is None:
        raise LookupError(f"no load-balancing policy {name!r}; known: {', '.join(policy_names())}")
    return found


def policy_names() -> list[str]:
    """Registered policy names (entry points included), sorted."""
    _load_entry_points()
    with _lock:
        return sorted(_builders)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        with _lock:
            if ep.name in _builders:
                continue
        try:
            loaded = ep.load()
        except ImportError:
            continue  # a broken third-party plugin must not break channel creation
        builder = loaded() if isinstance(loaded, type) else loaded
        with _lock:
            _builders.setdefault(ep.name, builder)
