"""Name resolution: a target URI to addresses, watched over time.

Schemes built in: ``static``, ``dns`` (A/AAAA), ``dns+srv`` (SRV: ports and weights).
Third-party schemes register with :func:`register` or the ``meshkit.resolvers`` entry-point group.
"""

from __future__ import annotations

from resolvers._base import Resolver, ResolverBuilder, ResolverListener, ResolverOptions
from resolvers._registry import ENTRY_POINT_GROUP, get, register, schemes
from resolvers._types import Address, ResolverState, Target, split_host_port
from resolvers.static import StaticResolverBuilder

__all__ = [
    "ENTRY_POINT_GROUP",
    "Address",
    "Resolver",
    "ResolverBuilder",
    "ResolverListener",
    "ResolverOptions",
    "ResolverState",
    "Target",
    "build",
    "get",
    "register",
    "schemes",
    "split_host_port",
]


def build(
    target: str | Target, listener: ResolverListener, options: ResolverOptions | None = None
) -> Resolver:
    """Parse ``target`` and start the resolver its scheme names (on the running loop)."""
    parsed = target if isinstance(target, Target) else Target.parse(target)
    return get(parsed.scheme).build(parsed, listener, options or ResolverOptions())


def _register_builtins() -> None:
    register(StaticResolverBuilder())
    try:
        from resolvers.dns import DnsResolverBuilder
        from resolvers.srv import SrvResolverBuilder
    except ImportError:  # pragma: no cover - only while the DNS modules are being written
        return
    register(DnsResolverBuilder())
    register(SrvResolverBuilder())


_register_builtins()
