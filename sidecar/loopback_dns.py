"""A small authoritative DNS server over UDP on loopback, whose answers its owner changes live.

``sidecar demo`` serves a headless Service's changing records with it, the benchmarks time
re-resolution against it, and the tests drive the DNS resolver with it: one server for all.

Usage::

    async with DnsServer() as dns:
        dns.set_a("svc.test", ["127.0.0.1", "127.0.0.2"], ttl=1)
        resolver = resolvers.build(dns.target("svc.test", 50051), listener)  # dns://127.0.0.1:P/...
        ...
        dns.set_a("svc.test", ["127.0.0.3"], ttl=1)   # clients see it after the TTL
        dns.remove("svc.test")                        # now NXDOMAIN
        dns.mode = "drop"                             # stop answering (or "servfail")
        dns.mode = "normal"
        assert dns.queries["svc.test", "A"] >= 2      # queries received, per (name, type)
        await dns.wait_for_queries("svc.test", "A", 3, timeout=5)  # no sleeps in tests

What it serves, like a real authoritative server:

- a name with records of the asked type: those records (with their TTL), authoritative;
- a known name without records of that type: NOERROR with an empty answer ("no data");
- an unknown name (or one passed to :meth:`remove`): NXDOMAIN;
- negative answers carry an SOA whose TTL and minimum are ``negative_ttl`` (RFC 2308), so
  resolvers re-ask after that long;
- SRV answers carry the targets' A/AAAA in the additional section when this server knows them
  (set ``srv_additional = False`` to leave them out and make clients query them).

Names are case-insensitive and taken as absolute (``"svc.test"`` is ``svc.test.``). UDP only:
answers that do not fit come back truncated (keep record sets small). Bound to port 0, so
servers never collide; the port it got is :attr:`DnsServer.port`. Runs on its owner's loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterable, Sequence
from typing import Literal, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["DnsServer", "Mode"]

Mode = Literal["normal", "drop", "servfail"]

_SRV_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


def _name(name: str | dns.name.Name) -> dns.name.Name:
    if isinstance(name, dns.name.Name):
        return name if name.is_absolute() else name.derelativize(dns.name.root)
    return dns.name.from_text(name, origin=dns.name.root)


def _key(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self._server.answer(data)
        if reply is None or self.transport is None:
            return
        delay = self._server.delay
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._send, reply, addr)
        else:
            self._send(reply, addr)

    def _send(self, reply: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


class DnsServer:
    """Authoritative DNS over UDP on ``host`` (loopback), port chosen by the OS.

    Attributes tests may set at any time:

    - ``mode``: ``"normal"`` answers; ``"drop"`` ignores queries (clients time out);
      ``"servfail"`` answers SERVFAIL to everything.
    - ``delay``: seconds to hold every answer (to keep a lookup in flight).
    - ``negative_ttl``: TTL of the SOA in NXDOMAIN / no-data answers.
    - ``srv_additional``: put SRV targets' addresses in the additional section.

    ``queries`` counts every query received (also dropped ones) by ``(name, type)``, e.g.
    ``queries["svc.test", "AAAA"]``; names lower-case without the final dot. ``query_log``
    lists them in order as ``(loop time, name, type)``.
    """

    def __init__(self, host: str = "127.0.0.1", *, negative_ttl: int = 1) -> None:
        self.host = host
        self.mode: Mode = "normal"
        self.delay = 0.0
        self.negative_ttl = negative_ttl
        self.srv_additional = True
        self.queries: collections.Counter[tuple[str, str]] = collections.Counter()
        self.query_log: list[tuple[float, str, str]] = []
        self._query_seen = asyncio.Event()
        self._records: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset] = {}
        self._names: set[dns.name.Name] = set()
        self._transport: asyncio.DatagramTransport | None = None
        self._port = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the UDP socket (port 0) and start answering."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, 0)
        )
        self._transport = transport
        self._port = int(transport.get_extra_info("sockname")[1])

    async def close(self) -> None:
        """Stop answering and release the socket; idempotent."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The UDP port the server is bound to."""
        if not self._port:
            raise RuntimeError("DnsServer is not started")
        return self._port

    @property
    def authority(self) -> str:
        """``host:port``, the authority part of a target URI naming this server."""
        return f"{self.host}:{self.port}"

    def target(self, name: str, port: int | None = None) -> str:
        """``dns://<this server>/name[:port]``, a target URI resolving through this server."""
        return f"dns://{self.authority}/{name}" + (f":{port}" if port is not None else "")

    def srv_target(self, name: str) -> str:
        """``dns+srv://<this server>/name``."""
        return f"dns+srv://{self.authority}/{name}"

    def query_times(self, name: str, rdtype: str = "A") -> list[float]:
        """Loop times at which ``rdtype`` queries for ``name`` arrived."""
        key = _key(_name(name))
        return [t for t, n, r in self.query_log if n == key and r == rdtype.upper()]

    async def wait_for_queries(
        self, name: str, rdtype: str = "A", count: int = 1, *, timeout: float = 10.0
    ) -> None:
        """Return once ``count`` ``rdtype`` queries for ``name`` have arrived in all;
        ``TimeoutError`` (saying how many did) after ``timeout`` seconds."""
        key = (_key(_name(name)), rdtype.upper())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.queries[key] < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.queries[key]} of {count} {key[1]} queries for {key[0]} "
                    f"within {timeout:g}s"
                )
            self._query_seen.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._query_seen.wait(), remaining)

    # -- records ---------------------------------------------------------------------------

    def set_a(self, name: str, addresses: Iterable[str], ttl: int = 1) -> None:
        """Serve these A records for ``name`` (replacing its A records). An empty list leaves
        the name existing with no A records (a "no data" answer)."""
        self._set(name, dns.rdatatype.A, list(addresses), ttl)

    def set_aaaa(self, name: str, addresses: Iterable[str], ttl: int = 1) -> None:
        """Serve these AAAA records for ``name`` (replacing its AAAA records)."""
        self._set(name, dns.rdatatype.AAAA, list(addresses), ttl)

    def set_srv(
        self, name: str, records: Iterable[tuple[int, int, int, str]], ttl: int = 1
    ) -> None:
        """Serve SRV records for ``name``, each ``(priority, weight, port, target)``.

        Give the targets addresses with :meth:`set_a` / :meth:`set_aaaa`.
        """
        texts = [
            f"{priority} {weight} {port} {_name(target).to_text()}"
            for priority, weight, port, target in records
        ]
        self._set(name, dns.rdatatype.SRV, texts, ttl)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Forget ``name`` (it becomes NXDOMAIN), or only its ``rdtype`` records ("no data")."""
        owner = _name(name)
        if rdtype is not None:
            self._records.pop((owner, dns.rdatatype.from_text(rdtype)), None)
            return
        self._names.discard(owner)
        for key in [k for k in self._records if k[0] == owner]:
            del self._records[key]

    def clear(self) -> None:
        """Forget every name."""
        self._records.clear()
        self._names.clear()

    def _set(
        self, name: str, rdtype: dns.rdatatype.RdataType, texts: Sequence[str], ttl: int
    ) -> None:
        owner = _name(name)
        self._names.add(owner)
        if not texts:
            self._records.pop((owner, rdtype), None)
            return
        rdatas = [dns.rdata.from_text(dns.rdataclass.IN, rdtype, text) for text in texts]
        rrset = dns.rrset.from_rdata_list(owner, ttl, rdatas)
        self._records[(owner, rdtype)] = rrset

    # -- answering -------------------------------------------------------------------------

    def answer(self, data: bytes) -> bytes | None:
        """The reply to one query datagram (``None``: send nothing); a subclass may wrap it."""
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None  # not DNS: ignore, as servers do
        if len(query.question) != 1:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name, rdtype = _key(question.name), dns.rdatatype.to_text(question.rdtype)
        self.queries[name, rdtype] += 1
        self.query_log.append((asyncio.get_running_loop().time(), name, rdtype))
        self._query_seen.set()
        if self.mode == "drop":
            return None
        response = dns.message.make_response(query)
        if self.mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        response.flags |= dns.flags.AA
        qname = question.name
        found = self._records.get((qname, question.rdtype))
        if found is not None:
            response.answer.append(found)
            if question.rdtype == dns.rdatatype.SRV and self.srv_additional:
                self._add_srv_additional(response, found)
        else:
            if qname not in self._names:
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa(qname))
        return self._to_wire(query, response)

    def _add_srv_additional(self, response: dns.message.Message, srv: dns.rrset.RRset) -> None:
        seen: set[dns.name.Name] = set()
        for rdata in srv:
            target = rdata.target
            if target in seen:
                continue
            seen.add(target)
            for rdtype in _SRV_ADDRESS_TYPES:
                rrset = self._records.get((target, rdtype))
                if rrset is not None:
                    response.additional.append(rrset)

    def _soa(self, qname: dns.name.Name) -> dns.rrset.RRset:
        zone = qname.parent() if len(qname) > 1 else qname
        ttl = self.negative_ttl
        mname = dns.name.Name((b"ns", *zone.labels))
        rname = dns.name.Name((b"hostmaster", *zone.labels))
        soa = dns.rdata.from_text(
            dns.rdataclass.IN, dns.rdatatype.SOA, f"{mname} {rname} 1 {ttl} {ttl} {ttl} {ttl}"
        )
        return dns.rrset.from_rdata_list(zone, ttl, [soa])

    @staticmethod
    def _to_wire(query: dns.message.Message, response: dns.message.Message) -> bytes:
        # Without EDNS a UDP answer is at most 512 bytes (RFC 1035); with it, what the client said.
        limit = max(512, query.payload) if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            pass
        response.additional.clear()  # optional data goes first, as real servers do
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)
