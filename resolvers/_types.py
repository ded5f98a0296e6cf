"""Value types shared by every resolver: parsed targets, addresses, state snapshots."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*$")
_DOTTED_NUMBERS = re.compile(r"^[0-9.]+$")


@dataclass(frozen=True)
class Target:
    """A parsed gRPC target URI (gRPC naming doc): ``scheme://authority/endpoint``,
    ``scheme:/endpoint`` or ``scheme:endpoint``.

    ``authority`` names the resolver to ask (for ``dns`` an explicit nameserver), not the
    service: ``dns://8.8.8.8:53/svc:50051`` has authority ``8.8.8.8:53``, endpoint ``svc:50051``.
    ``opaque`` is true for the ``scheme:endpoint`` form (``dns:svc:50051``,
    ``ipv4:10.0.0.1:80``); it matters where a leading ``/`` would: ``unix:run/app.sock`` is a
    relative path, ``unix:/run/app.sock`` and ``unix:///run/app.sock`` absolute ones.
    """

    scheme: str
    authority: str
    endpoint: str
    opaque: bool = False

    @classmethod
    def parse(cls, uri: str) -> Target:
        """Parse ``uri``; raise ``ValueError`` naming what is wrong.

        A string with no ``scheme:`` prefix (``svc:50051``, ``10.0.0.1:80``, ``[::1]:80``) is
        taken as ``dns:///svc:50051``, as gRPC does: a "scheme" followed by a port number is a
        host name.
        """
        if not isinstance(uri, str):
            raise ValueError(f"target must be a string, got {type(uri).__name__}")
        if not uri or uri != uri.strip():
            raise ValueError(f"target {uri!r} is empty or has surrounding whitespace")
        scheme, sep, rest = uri.partition(":")
        if not sep or not _SCHEME.match(scheme) or rest.partition("/")[0].isdecimal():
            return cls._bare(uri)
        if not rest:
            raise ValueError(
                f"target {uri!r}: empty endpoint: nothing follows {scheme + ':'!r} "
                "(no host, address or path)"
            )
        if rest.startswith("//"):
            authority, slash, endpoint = rest[2:].partition("/")
            if not slash:
                raise ValueError(
                    f"target {uri!r}: expected {scheme}://[authority]/endpoint, missing '/'"
                )
        elif rest.startswith("/"):
            authority, endpoint = "", rest[1:]
        else:
            return cls(scheme.lower(), "", rest, opaque=True)
        if not endpoint:
            raise ValueError(f"target {uri!r}: empty endpoint (no host, address or path)")
        return cls(scheme.lower(), authority, endpoint)

    @classmethod
    def _bare(cls, uri: str) -> Target:
        if "/" in uri or " " in uri:
            raise ValueError(f"target {uri!r} is not scheme://authority/endpoint nor host:port")
        return cls("dns", "", uri)

    def __str__(self) -> str:
        if self.opaque:
            return f"{self.scheme}:{self.endpoint}"
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
    if _DOTTED_NUMBERS.match(host):
        # Digits and dots only is never a DNS name: an IPv4 address, or a mistake such as
        # 256.1.1.1 that a resolver would otherwise send to DNS as a name.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"address {hostport!r}: {host!r} is not an IPv4 address (four numbers 0..255)"
            ) from None
    if not port_text:
        if default_port is None:
            raise ValueError(f"address {hostport!r}: missing port")
        return host, default_port
    # ASCII digits only: str.isdigit() also takes other scripts' digits ("٨٠" is 80).
    digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    if not digits or not 0 < int(port_text) < 65536:
        raise ValueError(f"address {hostport!r}: port must be 1..65535")
    return host, int(port_text)


@dataclass(frozen=True)
class Address:
    """One endpoint. ``attributes`` carry resolver facts (SRV ``weight``, ``priority``).

    ``network`` is ``"tcp"`` (``host`` a name or IP, ``port`` 1..65535) or ``"unix"``
    (``host`` a socket path, absolute or relative to the working directory, ``port`` 0):
    build the latter with :meth:`Address.unix`.
    """

    host: str
    port: int
    attributes: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    network: Literal["tcp", "unix"] = "tcp"

    @classmethod
    def unix(cls, path: str, attributes: Mapping[str, Any] | None = None) -> Address:
        """The Unix domain socket at ``path``."""
        return cls(path, 0, attributes or {}, network="unix")

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("Address.host is empty")
        if self.network == "unix":
            if self.port != 0:
                raise ValueError(f"Address.port {self.port}: a unix socket address has port 0")
        elif self.network != "tcp":
            raise ValueError(f"Address.network {self.network!r} is not 'tcp' or 'unix'")
        elif not 0 < self.port < 65536:
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
        if self.network == "unix":
            return f"unix:{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ResolverState:
    """A full snapshot of what a target resolves to; never a delta.

    An empty ``addresses`` is a real "no endpoints" answer (NXDOMAIN, empty record set);
    ``note`` says why, for error messages.
    """

    addresses: tuple[Address, ...]
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", tuple(self.addresses))
