"""Scheme -> builder registry: explicit ``register()`` plus the ``meshkit.resolvers``
entry-point group, loaded lazily on first lookup of an unknown scheme."""

from __future__ import annotations

from resolvers._base import ResolverBuilder
from resolvers.plugins import PluginRegistry

ENTRY_POINT_GROUP = "meshkit.resolvers"

_registry: PluginRegistry[ResolverBuilder] = PluginRegistry(
    ENTRY_POINT_GROUP, "scheme", "resolver for scheme", normalize=str.lower
)


def register(builder: ResolverBuilder) -> None:
    """Register ``builder`` for ``builder.scheme``, replacing any earlier one."""
    _registry.register(builder)


def get(scheme: str) -> ResolverBuilder:
    """The builder for ``scheme``; ``LookupError`` listing the known schemes if none."""
    return _registry.get(scheme)


def schemes() -> list[str]:
    """Registered scheme names, sorted."""
    return _registry.names()
