"""``dns:name:port``, ``dns:///name:port`` and ``dns://ns-host:ns-port/name:port``: A + AAAA,
refreshed on TTL.

The empty authority asks the system nameservers (``/etc/resolv.conf``, with its search list and
``ndots``, as the OS resolver would); an explicit ``ns-host:ns-port`` asks that server only and
takes the name as absolute. The port defaults to 443, as in gRPC. IP literals and
``localhost`` are answered without a lookup.

Unlike grpcio's own ``dns:`` resolver, which re-resolves only when a connection breaks, this one
re-queries when the records' TTL expires (see :mod:`resolvers._polling` for the timing rules).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

from resolvers._base import Resolver, ResolverListener, ResolverOptions
from resolvers._polling import LookupResult, PollingResolver, ResolutionError
from resolvers._types import Address, Target, split_host_port

__all__ = [
    "DEFAULT_NAMESERVER_PORT",
    "DEFAULT_PORT",
    "DnsClient",
    "DnsResolverBuilder",
    "HostAnswer",
    "RecordAnswer",
    "ResolutionError",
    "parse_dns_name",
    "parse_nameserver",
]

DEFAULT_PORT = 443
"""Port used when a ``dns:`` target names none (gRPC's rule)."""

DEFAULT_NAMESERVER_PORT = 53

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
# Per-try timeout of dnspython (it retries UDP within the lookup's lifetime): short enough that
# one lost datagram does not use up the whole lifetime.
_TRY_TIMEOUT = 2.0
_LOCALHOST = "localhost"


def parse_nameserver(authority: str) -> tuple[str, int] | None:
    """``""`` -> ``None`` (system nameservers); ``ip[:port]`` -> ``(ip, port)``.

    The nameserver must be an IP literal (or ``localhost``): resolving the resolver's own
    address would need another resolver. ``ValueError`` on anything else.
    """
    if not authority:
        return None
    host, port = split_host_port(authority, DEFAULT_NAMESERVER_PORT)
    if host.lower() == _LOCALHOST:
        return "127.0.0.1", port
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        raise ValueError(
            f"DNS nameserver {authority!r} must be an IP address with an optional port"
        ) from None


def parse_dns_name(name: str) -> dns.name.Name:
    """Check a host name (letters, digits, ``-``, ``_``; labels up to 63, 253 in all);
    ``ValueError`` naming what is wrong.

    The dnspython name is relative unless ``name`` ends with ``.``, so that the system
    resolver can apply the search list to it (``echo.default`` in Kubernetes).
    """
    text = name[:-1] if name.endswith(".") else name
    if not text or len(text) > 253:
        raise ValueError(f"DNS name {name!r} is empty or longer than 253 characters")
    for label in text.split("."):
        if not _LABEL.match(label):
            raise ValueError(f"DNS name {name!r}: bad label {label!r}")
    return dns.name.from_text(name, origin=None)


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


@dataclass(frozen=True)
class RecordAnswer:
    """One record type's answer. ``rrset`` is ``None`` when the name has no such records
    (``nxdomain`` tells whether the name exists at all); ``ttl`` is then the negative TTL."""

    rrset: dns.rrset.RRset | None
    ttl: float
    nxdomain: bool = False
    response: dns.message.Message | None = None


@dataclass(frozen=True)
class HostAnswer:
    """The A + AAAA addresses of one name, the smaller TTL, and whether the name is unknown."""

    ips: tuple[str, ...]
    ttl: float
    nxdomain: bool = False


def _negative_ttl(response: dns.message.Message | None) -> float:
    # RFC 2308: the negative TTL is min(SOA TTL, SOA MINIMUM); with no SOA the answer is not
    # to be cached, i.e. asked again as soon as the refresh floor allows.
    if response is None:
        return 0.0
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset) > 0:
            return float(min(rrset.ttl, rrset[0].minimum))
    return 0.0


