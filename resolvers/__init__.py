"""Name resolution: a target URI to addresses, watched over time.

Targets follow gRPC's naming doc. Schemes built in: ``dns`` (A/AAAA; ``dns:host:port``,
``dns:///host:port``, ``dns://ns-ip:53/host:port``, and a bare ``host:port``), ``dns+srv``
(SRV: ports and weights), and fixed lists: ``static:///host:port,...``, ``ipv4:a:p,b:p``,
``ipv6:[a]:p,[b]:p``, ``unix:path`` / ``unix:/abs/path`` / ``unix:///abs/path``.
Third-party schemes register with :func:`register` or the ``meshkit.resolvers`` entry-point group.

:func:`check_target` is the one check of a target string: the sidecar's config validation,
its clusters and every balanced channel call it, and the builders' ``build`` run the same code.
"""

from __future__ import annotations

from resolvers._base import (
    Resolver,
    ResolverBuilder,
    ResolverListener,
    ResolverOptions,
    TargetChecker,
)
from resolvers._registry import ENTRY_POINT_GROUP, get, register, schemes
from resolvers._types import Address, ResolverState, Target, split_host_port
from resolvers.static import (
    Ipv4ResolverBuilder,
    Ipv6ResolverBuilder,
    StaticResolverBuilder,
    UnixResolverBuilder,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Address",
    "Resolver",
    "ResolverBuilder",
    "ResolverListener",
    "ResolverOptions",
    "ResolverState",
    "Target",
    "TargetChecker",
    "build",
    "check_target",
    "default_authority",
    "get",
    "register",
    "schemes",
    "split_host_port",
]


def check_target(target: str | Target) -> Target:
    """Parse and validate ``target`` as its scheme's builder would; return it parsed.

    Raises ``ValueError`` naming the target and what is wrong with it, or ``LookupError``
    when no resolver handles its scheme. Builders without a ``validate_target`` are only
    checked when built.
    """
    parsed = target if isinstance(target, Target) else Target.parse(target)
    text = target if isinstance(target, str) else str(target)
    try:
        builder = get(parsed.scheme)
    except LookupError as exc:
        hint = ""
        if parsed.opaque:
            hint = f" (as host:port, {parsed.endpoint!r} would need to be a port number)"
        raise LookupError(f"target {text!r}: {exc}{hint}") from None
    validate = getattr(builder, "validate_target", None)
    if validate is None:
        return parsed
    try:
        validate(parsed)
    except ValueError as exc:
        raise ValueError(f"target {text!r}: {exc}") from None
    except Exception as exc:  # a third-party checker's bug must read as a verdict, not a crash
        raise ValueError(
            f"target {text!r}: the {parsed.scheme!r} resolver failed to check it: {exc!r}"
        ) from exc
    return parsed


def default_authority(target: Target) -> str | None:
    """The ``:authority`` gRPC would send for ``target``: the builder's answer when it has a
    ``default_authority``, else the endpoint (grpc-go's rule)."""
    hook = getattr(get(target.scheme), "default_authority", None)
    if hook is None:
        return target.endpoint
    authority: str | None = hook(target)
    return authority


def build(
    target: str | Target, listener: ResolverListener, options: ResolverOptions | None = None
) -> Resolver:
    """Check ``target`` (:func:`check_target`) and start the resolver its scheme names (on
    the running loop)."""
    parsed = check_target(target)
    return get(parsed.scheme).build(parsed, listener, options or ResolverOptions())


def _register_builtins() -> None:
    # Registered here, not only through entry points, so the built-ins work from a checkout
    # whose installed metadata predates them.
    register(StaticResolverBuilder())
    register(Ipv4ResolverBuilder())
    register(Ipv6ResolverBuilder())
    register(UnixResolverBuilder())
    try:
        from resolvers.dns import DnsResolverBuilder
        from resolvers.srv import SrvResolverBuilder
    except ImportError:  # pragma: no cover - only while the DNS modules are being written
        return
    register(DnsResolverBuilder())
    register(SrvResolverBuilder())


_register_builtins()
