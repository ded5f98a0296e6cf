"""``static:///host:port,host:port``: a fixed address list, pushed once."""

from __future__ import annotations

from resolvers._base import Resolver, ResolverListener, ResolverOptions
from resolvers._types import Address, ResolverState, Target, split_host_port


def parse_static_endpoint(endpoint: str) -> tuple[Address, ...]:
    """``a:1,[::1]:2,host:3`` -> addresses; ``ValueError`` naming the bad entry."""
    addresses = []
    for part in endpoint.split(","):
        if not part.strip():
            raise ValueError(f"static target {endpoint!r}: empty entry")
        host, port = split_host_port(part)
        addresses.append(Address(host, port))
    return tuple(dict.fromkeys(addresses))


class StaticResolver(Resolver):
    """Pushes its list once at build; ``resolve_now`` has nothing new to say."""

    def __init__(self, addresses: tuple[Address, ...], listener: ResolverListener) -> None:
        self._closed = False
        listener.update_state(ResolverState(addresses, note="static list"))

    def resolve_now(self) -> None:
        pass

    async def aclose(self) -> None:
        self._closed = True


class StaticResolverBuilder:
    """Builder for the ``static`` scheme."""

    scheme = "static"

    def build(
        self, target: Target, listener: ResolverListener, options: ResolverOptions
    ) -> Resolver:
        if target.authority:
            raise ValueError(f"static target {target}: authority must be empty (static:///...)")
        return StaticResolver(parse_static_endpoint(target.endpoint), listener)