class DnsClient:
    """Queries for one resolver: one record type at a time, failures as
    :class:`ResolutionError` naming ``target`` and the nameserver."""

    def __init__(
        self, target: str, nameserver: tuple[str, int] | None, options: ResolverOptions
    ) -> None:
        self.target = target
        self.nameserver = nameserver
        self._lifetime = options.lookup_timeout
        self._resolver: dns.asyncresolver.Resolver | None = None

    @property
    def _server_text(self) -> str:
        if self.nameserver is None:
            return "the system nameservers"
        host, port = self.nameserver
        return f"nameserver {host}:{port}" if ":" not in host else f"nameserver [{host}]:{port}"

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        # Made on first use, not at build: a missing /etc/resolv.conf is then a reported,
        # retried lookup failure instead of a crash while building the channel.
        if self._resolver is None:
            if self.nameserver is None:
                resolver = dns.asyncresolver.Resolver()
            else:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [dns.nameserver.Do53Nameserver(*self.nameserver)]
            resolver.lifetime = self._lifetime
            resolver.timeout = min(_TRY_TIMEOUT, self._lifetime)
            self._resolver = resolver
        return self._resolver

    async def query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> RecordAnswer:
        """Ask for ``rdtype`` records of ``name``; NXDOMAIN and "no records" are answers."""
        type_text = dns.rdatatype.to_text(rdtype)
        try:
            resolver = self._get_resolver()
            answer = await resolver.resolve(
                name,
                rdtype,
                raise_on_no_answer=False,
                # The system resolver applies resolv.conf's search list like the OS does; an
                # explicit nameserver gets the name as written (absolute).
                search=self.nameserver is None,
            )
        except dns.resolver.NXDOMAIN as exc:
            # NXDOMAIN.responses() is untyped; it returns this very mapping.
            found: dict[dns.name.Name, dns.message.Message] = exc.kwargs.get("responses") or {}
            responses = list(found.values())
            ttl = min((_negative_ttl(r) for r in responses), default=0.0)
            return RecordAnswer(
                None, ttl, nxdomain=True, response=responses[-1] if responses else None
            )
        except dns.exception.Timeout as exc:
            raise ResolutionError(
                self.target,
                f"no answer to {type_text} {name} from {self._server_text} "
                f"within {self._lifetime:g}s",
            ) from exc
        except dns.resolver.NoNameservers as exc:
            raise ResolutionError(self.target, f"{type_text} {name}: {exc}") from exc
        except dns.resolver.NoResolverConfiguration as exc:
            raise ResolutionError(
                self.target, "no system nameservers configured (/etc/resolv.conf)"
            ) from exc
        except dns.exception.DNSException as exc:
            raise ResolutionError(
                self.target, f"{type_text} {name} via {self._server_text}: {exc}"
            ) from exc
        if answer.rrset is None:
            return RecordAnswer(None, _negative_ttl(answer.response), response=answer.response)
        ttl = float(answer.chaining_result.minimum_ttl)
        return RecordAnswer(answer.rrset, ttl, response=answer.response)

    async def lookup_host(self, name: dns.name.Name) -> HostAnswer:
        """A and AAAA of ``name``, asked concurrently.

        Both must succeed: a partial answer on a transient failure of one family would quietly
        drop that family's endpoints, while failing keeps the last good list in force.
        """
        results = await asyncio.gather(
            self.query(name, dns.rdatatype.A),
            self.query(name, dns.rdatatype.AAAA),
            return_exceptions=True,
        )
        answers: list[RecordAnswer] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            answers.append(result)
        ips = tuple(
            str(rdata.address) for answer in answers if answer.rrset for rdata in answer.rrset
        )
        ttl = min(answer.ttl for answer in answers)
        nxdomain = not ips and any(answer.nxdomain for answer in answers)
        return HostAnswer(tuple(dict.fromkeys(ips)), ttl, nxdomain)


class _DnsLookup:
    """The ``lookup()`` of one ``dns:`` target."""

    def __init__(self, client: DnsClient, name: dns.name.Name, port: int) -> None:
        self._client = client
        self._name = name
        self._port = port
        self._shown = name.derelativize(dns.name.root)

    async def __call__(self) -> LookupResult:
        answer = await self._client.lookup_host(self._name)
        if answer.nxdomain:
            return LookupResult((), answer.ttl, f"NXDOMAIN for {self._shown}")
        if not answer.ips:
            return LookupResult((), answer.ttl, f"no A/AAAA records for {self._shown}")
        addresses = tuple(Address(ip, self._port) for ip in answer.ips)
        return LookupResult(
            addresses, answer.ttl, f"{len(addresses)} address(es) for {self._shown}"
        )


class _FixedLookup:
    """IP literals and ``localhost``: the answer is known and never expires."""

    def __init__(self, result: LookupResult) -> None:
        self._result = result

    async def __call__(self) -> LookupResult:
        return self._result


@dataclass(frozen=True)
class _DnsTarget:
    """A checked ``dns`` target: exactly one of ``fixed`` (no lookup needed) and ``name``."""

    nameserver: tuple[str, int] | None
    port: int
    fixed: LookupResult | None = None
    name: dns.name.Name | None = None


def _parse_dns_target(target: Target) -> _DnsTarget:
    nameserver = parse_nameserver(target.authority)
    host, port = split_host_port(target.endpoint, DEFAULT_PORT)
    literal = _ip_literal(host)
    if literal is not None:
        fixed = LookupResult((Address(literal, port),), None, "IP literal")
        return _DnsTarget(nameserver, port, fixed=fixed)
    if host.lower() in (_LOCALHOST, _LOCALHOST + "."):
        # RFC 6761: localhost is loopback and must not be sent to nameservers.
        fixed = LookupResult((Address("127.0.0.1", port),), None, "localhost")
        return _DnsTarget(nameserver, port, fixed=fixed)
    if ":" in host:
        # split_host_port took several colons for a bare IPv6 literal, and it is not one.
        raise ValueError(
            f"{target.endpoint!r} is neither host:port nor an IPv6 address ([addr]:port)"
        )
    return _DnsTarget(nameserver, port, name=parse_dns_name(host))


class DnsResolverBuilder:
    """Builder for the ``dns`` scheme (A + AAAA records): ``dns:host[:port]``,
    ``dns:///host[:port]``, ``dns://ns-ip[:ns-port]/host[:port]``."""

    scheme = "dns"

    def validate_target(self, target: Target) -> None:
        """Raise ``ValueError`` saying what is wrong with ``target``."""
        _parse_dns_target(target)

    def default_authority(self, target: Target) -> str | None:
        """The endpoint as written (``svc.ns:50051``), as gRPC sends it."""
        return target.endpoint

    def build(
        self, target: Target, listener: ResolverListener, options: ResolverOptions
    ) -> Resolver:
        """Start watching ``target``; ``ValueError`` if it is malformed."""
        parsed = _parse_dns_target(target)
        if parsed.fixed is not None:
            lookup: _FixedLookup | _DnsLookup = _FixedLookup(parsed.fixed)
        else:
            assert parsed.name is not None
            client = DnsClient(str(target), parsed.nameserver, options)
            lookup = _DnsLookup(client, parsed.name, parsed.port)
        return PollingResolver(str(target), lookup, listener, options)
