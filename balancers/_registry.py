"""Policy name -> builder registry: explicit ``register()`` plus the ``meshkit.balancers``
entry-point group, loaded lazily on first lookup of an unknown name."""

from __future__ import annotations

from balancers._base import BalancerBuilder
from resolvers.plugins import PluginRegistry

ENTRY_POINT_GROUP = "meshkit.balancers"

_registry: PluginRegistry[BalancerBuilder] = PluginRegistry(
    ENTRY_POINT_GROUP, "name", "load-balancing policy"
)


def register(builder: BalancerBuilder) -> None:
    """Register ``builder`` under ``builder.name``, replacing any earlier one."""
    _registry.register(builder)


def get(name: str) -> BalancerBuilder:
    """The builder registered as ``name``; ``LookupError`` listing known names if none."""
    return _registry.get(name)


def policy_names() -> list[str]:
    """Registered policy names (entry points included), sorted."""
    return _registry.names()
