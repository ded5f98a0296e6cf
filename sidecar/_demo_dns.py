"""A minimal authoritative DNS server over UDP on loopback, for ``sidecar demo``.

It serves A records that the demo changes while clients run, as a headless Kubernetes Service's
records change while pods come and go. Known names without A records of the asked type (AAAA,
for instance) get an empty NOERROR answer; unknown names NXDOMAIN; both with an SOA whose TTL
tells resolvers when to ask again (RFC 2308). Port 0: the kernel picks a free port.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DemoDnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self._server.answer(data)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)


class DemoDnsServer:
    """Authoritative for the names given to :meth:`set_a`; ``async with`` starts and stops it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._a: dict[dns.name.Name, dns.rrset.RRset] = {}
        self._transport: asyncio.DatagramTransport | None = None

    async def __aenter__(self) -> DemoDnsServer:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, 0)
        )
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def set_a(self, name: str, addresses: Iterable[str], ttl: int) -> None:
        """Answer ``name`` with these A records from now on."""
        owner = dns.name.from_text(name)
        rdatas = [dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.A, a) for a in addresses]
        self._a[owner] = dns.rrset.from_rdata_list(owner, ttl, rdatas)

    def answer(self, data: bytes) -> bytes | None:
        """The wire reply to one query; ``None`` for what is not a DNS query."""
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        response.flags |= dns.flags.AA
        records = self._a.get(question.name)
        if records is not None and question.rdtype == dns.rdatatype.A:
            response.answer.append(records)
        else:
            if records is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(_soa(question.name))
        return response.to_wire()


def _soa(name: dns.name.Name, ttl: int = 1) -> dns.rrset.RRset:
    zone = name.parent() if len(name) > 1 else name
    soa = dns.rdata.from_text(
        dns.rdataclass.IN,
        dns.rdatatype.SOA,
        f"ns.{zone} hostmaster.{zone} 1 {ttl} {ttl} {ttl} {ttl}",
    )
    return dns.rrset.from_rdata_list(zone, ttl, [soa])
