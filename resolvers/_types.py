"""Value types shared by every resolver: parsed targets, addresses, state snapshots."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*$")


@dataclass(frozen=True)
class Target:
    """A parsed gRPC target URI, ``scheme://authority/endpoint`` (gRPC naming doc).

    ``authority`` names the resolver to ask (for ``dns`` an explicit nameserver), not the
    service: ``dns://8.8.8.8:53/svc:50051`` has authority ``8.8.8.8:53``, endpoint ``svc:50051``.
    """

    scheme: str
    authority: str
    endpoint: str

    @classmethod
    def parse(cls, uri: str) -> Target:
        """Parse ``uri``; raise ``ValueError`` naming what is wrong.

        A string with no ``scheme:`` prefix (``svc:50051``) is taken as ``dns:///svc:50051``,
        as gRPC does.
        """
        if not isinstance(uri, str):
            raise ValueError(f"target must be a string, got {type(uri).__name__}")
        if not uri or uri != uri.strip():
            raise ValueError(f"target {uri!r} is empty or has surrounding whitespace")
        scheme, sep, rest = uri.partition(":")
        if not sep or not _SCHEME.match(scheme) or (not rest.startswith("/") and "/" in rest):
            return cls._bare(uri)
        if rest.startswith("//"):
            authority, slash, endpoint = rest[2:].partition("/")
            if not slash:
                raise ValueError(
                    f"target {uri!r}: expected {scheme}://[authority]/endpoint, missing '/'"
                )
        elif rest.startswith("/"):
            authority, endpoint = "", rest[1:]
        else:
            # ``host:port`` with no scheme looks like ``scheme:opaque``; a numeric "opaque"
            # part means it was a port.
            return cls._bare(uri)
        if not endpoint:
            raise ValueError(f"target {uri!r}: empty endpoint")
        return cls(scheme.lower(), authority, endpoint)

    @classmethod
    def _bare(cls, uri: str) -> Target:
        if "/" in uri or " " in uri:
            raise ValueError(f"target {uri!r} is not scheme://authority/endpoint nor host:port")
        return cls("dns", "", uri)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}/{self.endpoint}"


def split_host_port(hostport: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` / ``v6`` into (host, port); ``ValueError`` on junk."""
    text = hostport.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not host:
            raise ValueError(f"address {hostport!r}: unterminated '['")
        if rest and not rest.startswith(":"):
            raise ValueError(f"address {hostport!r}: junk after ']'")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        host, port_text = text, ""  # a bare IPv6 literal: no port
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"address {hostport!r}: empty host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"address {hostport!r}: missing port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"address {hostport!r}: port must be 1..65535")
    return host, int(port_text)


@dataclass(frozen=True)
class Address:
    """One endpoint. ``attributes`` carry resolver facts (SRV ``weight``, ``priority``)."""

    host: str
    port: int
    attributes: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("Address.host is empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"Address.port {self.port} is not 1..65535")
        if not isinstance(self.attributes, MappingProxyType):
            object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    @property
    def is_ip(self) -> bool:
        """True when ``host`` is an IP literal (no further name resolution needed)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def weight(self) -> int:
        """SRV-style weight, 1 when the resolver gave none."""
        return int(self.attributes.get("weight", 1))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ResolverState:
    """A full snapshot of what a target resolves to; never a delta.

    An empty ``addresses`` is a real "no endpoints" answer (NXDOMAIN, empty record set);
    ``note`` says why, for error messages.
    """

    addresses: tuple[Address, ...]
    service_config: Mapping[str, Any] | None = None
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", tuple(self.addresses))
