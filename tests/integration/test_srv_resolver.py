"""The ``dns+srv`` resolver against a real DNS server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import resolvers
from resolvers import Resolver, ResolverOptions
from tests.support.dns_server import DnsServer, RecordingListener

pytestmark = pytest.mark.timeout(60)

SRV = "_grpc._tcp.svc.test"
SLACK = 1.0  # how late a refresh due at the TTL may be seen on a loaded box
QUICK = ResolverOptions(lookup_timeout=1.0, initial_backoff=0.25, max_backoff=1.0)

Start = Callable[..., Awaitable[tuple[Resolver, RecordingListener]]]


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    async with DnsServer() as server:
        server.set_a("a.test", ["127.0.0.1"], ttl=30)
        server.set_a("b.test", ["127.0.0.2"], ttl=30)
        server.set_aaaa("b.test", ["::1"], ttl=30)
        server.set_a("c.test", ["127.0.0.3"], ttl=30)
        yield server


@pytest.fixture
async def start(dns: DnsServer) -> AsyncIterator[Start]:
    started: list[Resolver] = []

    async def _start(
        target: str, options: ResolverOptions = QUICK
    ) -> tuple[Resolver, RecordingListener]:
        listener = RecordingListener()
        resolver = resolvers.build(target, listener, options)
        started.append(resolver)
        return resolver, listener

    yield _start
    for resolver in started:
        await resolver.aclose()


def attributes(listener: RecordingListener) -> dict[str, tuple[int, int]]:
    """``host:port`` -> (priority, weight) of the last state."""
    return {
        str(a): (a.attributes["priority"], a.attributes["weight"])
        for a in listener.states[-1].addresses
    }


async def test_ports_weights_and_lowest_priority_group(dns: DnsServer, start: Start) -> None:
    dns.set_srv(SRV, [(10, 5, 5001, "a.test"), (10, 1, 5002, "b.test"), (20, 9, 5003, "c.test")])
    _, listener = await start(dns.srv_target(SRV))
    await listener.wait_for_addresses({"127.0.0.1:5001", "127.0.0.2:5002", "[::1]:5002"}, timeout=5)
    assert attributes(listener) == {
        "127.0.0.1:5001": (10, 5),
        "127.0.0.2:5002": (10, 1),
        "[::1]:5002": (10, 1),
    }
    assert listener.states[-1].addresses[0].weight in (5, 1)
    assert listener.errors == []


async def test_additional_section_saves_queries(dns: DnsServer, start: Start) -> None:
    dns.set_srv(SRV, [(0, 1, 5001, "a.test"), (0, 1, 5002, "b.test")])
    _, listener = await start(dns.srv_target(SRV))
    await listener.wait_for_addresses({"127.0.0.1:5001", "127.0.0.2:5002", "[::1]:5002"}, timeout=5)
    assert dns.queries == {(SRV, "SRV"): 1}


async def test_targets_are_queried_without_additional_section(dns: DnsServer, start: Start) -> None:
    dns.srv_additional = False
    dns.set_srv(SRV, [(0, 1, 5001, "a.test"), (0, 1, 5002, "b.test"), (0, 2, 5003, "b.test")])
    _, listener = await start(dns.srv_target(SRV))
    await listener.wait_for_addresses(
        {"127.0.0.1:5001", "127.0.0.2:5002", "[::1]:5002", "127.0.0.2:5003", "[::1]:5003"},
        timeout=5,
    )
    # One A and one AAAA query per distinct target, asked concurrently.
    assert dns.queries["a.test", "A"] == 1 and dns.queries["a.test", "AAAA"] == 1
    assert dns.queries["b.test", "A"] == 1 and dns.queries["b.test", "AAAA"] == 1
    assert attributes(listener)["127.0.0.2:5003"] == (0, 2)


async def test_fails_over_to_the_next_priority(dns: DnsServer, start: Start) -> None:
    dns.set_srv(SRV, [(10, 1, 5001, "a.test"), (20, 1, 5003, "c.test")], ttl=1)
    _, listener = await start(dns.srv_target(SRV))
    await listener.wait_for_addresses({"127.0.0.1:5001"}, timeout=5)
    dns.set_srv(SRV, [(20, 1, 5003, "c.test")], ttl=1)
    await listener.wait_for_addresses({"127.0.0.3:5003"}, timeout=1 + SLACK)
    assert attributes(listener) == {"127.0.0.3:5003": (20, 1)}


async def test_weight_change_is_pushed(dns: DnsServer, start: Start) -> None:
    dns.set_srv(SRV, [(0, 1, 5001, "a.test")], ttl=1)
    _, listener = await start(dns.srv_target(SRV))
    await listener.wait_for_addresses({"127.0.0.1:5001"}, timeout=5)
    dns.set_srv(SRV, [(0, 7, 5001, "a.test")], ttl=1)
    await listener.wait_until(
        lambda: attributes(listener) == {"127.0.0.1:5001": (0, 7)},
        "new weight",
        timeout=1 + SLACK,
    )


async def test_ttl_is_the_minimum_over_srv_and_addresses(dns: DnsServer, start: Start) -> None:
    dns.srv_additional = False
    dns.set_srv(SRV, [(0, 1, 5001, "a.test")], ttl=300)
    dns.set_a("a.test", ["127.0.0.1"], ttl=1)
    _, listener = await start(dns.srv_target(SRV))
    await listener.wait_for_addresses({"127.0.0.1:5001"}, timeout=5)
    dns.set_a("a.test", ["127.0.0.5"], ttl=1)
    await listener.wait_for_addresses({"127.0.0.5:5001"}, timeout=1 + SLACK)


async def test_nxdomain_and_no_records(dns: DnsServer, start: Start) -> None:
    _, missing = await start(dns.srv_target("_grpc._tcp.nowhere.test"))
    _, plain = await start(dns.srv_target("a.test"))  # exists, but has no SRV records
    await missing.wait_until(lambda: bool(missing.states), "a state", timeout=5)
    await plain.wait_until(lambda: bool(plain.states), "a state", timeout=5)
    assert missing.states[0].addresses == ()
    assert missing.states[0].note == "NXDOMAIN for _grpc._tcp.nowhere.test."
    assert plain.states[0].addresses == ()
    assert plain.states[0].note == "no SRV records for a.test."


async def test_unusable_targets_give_an_empty_state(dns: DnsServer, start: Start) -> None:
    dns.set_srv(SRV, [(0, 0, 5001, ".")])  # RFC 2782: "not available at this domain"
    _, listener = await start(dns.srv_target(SRV))
    await listener.wait_until(lambda: bool(listener.states), "a state", timeout=5)
    assert listener.states[0].addresses == ()
    assert "no usable target" in listener.states[0].note


async def test_silent_server_keeps_last_good(dns: DnsServer, start: Start) -> None:
    dns.set_srv(SRV, [(0, 1, 5001, "a.test")], ttl=1)
    target = dns.srv_target(SRV)
    _, listener = await start(target)
    await listener.wait_for_addresses({"127.0.0.1:5001"}, timeout=5)
    dns.mode = "drop"
    error = await listener.wait_for_error(timeout=1 + QUICK.lookup_timeout + SLACK)
    assert target in str(error)
    assert len(listener.states) == 1
    dns.mode = "normal"
    await listener.wait_until(
        lambda: isinstance(listener.events[-1][1], resolvers.ResolverState),
        "recovery",
        timeout=QUICK.max_backoff * 1.1 + QUICK.lookup_timeout + SLACK,
    )
    assert all(s.addresses for s in listener.states)
