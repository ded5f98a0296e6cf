"""A loopback DNS server for the harness: the sidecar's loopback server, run on its own thread.

The synchronous harness changes the answers while clients and sidecars query it, and reads when
each query was answered (``time.monotonic()``, the same system-wide clock as the backends' and
sidecars' processes on Linux), so a measurement can tell the wait for the next re-resolution
apart from what happens after the answer left the server.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import dns.exception
import dns.message
import dns.rdatatype

from sidecar.loopback_dns import DnsServer

_T = TypeVar("_T")


@dataclass(frozen=True)
class Query:
    """One answered query: when the reply was built, for which name (no trailing dot) and type."""

    at: float
    name: str
    rdtype: str


class RecordingDnsServer(DnsServer):
    """:class:`~sidecar.loopback_dns.DnsServer` keeping the time of every answered query."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self._queries: list[Query] = []
        self._lock = threading.Lock()

    def answer(self, data: bytes) -> bytes | None:
        reply = super().answer(data)
        if reply is None:
            return None
        try:
            question = dns.message.from_wire(data).question[0]
        except (dns.exception.DNSException, IndexError):
            return reply
        entry = Query(
            time.monotonic(),
            question.name.to_text(omit_final_dot=True),
            dns.rdatatype.to_text(question.rdtype),
        )
        with self._lock:
            self._queries.append(entry)
        return reply

    def answered(self, name: str, since: float = 0.0) -> list[Query]:
        """The queries for ``name`` answered at or after ``since`` (monotonic seconds)."""
        with self._lock:
            return [q for q in self._queries if q.name == name and q.at >= since]


class ThreadedDns:
    """A :class:`RecordingDnsServer` on 127.0.0.1, served by an event loop on its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="dns", daemon=True)
        self.thread.start()
        self.server = RecordingDnsServer()
        self._call(self._enter())

    async def _enter(self) -> None:
        await self.server.__aenter__()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10.0)

    @property
    def authority(self) -> str:
        """``host:port`` of the server, for ``dns://AUTHORITY/name:port`` targets."""
        return f"{self.server.host}:{self.server.port}"

    def set_a(self, name: str, addresses: list[str], ttl: int = 1) -> None:
        """Answer ``name`` with these A records from the next query on."""

        async def _set() -> None:
            self.server.set_a(name, addresses, ttl)

        self._call(_set())

    def queries(self, name: str, since: float = 0.0) -> list[Query]:
        return self.server.answered(name, since)

    def a_queries(self, name: str) -> int:
        """How many A queries for ``name`` were answered so far."""
        return sum(1 for q in self.server.answered(name) if q.rdtype == "A")

    def close(self) -> None:
        try:
            self._call(self.server.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5.0)
            self.loop.close()
