"""Hostile clients against the real admin server on loopback: slow drips, floods past the
connection limit, oversized and garbage requests. The probes must keep answering throughout.

Clients here are raw asyncio sockets so that every byte and every close is the test's choice.
The drips are paced with sleeps on purpose (the pace *is* the attack); nothing is ordered by
a sleep: each wait is for a reply, a close, or a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from sidecar.admin import AdminServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

#: The whole-request deadline of the servers under attack (short, to keep the tests short).
DEADLINE = 2.0
#: One byte every DRIP seconds: far slower than the deadline allows for a request.
DRIP = 0.5
#: A probe must answer within this, every time (a kubelet probe's default timeout is 1 s).
PROBE_LIMIT = 1.0
#: A request that never ends: the head's blank line never comes.
ENDLESS = b"GET /live HTTP/1.1\r\nHost: admin\r\nX-Slow: " + b"a" * 4096


@dataclass
class Admin:
    server: AdminServer
    port: int


async def start_admin(max_connections: int = 256) -> Admin:
    registry = CollectorRegistry()
    Counter("meshkit_attack_things", "Things counted by the test.", registry=registry).inc()
    server = AdminServer(
        "127.0.0.1:0",
        live=lambda: True,
        ready=lambda: (True, ""),
        clusters=dict,
        config=dict,
        registry=registry,
        timeout=DEADLINE,
        max_connections=max_connections,
    )
    return Admin(server, await server.start())


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    started = await start_admin()
    yield started
    await started.server.stop()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes (a reset ends it too)."""
    chunks = []
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a new connection, then read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_all(reader), timeout)
    finally:
        writer.close()


def status_of(reply: bytes) -> int:
    """The status code of the first response in ``reply`` (0 when there is none)."""
    line = reply.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[0].startswith(b"HTTP/1.") else 0


async def probe(port: int, path: str = "/live") -> tuple[int, float]:
    """One GET as a kubelet makes it: (status, seconds until the whole answer was read)."""
    started = time.monotonic()
    request = f"GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".encode()
    try:
        reply = await exchange(port, request, timeout=PROBE_LIMIT * 5)
    except (ConnectionError, asyncio.TimeoutError):
        reply = b""
    return status_of(reply), time.monotonic() - started


async def probe_while(port: int, busy: asyncio.Future[Any]) -> list[tuple[int, float]]:
    """Probe ``/live`` (and ``/ready``, ``/metrics`` in turn) until ``busy`` is done."""
    paths = ("/live", "/ready", "/live", "/metrics")
    results: list[tuple[int, float]] = []
    while not busy.done():
        results.append(await probe(port, paths[len(results) % len(paths)]))
        await asyncio.sleep(0.1)  # a probe period, not an ordering wait
    return results


@dataclass
class Drip:
    """What one slow client saw: the server's answer and when it came (from connect)."""

    status: int = 0
    answered_after: float = 0.0
    closed_after: float = 0.0


