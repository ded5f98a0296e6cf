"""``dns+srv:///_grpc._tcp.name`` and ``dns+srv://ns-host:ns-port/_grpc._tcp.name``: SRV records.

Each SRV record gives a host and a port; its ``weight`` and ``priority`` ride along as
:class:`~resolvers.Address` attributes. Only the lowest-priority group is used (RFC 2782: the
others are fallbacks). The hosts' A/AAAA come from the answer's additional section when the
server put them there, else from queries of their own. The refresh TTL is the smallest over
the SRV and address records.
"""

from __future__ import annotations

import asyncio
import logging

import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype

from resolvers._base import Resolver, ResolverListener, ResolverOptions
from resolvers._polling import LookupResult, PollingResolver
from resolvers._types import Address, Target
from resolvers.dns import DnsClient, HostAnswer, parse_dns_name, parse_nameserver

__all__ = ["SrvResolverBuilder"]

_log = logging.getLogger(__name__)


def _from_additional(
    response: dns.message.Message | None, host: dns.name.Name
) -> HostAnswer | None:
    """The A/AAAA of ``host`` carried in ``response``'s additional section, if any."""
    if response is None:
        return None
    ips: list[str] = []
    ttls: list[float] = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        rrset = response.get_rrset(response.additional, host, dns.rdataclass.IN, rdtype)
        if rrset is not None:
            ttls.append(float(rrset.ttl))
            ips.extend(str(rdata.address) for rdata in rrset)
    if not ips:
        return None
    return HostAnswer(tuple(dict.fromkeys(ips)), min(ttls))


class _SrvLookup:
    """The ``lookup()`` of one ``dns+srv:`` target."""

    def __init__(self, client: DnsClient, name: dns.name.Name) -> None:
        self._client = client
        self._name = name
        self._shown = name.derelativize(dns.name.root)

    async def __call__(self) -> LookupResult:
        srv = await self._client.query(self._name, dns.rdatatype.SRV)
        if srv.nxdomain:
            return LookupResult((), srv.ttl, f"NXDOMAIN for {self._shown}")
        if srv.rrset is None:
            return LookupResult((), srv.ttl, f"no SRV records for {self._shown}")
        # Target "." means "decidedly not available here" (RFC 2782); port 0 cannot be dialled.
        records = [r for r in srv.rrset if r.target != dns.name.root and r.port != 0]
        if not records:
            return LookupResult((), srv.ttl, f"SRV for {self._shown} offers no usable target")
        best = min(r.priority for r in records)
        group = [r for r in records if r.priority == best]

        hosts: dict[dns.name.Name, HostAnswer | None] = {
            r.target: _from_additional(srv.response, r.target) for r in group
        }
        missing = [host for host, found in hosts.items() if found is None]
        if missing:
            # return_exceptions: one failed target must not leave the others' queries running.
            looked_up = await asyncio.gather(
                *(self._client.lookup_host(h) for h in missing), return_exceptions=True
            )
            for host, found in zip(missing, looked_up, strict=True):
                if isinstance(found, BaseException):
                    raise found
                hosts[host] = found

        ttl = srv.ttl
        addresses: dict[tuple[str, int], Address] = {}
        for record in group:
            host_answer = hosts[record.target]
            if host_answer is None or not host_answer.ips:
                continue
            ttl = min(ttl, host_answer.ttl)
            attributes = {"weight": int(record.weight), "priority": int(record.priority)}
            for ip in host_answer.ips:
                addresses.setdefault((ip, record.port), Address(ip, record.port, attributes))
        # A target that stopped existing still bounds the refresh by its negative TTL.
        for host_answer in hosts.values():
            if host_answer is not None and not host_answer.ips:
                ttl = min(ttl, host_answer.ttl)
        if not addresses:
            return LookupResult((), ttl, f"SRV targets of {self._shown} have no A/AAAA records")
        return LookupResult(
            tuple(addresses.values()), ttl, f"{len(addresses)} address(es) for {self._shown}"
        )


class SrvResolverBuilder:
    """Builder for the ``dns+srv`` scheme (SRV records: ports, weights, priorities)."""

    scheme = "dns+srv"

    @staticmethod
    def _parse(target: Target) -> tuple[tuple[str, int] | None, dns.name.Name]:
        nameserver = parse_nameserver(target.authority)
        if ":" in target.endpoint:
            raise ValueError(
                f"the endpoint {target.endpoint!r} is a name only; ports come from the records"
            )
        return nameserver, parse_dns_name(target.endpoint)

    def validate_target(self, target: Target) -> None:
        """Raise ``ValueError`` saying what is wrong with ``target``."""
        self._parse(target)

    def default_authority(self, target: Target) -> str | None:
        """The service's name without the leading ``_service._proto`` labels."""
        labels = target.endpoint.split(".")
        while labels and labels[0].startswith("_"):
            labels.pop(0)
        return ".".join(labels) or None

    def build(
        self, target: Target, listener: ResolverListener, options: ResolverOptions
    ) -> Resolver:
        """Start watching ``target``; ``ValueError`` if it is malformed."""
        nameserver, name = self._parse(target)
        client = DnsClient(str(target), nameserver, options)
        return PollingResolver(str(target), _SrvLookup(client, name), listener, options)
