"""Fixed address lists, pushed once: ``static``, ``ipv4``, ``ipv6`` and ``unix`` targets.

- ``static:///host:port,host:port`` -- names or IP literals, each with its port;
- ``ipv4:10.0.0.1:80,10.0.0.2`` -- IPv4 literals, port 443 when none is given (gRPC's rule);
- ``ipv6:[::1]:80,[fe80::1%eth0]`` -- bracketed IPv6 literals, port 443 when none is given;
- ``unix:path`` (relative to the working directory), ``unix:/abs/path``,
  ``unix:///abs/path`` -- one Unix domain socket.

``ipv4``, ``ipv6`` and ``unix`` are gRPC's own schemes (gRPC naming doc); each also takes the
``scheme:///...`` form.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from resolvers._base import Resolver, ResolverListener, ResolverOptions
from resolvers._types import Address, ResolverState, Target, split_host_port

__all__ = [
    "DEFAULT_PORT",
    "Ipv4ResolverBuilder",
    "Ipv6ResolverBuilder",
    "StaticResolverBuilder",
    "UnixResolverBuilder",
    "parse_ipv4_endpoint",
    "parse_ipv6_endpoint",
    "parse_static_endpoint",
    "unix_socket_path",
]

DEFAULT_PORT = 443
"""Port of an ``ipv4``/``ipv6`` address that names none (gRPC's rule)."""

# sun_path is 108 bytes on Linux, NUL included: a longer path can never be connected to.
_MAX_UNIX_PATH = 107


def _entries(endpoint: str) -> list[str]:
    parts = endpoint.split(",")
    if any(not part.strip() for part in parts):
        raise ValueError(f"empty entry in the list {endpoint!r}")
    return parts


def parse_static_endpoint(endpoint: str) -> tuple[Address, ...]:
    """``a:1,[::1]:2,host:3`` -> addresses; ``ValueError`` naming the bad entry."""
    addresses = [Address(*split_host_port(part)) for part in _entries(endpoint)]
    return tuple(dict.fromkeys(addresses))


def parse_ipv4_endpoint(endpoint: str) -> tuple[Address, ...]:
    """``10.0.0.1:80,10.0.0.2`` -> addresses (port 443 by default); ``ValueError`` naming the
    entry that is not an IPv4 address."""
    addresses = []
    for part in _entries(endpoint):
        if part.startswith("[") or part.count(":") > 1:
            raise ValueError(f"{part!r} is not an IPv4 address (use ipv6: for IPv6 addresses)")
        host, port = split_host_port(part, DEFAULT_PORT)
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"{host!r} is not an IPv4 address (four decimal numbers 0..255, a.b.c.d)"
            ) from None
        addresses.append(Address(str(ip), port))
    return tuple(dict.fromkeys(addresses))


def parse_ipv6_endpoint(endpoint: str) -> tuple[Address, ...]:
    """``[::1]:80,[fe80::1%eth0]`` -> addresses (port 443 by default); ``ValueError`` naming
    the bad entry. Brackets are required: in ``::1:80`` the port cannot be told apart."""
    addresses = []
    for part in _entries(endpoint):
        if not part.startswith("["):
            raise ValueError(
                f"{part!r}: an IPv6 address must be in brackets, [addr] or [addr]:port"
            )
        host, port = split_host_port(part, DEFAULT_PORT)
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        addresses.append(Address(str(ip), port))
    return tuple(dict.fromkeys(addresses))


def unix_socket_path(target: Target) -> str:
    """The socket path of a ``unix`` target; ``ValueError`` saying what is wrong."""
    if target.authority:
        raise ValueError(
            f"authority {target.authority!r} must be empty (unix:path, unix:/abs/path or "
            "unix:///abs/path)"
        )
    # ``unix:rel/path`` (opaque) is relative; ``unix:/abs`` and ``unix:///abs`` lost their
    # leading "/" when parsed.
    path = target.endpoint if target.opaque else "/" + target.endpoint
    if "\0" in path:
        raise ValueError("the socket path contains a NUL character")
    if len(path.encode()) > _MAX_UNIX_PATH:
        raise ValueError(
            f"the socket path is {len(path.encode())} bytes long; a Unix socket path has at "
            f"most {_MAX_UNIX_PATH}"
        )
    return path


class StaticResolver(Resolver):
    """Pushes its list once at build; ``resolve_now`` has nothing new to say."""

    def __init__(self, addresses: tuple[Address, ...], listener: ResolverListener) -> None:
        self._closed = False
        listener.update_state(ResolverState(addresses, note="static list"))

    def resolve_now(self) -> None:
        pass

    async def aclose(self) -> None:
        self._closed = True


class _FixedListBuilder:
    """A builder whose target is its own answer: checked by ``_parse``, pushed once."""

    scheme: str
    _parse: Callable[[str], tuple[Address, ...]]  # a staticmethod in each subclass

    def addresses(self, target: Target) -> tuple[Address, ...]:
        """The addresses ``target`` names; ``ValueError`` if it is malformed."""
        if target.authority:
            raise ValueError(
                f"authority {target.authority!r} must be empty "
                f"({self.scheme}:addresses or {self.scheme}:///addresses)"
            )
        return self._parse(target.endpoint)

    def validate_target(self, target: Target) -> None:
        """Raise ``ValueError`` saying what is wrong with ``target``."""
        self.addresses(target)

    def default_authority(self, target: Target) -> str | None:
        """The one address as ``host:port``; ``None`` for a list of several."""
        addresses = self.addresses(target)
        return str(addresses[0]) if len(addresses) == 1 else None

    def build(
        self, target: Target, listener: ResolverListener, options: ResolverOptions
    ) -> Resolver:
        """Push the target's addresses once; ``ValueError`` if it is malformed."""
        return StaticResolver(self.addresses(target), listener)


class StaticResolverBuilder(_FixedListBuilder):
    """Builder for the ``static`` scheme: ``host:port`` entries, names or IP literals."""

    scheme = "static"
    _parse = staticmethod(parse_static_endpoint)


class Ipv4ResolverBuilder(_FixedListBuilder):
    """Builder for gRPC's ``ipv4`` scheme."""

    scheme = "ipv4"
    _parse = staticmethod(parse_ipv4_endpoint)


class Ipv6ResolverBuilder(_FixedListBuilder):
    """Builder for gRPC's ``ipv6`` scheme."""

    scheme = "ipv6"
    _parse = staticmethod(parse_ipv6_endpoint)


class UnixResolverBuilder:
    """Builder for gRPC's ``unix`` scheme: one socket path."""

    scheme = "unix"

    def validate_target(self, target: Target) -> None:
        """Raise ``ValueError`` saying what is wrong with ``target``."""
        unix_socket_path(target)

    def default_authority(self, target: Target) -> str | None:
        """``localhost``, as gRPC sends for Unix sockets."""
        return "localhost"

    def build(
        self, target: Target, listener: ResolverListener, options: ResolverOptions
    ) -> Resolver:
        """Push the socket's address once; ``ValueError`` if the target is malformed."""
        return StaticResolver((Address.unix(unix_socket_path(target)),), listener)