async def drip(port: int) -> Drip:
    """Connect and send :data:`ENDLESS` a byte per :data:`DRIP` until the server answers/closes."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = loop.time()

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in ENDLESS:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(DRIP)

    sender = asyncio.create_task(send())
    seen = Drip()
    try:
        with contextlib.suppress(ConnectionError):
            first = await reader.read(65536)
            seen.answered_after = loop.time() - started
            seen.status = status_of(first)
            await read_all(reader)
        seen.closed_after = loop.time() - started
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
    return seen


async def test_slow_drips_are_cut_at_the_deadline_and_probes_keep_answering(admin: Admin) -> None:
    drips = asyncio.gather(*(drip(admin.port) for _ in range(64)))
    probes = await probe_while(admin.port, drips)
    seen = await drips

    assert all(status == 200 for status, _ in probes), probes
    slowest = max(elapsed for _, elapsed in probes)
    assert slowest < PROBE_LIMIT, probes
    assert len(probes) >= 10  # the probes ran all through the attack
    # Every slow client got a 408 at the deadline, however fast it was dripping.
    assert [d.status for d in seen] == [408] * 64
    answered = [d.answered_after for d in seen]
    # not cut early: the client's clock starts once its busy loop resumes after connect,
    # up to a few hundred ms after the server's accept started the deadline
    assert min(answered) >= DEADLINE - 0.3, answered
    assert max(answered) < DEADLINE + 1.0, answered
    # ... and was closed within the linger after it (it never closed its side).
    assert max(d.closed_after for d in seen) < DEADLINE + 2.5
    print(
        f"\n64 slow clients: 408 after {min(answered):.2f}-{max(answered):.2f}s; "
        f"{len(probes)} probes all 200, slowest {slowest * 1000:.1f} ms"
    )


async def test_more_slow_clients_than_slots_do_not_lock_out_probes() -> None:
    admin = await start_admin(max_connections=16)
    stop = asyncio.Event()
    dropped = 0  # connections the server closed before the deadline, without an answer
    jitter = random.Random(9)

    async def attacker() -> None:
        nonlocal dropped
        while not stop.is_set():
            # The attack's pace, with a network's jitter: a client comes back about a drip
            # after it was dropped. (64 connections landing in the same millisecond would
            # be a flood, which no connection limit survives, rather than slow clients.)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), DRIP * jitter.uniform(0.5, 1.5))
            seen = await drip(admin.port)
            if seen.status == 0 and seen.closed_after < DEADLINE - 0.1:
                dropped += 1

    attackers = [asyncio.create_task(attacker()) for _ in range(64)]
    try:
        # 64 clients fight for 16 slots all along; the probes run for 2 deadlines of it.
        await wait_until(lambda: dropped >= 16, timeout=10, message="the limit reached")
        before = dropped
        window = asyncio.create_task(asyncio.sleep(2 * DEADLINE))
        probes = await probe_while(admin.port, window)
        during = dropped - before
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*attackers), DEADLINE + 5)
        await admin.server.stop()

    assert all(status == 200 for status, _ in probes), probes
    slowest = max(elapsed for _, elapsed in probes)
    assert slowest < PROBE_LIMIT, probes
    assert len(probes) >= 10
    assert during >= 64, during  # the limit held: slow clients gave way to newcomers
    print(
        f"\n64 slow clients on 16 slots: {during} dropped early; "
        f"{len(probes)} probes all 200, slowest {slowest * 1000:.1f} ms"
    )


GARBAGE = os.urandom(4096).replace(b"\n", b"_")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x00\xff" + GARBAGE, 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + GARBAGE, 400),  # a TLS ClientHello
        (b"GET /live HTTP/1.1\r\nX-Big: " + b"b" * 1024 * 1024 + b"\r\n\r\n", 431),
        (b"GET /live HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(10_000)), 431),
        (b"GET /" + b"a" * 100 * 1024 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /live\r\n\r\n", 400),  # HTTP/0.9
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),  # HTTP/2 prior knowledge
    ],
    ids=["noise", "tls-hello", "1MB-header", "10k-headers", "100KB-line", "http09", "h2"],
)
async def test_hostile_requests_get_an_error_at_once(
    admin: Admin, request_bytes: bytes, status: int
) -> None:
    started = time.monotonic()
    reply = await exchange(admin.port, request_bytes)
    elapsed = time.monotonic() - started
    assert status_of(reply) == status, reply[:200]
    assert b"Connection: close" in reply
    assert elapsed < DEADLINE, elapsed  # refused on sight, not at the deadline
    assert (await probe(admin.port))[0] == 200


async def test_unfinished_request_then_close(admin: Admin) -> None:
    for partial in (b"", b"GET /li", b"GET /live HTTP/1.1\r\nHost: x\r\n"):
        _, writer = await asyncio.open_connection("127.0.0.1", admin.port)
        writer.write(partial)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    await wait_until(lambda: not admin.server._connections.open, timeout=5)
    assert (await probe(admin.port))[0] == 200


async def test_a_partial_request_gets_408_an_idle_connection_closes_quietly(admin: Admin) -> None:
    partial, idle = await asyncio.gather(
        exchange(admin.port, b"GET /live HTTP/1.1\r\n"),
        exchange(admin.port, b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n"),  # then kept alive
    )
    assert status_of(partial) == 408
    assert status_of(idle) == 200
    assert idle.count(b"HTTP/1.1 ") == 1  # nothing more when it closed at the deadline


async def test_pipelined_requests_are_answered_in_order(admin: Admin) -> None:
    reply = await exchange(
        admin.port,
        b"GET /live HTTP/1.1\r\n\r\n"
        b"\r\n"  # an empty line between requests is allowed
        b"GET /ready HTTP/1.1\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    assert reply.count(b"HTTP/1.1 ") == 3
    first, second, third = reply.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 ") and first.endswith(b"ok\n")
    assert second.startswith(b"200 ") and second.endswith(b"ready\n")
    assert third.startswith(b"404 ")


async def test_a_request_body_is_never_read_as_a_request(admin: Admin) -> None:
    smuggled = b"GET /nope HTTP/1.1\r\n\r\n"
    reply = await exchange(
        admin.port,
        b"GET /live HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(smuggled) + smuggled,
    )
    assert reply.count(b"HTTP/1.1 ") == 1  # the connection closed after the first answer
    assert status_of(reply) == 200


async def test_stop_with_slow_clients_connected_is_prompt() -> None:
    admin = await start_admin()
    drips = asyncio.gather(*(drip(admin.port) for _ in range(32)))
    await wait_until(lambda: len(admin.server._connections.open) == 32, timeout=5)
    started = time.monotonic()
    await admin.server.stop()
    assert time.monotonic() - started < 2.0
    seen = await asyncio.wait_for(drips, 5)
    assert all(d.status == 0 and d.closed_after < DEADLINE for d in seen)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", admin.port)
