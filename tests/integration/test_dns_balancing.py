"""Balanced channels following a real DNS server on loopback while clients call.

Backends share one port on 127.0.0.11.. (A records carry IPs, not ports); the DNS server's
answers and TTLs change under a running client, as pods come and go behind a headless Service.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest

import balancers
import balancers.aio
from tests.support.backends import add_on_port, start_same_port
from tests.support.dns_server import DnsServer
from tests.support.echo import EchoRequest, EchoServer, EchoStub
from tests.support.waiting import wait_until, wait_until_sync

READY = grpc.ChannelConnectivity.READY

pytestmark = pytest.mark.timeout(90)

NAME = "echo.mesh.test"
IPS = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
TTL = 1


@dataclass
class Load:
    """A client calling in a loop in the background, counting every outcome."""

    stub: EchoStub
    ok: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self.stop.is_set():
            try:
                reply = await self.stub.Unary(EchoRequest(message="x"), timeout=5)
            except grpc.aio.AioRpcError as error:
                self.failures.append(f"{error.code()}: {error.details()}")
            else:
                self.ok[reply.server] += 1
            await asyncio.sleep(0.005)  # pacing of the load, not ordering of the test

    def start(self) -> Load:
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def finish(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    async with DnsServer() as server:
        yield server


@pytest.fixture
async def backends() -> AsyncIterator[tuple[int, dict[str, EchoServer]]]:
    port, servers = await start_same_port(IPS)
    yield port, servers
    for server in servers.values():
        await server.stop(None)


def ready(channel: balancers.aio.BalancedChannel | balancers.BalancedChannel) -> set[str]:
    return {sc.address.host for sc in channel.core.subchannels if sc.state.connectivity is READY}


async def test_spread_over_three_dns_endpoints(dns: DnsServer, backends: tuple) -> None:
    port, _servers = backends
    dns.set_a(NAME, IPS, ttl=30)
    async with balancers.aio.insecure_channel(dns.target(NAME, port)) as channel:
        await wait_until(lambda: ready(channel) == set(IPS), message="3 endpoints READY")
        stub = EchoStub(channel)
        counts: collections.Counter[str] = collections.Counter()
        for _ in range(30):
            replies = await asyncio.gather(
                *(stub.Unary(EchoRequest(message="x"), timeout=10) for _ in range(20))
            )
            counts.update(r.server for r in replies)
        for ip in IPS:
            assert abs(counts[ip] - 200) <= 20, counts


async def test_scale_up_new_endpoint_gets_traffic_within_ttl(
    dns: DnsServer, backends: tuple
) -> None:
    port, _servers = backends
    dns.set_a(NAME, IPS[:2], ttl=TTL)
    async with balancers.aio.insecure_channel(dns.target(NAME, port)) as channel:
        await wait_until(lambda: ready(channel) == set(IPS[:2]))
        load = Load(EchoStub(channel)).start()
        await wait_until(lambda: load.ok[IPS[0]] > 0 and load.ok[IPS[1]] > 0)
        changed = time.monotonic()
        dns.set_a(NAME, IPS, ttl=TTL)
        await wait_until(lambda: load.ok[IPS[2]] > 0, timeout=10, message="new pod used")
        took = time.monotonic() - changed
        await load.finish()
        assert took <= TTL + 1.0, f"new endpoint first used after {took:.2f}s"
        assert load.failures == []


async def test_scale_down_removed_endpoint_gets_nothing_and_no_call_fails(
    dns: DnsServer, backends: tuple
) -> None:
    port, servers = backends
    dns.set_a(NAME, IPS, ttl=TTL)
    async with balancers.aio.insecure_channel(dns.target(NAME, port)) as channel:
        await wait_until(lambda: ready(channel) == set(IPS))
        load = Load(EchoStub(channel)).start()
        await wait_until(lambda: all(load.ok[ip] > 0 for ip in IPS))
        dns.set_a(NAME, IPS[:2], ttl=TTL)
        changed = time.monotonic()
        # Past TTL + 1 s the removed endpoint must be out of rotation...
        await wait_until(lambda: time.monotonic() - changed >= TTL + 1.0, timeout=5)
        removed_count = servers[IPS[2]].servicer.calls["Unary"]
        before = sum(load.ok.values())
        # ... and stay out while plenty more calls are made.
        await wait_until(lambda: sum(load.ok.values()) >= before + 200, timeout=20)
        await load.finish()
        assert servers[IPS[2]].servicer.calls["Unary"] == removed_count
        assert IPS[2] not in {sc.address.host for sc in channel.core.subchannels}
        assert load.failures == []


async def test_dns_outage_keeps_last_good_endpoints(dns: DnsServer, backends: tuple) -> None:
    port, _servers = backends
    dns.set_a(NAME, IPS[:2], ttl=TTL)
    async with balancers.aio.insecure_channel(dns.target(NAME, port)) as channel:
        await wait_until(lambda: ready(channel) == set(IPS[:2]))
        load = Load(EchoStub(channel)).start()
        dns.mode = "drop"
        queried = dns.queries[NAME, "A"]
        # Several refreshes fail (the resolver keeps asking) while calls go on.
        await wait_until(lambda: dns.queries[NAME, "A"] >= queried + 3, timeout=20)
        dns.mode = "servfail"
        queried = dns.queries[NAME, "A"]
        await wait_until(lambda: dns.queries[NAME, "A"] >= queried + 1, timeout=20)
        await load.finish()
        assert load.failures == []
        assert load.ok[IPS[0]] > 0 and load.ok[IPS[1]] > 0
        assert ready(channel) == set(IPS[:2])


async def test_nxdomain_fails_fast_then_wait_for_ready_call_succeeds_on_new_record(
    dns: DnsServer, backends: tuple
) -> None:
    port, _servers = backends
    async with balancers.aio.insecure_channel(dns.target(NAME, port)) as channel:
        stub = EchoStub(channel)
        await wait_until(lambda: dns.queries[NAME, "A"] > 0)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Unary(EchoRequest(message="x"), timeout=5)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "no addresses resolved" in (failed.value.details() or "")
        waiting = asyncio.ensure_future(
            stub.Unary(EchoRequest(message="x"), timeout=15, wait_for_ready=True)
        )
        await wait_until(lambda: channel.core.connectivity is not READY)
        dns.set_a(NAME, IPS[:1], ttl=TTL)
        reply = await waiting
        assert reply.server == IPS[0]


async def test_removed_endpoint_finishes_in_flight_calls(dns: DnsServer, backends: tuple) -> None:
    port, servers = backends
    dns.set_a(NAME, IPS[:2], ttl=TTL)
    async with balancers.aio.insecure_channel(dns.target(NAME, port)) as channel:
        await wait_until(lambda: ready(channel) == set(IPS[:2]))
        stub = EchoStub(channel)
        slow = [
            asyncio.ensure_future(stub.Unary(EchoRequest(message="slow", delay_s=2), timeout=20))
            for _ in range(4)
        ]
        await wait_until(lambda: servers[IPS[1]].servicer.active >= 1)
        dns.set_a(NAME, IPS[:1], ttl=TTL)
        await wait_until(lambda: IPS[1] not in {sc.address.host for sc in channel.core.subchannels})
        replies = await asyncio.gather(*slow)
        assert sorted(r.server for r in replies).count(IPS[1]) >= 1
        reply = await stub.Unary(EchoRequest(message="after"), timeout=5)
        assert reply.server == IPS[0]


async def test_failing_endpoint_triggers_resolve_now(dns: DnsServer, backends: tuple) -> None:
    port, servers = backends
    dns.set_a(NAME, IPS[:2], ttl=300)  # no TTL refresh during the test
    async with balancers.aio.insecure_channel(dns.target(NAME, port)) as channel:
        await wait_until(lambda: ready(channel) == set(IPS[:2]))
        queried = dns.queries[NAME, "A"]
        await servers[IPS[1]].stop(None)
        await wait_until(
            lambda: dns.queries[NAME, "A"] > queried, timeout=10, message="re-resolution"
        )
        stub = EchoStub(channel)
        await wait_until(lambda: ready(channel) == {IPS[0]})
        for _ in range(10):
            assert (await stub.Unary(EchoRequest(message="x"), timeout=5)).server == IPS[0]


async def test_sync_channel_follows_scale_up(dns: DnsServer, backends: tuple) -> None:
    port, _servers = backends
    dns.set_a(NAME, IPS[:1], ttl=TTL)
    dns_change = threading.Event()

    # The sync client blocks its thread: run it in a worker while this loop serves DNS.
    def client() -> tuple[float, collections.Counter[str]]:
        with balancers.insecure_channel(dns.target(NAME, port)) as channel:
            stub = EchoStub(channel)
            wait_until_sync(lambda: ready(channel) == {IPS[0]})
            counts: collections.Counter[str] = collections.Counter()
            counts[stub.Unary(EchoRequest(message="x"), timeout=5).server] += 1
            changed = time.monotonic()
            dns_change.set()
            while counts[IPS[1]] == 0 and time.monotonic() - changed < 10:
                counts[stub.Unary(EchoRequest(message="x"), timeout=5).server] += 1
            return time.monotonic() - changed, counts

    future = asyncio.get_running_loop().run_in_executor(None, client)
    await wait_until(dns_change.is_set, timeout=15)
    dns.set_a(NAME, IPS[:2], ttl=TTL)
    took, counts = await future
    assert counts[IPS[1]] > 0 and took <= TTL + 1.0 + 0.2, (took, counts)


async def test_scale_up_on_a_port_bound_later(dns: DnsServer) -> None:
    """A pod appearing later on the same port (new IP): picked up like any other."""
    port, servers = await start_same_port(IPS[:1])
    extra: EchoServer | None = None
    try:
        dns.set_a(NAME, IPS[:1], ttl=TTL)
        async with balancers.aio.insecure_channel(dns.target(NAME, port)) as channel:
            await wait_until(lambda: ready(channel) == {IPS[0]})
            extra = await add_on_port(IPS[1], port)
            dns.set_a(NAME, IPS[:2], ttl=TTL)
            await wait_until(lambda: ready(channel) == set(IPS[:2]), timeout=TTL + 3)
    finally:
        for s in servers.values():
            await s.stop(None)
        if extra is not None:
            with contextlib.suppress(Exception):
                await extra.stop(None)


async def test_sync_removed_endpoint_finishes_in_flight_and_close_releases(
    dns: DnsServer, backends: tuple
) -> None:
    port, servers = backends
    dns.set_a(NAME, IPS[:2], ttl=TTL)
    started = threading.Event()
    removed = threading.Event()

    def client() -> list[str]:
        channel = balancers.insecure_channel(dns.target(NAME, port))
        try:
            wait_until_sync(lambda: ready(channel) == set(IPS[:2]))
            stub = EchoStub(channel)
            slow = [
                stub.Unary.future(EchoRequest(message="slow", delay_s=1.5), timeout=20)
                for _ in range(4)
            ]
            started.set()
            assert removed.wait(15)
            wait_until_sync(
                lambda: IPS[1] not in {sc.address.host for sc in channel.core.subchannels}
            )
            servers_seen = [f.result().server for f in slow]  # all finish OK
            assert stub.Unary(EchoRequest(message="after"), timeout=5).server == IPS[0]
            return servers_seen
        finally:
            channel.close()
            assert not channel._thread.is_alive()  # the private loop thread is gone

    future = asyncio.get_running_loop().run_in_executor(None, client)
    await wait_until(started.is_set, timeout=15)
    await wait_until(lambda: servers[IPS[1]].servicer.active >= 1)
    dns.set_a(NAME, IPS[:1], ttl=TTL)
    removed.set()
    seen = await future
    assert IPS[1] in seen and len(seen) == 4
