"""The ``dns`` resolver against a real DNS server on loopback whose answers the tests change."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import resolvers
from resolvers import Resolver, ResolverOptions

# Reaches inside: the error type resolvers report to listeners is the polling engine's own.
from resolvers._polling import ResolutionError
from tests.support.dns_server import DnsServer, RecordingListener

pytestmark = pytest.mark.timeout(60)

NAME = "svc.test"
PORT = 50051
# Slack for a loaded 2-core box: how late a refresh due at the TTL may be seen.
SLACK = 1.0
# Fail fast against a silent server, and retry soon: keeps the outage tests short.
QUICK = ResolverOptions(lookup_timeout=1.0, initial_backoff=0.25, max_backoff=1.0)

Start = Callable[..., Awaitable[tuple[Resolver, RecordingListener]]]


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    async with DnsServer() as server:
        yield server


@pytest.fixture
async def start(dns: DnsServer) -> AsyncIterator[Start]:
    """Build a resolver for a target (through the registry); closed after the test."""
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


async def test_initial_resolve(dns: DnsServer, start: Start) -> None:
    dns.set_a(NAME, ["127.0.0.1", "127.0.0.2"], ttl=30)
    _, listener = await start(dns.target(NAME, PORT))
    await listener.wait_for_addresses({"127.0.0.1:50051", "127.0.0.2:50051"}, timeout=5)
    assert listener.states[0].note == "2 address(es) for svc.test."
    assert listener.errors == []
    assert dns.queries[NAME, "A"] == 1 and dns.queries[NAME, "AAAA"] == 1


async def test_port_defaults_to_443(dns: DnsServer, start: Start) -> None:
    dns.set_a(NAME, ["127.0.0.1"])
    _, listener = await start(dns.target(NAME))
    await listener.wait_for_addresses({"127.0.0.1:443"}, timeout=5)


async def test_aaaa_records(dns: DnsServer, start: Start) -> None:
    dns.set_aaaa(NAME, ["::1", "fd00::2"])
    _, listener = await start(dns.target(NAME, PORT))
    await listener.wait_for_addresses({"[::1]:50051", "[fd00::2]:50051"}, timeout=5)
    dns.set_a(NAME, ["127.0.0.1"])
    await listener.wait_for_addresses(
        {"[::1]:50051", "[fd00::2]:50051", "127.0.0.1:50051"}, timeout=1 + SLACK
    )


async def test_answers_change_while_watching(dns: DnsServer, start: Start) -> None:
    ttl = 1
    dns.set_a(NAME, ["127.0.0.1"], ttl=ttl)
    _, listener = await start(dns.target(NAME, PORT))
    await listener.wait_for_addresses({"127.0.0.1:50051"}, timeout=5)
    # Scale up, then down, then replace: each seen within the TTL (+ slack).
    for ips in (["127.0.0.1", "127.0.0.2", "127.0.0.3"], ["127.0.0.3"], ["127.0.0.4"]):
        dns.set_a(NAME, ips, ttl=ttl)
        await listener.wait_for_addresses({f"{ip}:50051" for ip in ips}, timeout=ttl + SLACK)
    assert listener.errors == []
    assert len(listener.states) == 4, "identical answers are not pushed again"


async def test_refreshes_on_ttl_not_faster(dns: DnsServer, start: Start) -> None:
    ttl = 2
    dns.set_a(NAME, ["127.0.0.1"], ttl=ttl)
    dns.set_aaaa(NAME, ["::1"], ttl=ttl)
    options = ResolverOptions(min_refresh=0.25, jitter=0.1)
    await start(dns.target(NAME, PORT), options)
    await dns.wait_for_queries(NAME, "A", 3, timeout=2 * (ttl * 1.1 + SLACK))
    times = dns.query_times(NAME, "A")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(ttl - 0.05 <= gap <= ttl * 1.1 + SLACK for gap in gaps), gaps


async def test_min_refresh_is_a_floor(dns: DnsServer, start: Start) -> None:
    dns.set_a(NAME, ["127.0.0.1"], ttl=0)  # "do not cache": still at most once per min_refresh
    options = ResolverOptions(min_refresh=0.5, jitter=0.0)
    await start(dns.target(NAME, PORT), options)
    await dns.wait_for_queries(NAME, "A", 4, timeout=3 * (0.5 + SLACK))
    times = dns.query_times(NAME, "A")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.5 - 0.05 for gap in gaps), gaps


async def test_resolve_now_gets_a_change_before_the_ttl(dns: DnsServer, start: Start) -> None:
    dns.set_a(NAME, ["127.0.0.1"], ttl=300)
    options = ResolverOptions(resolve_now_min_interval=0.5)
    resolver, listener = await start(dns.target(NAME, PORT), options)
    await listener.wait_for_addresses({"127.0.0.1:50051"}, timeout=5)
    dns.set_a(NAME, ["127.0.0.2"], ttl=300)
    for _ in range(10):  # a burst of hints: merged into one lookup
        resolver.resolve_now()
    await listener.wait_for_addresses({"127.0.0.2:50051"}, timeout=0.5 + SLACK)
    assert dns.queries[NAME, "A"] == 2


async def test_nxdomain_is_an_empty_state(dns: DnsServer, start: Start) -> None:
    dns.set_a(NAME, ["127.0.0.1"], ttl=1)
    _, listener = await start(dns.target(NAME, PORT))
    await listener.wait_for_addresses({"127.0.0.1:50051"}, timeout=5)
    dns.remove(NAME)
    await listener.wait_for_addresses(set(), timeout=1 + SLACK)
    assert listener.states[-1].note == "NXDOMAIN for svc.test."
    assert listener.errors == [], "NXDOMAIN is an answer, not an error"
    # The negative TTL (SOA, 1 s here) bounds how long until the name is seen again.
    dns.set_a(NAME, ["127.0.0.2"], ttl=1)
    await listener.wait_for_addresses({"127.0.0.2:50051"}, timeout=1 + SLACK)


async def test_unknown_name_from_the_start(dns: DnsServer, start: Start) -> None:
    _, listener = await start(dns.target("nowhere.test", PORT))
    await listener.wait_until(lambda: bool(listener.states), "first state", timeout=5)
    assert listener.states[0].addresses == ()
    assert listener.states[0].note == "NXDOMAIN for nowhere.test."


async def test_no_address_records_is_an_empty_state(dns: DnsServer, start: Start) -> None:
    dns.set_srv(NAME, [(1, 1, PORT, "other.test")])  # the name exists, without A/AAAA
    _, listener = await start(dns.target(NAME, PORT))
    await listener.wait_until(lambda: bool(listener.states), "first state", timeout=5)
    assert listener.states[0].addresses == ()
    assert listener.states[0].note == "no A/AAAA records for svc.test."


async def test_silent_server_reports_keeps_last_good_and_recovers(
    dns: DnsServer, start: Start
) -> None:
    dns.set_a(NAME, ["127.0.0.1"], ttl=1)
    target = dns.target(NAME, PORT)
    _, listener = await start(target)
    await listener.wait_for_addresses({"127.0.0.1:50051"}, timeout=5)

    dns.mode = "drop"
    error = await listener.wait_for_error(timeout=1 + QUICK.lookup_timeout + SLACK)
    assert isinstance(error, ResolutionError)
    assert target in str(error) and "no answer" in str(error), str(error)
    # It keeps retrying (with backoff) and never pushes an empty list meanwhile.
    await listener.wait_for_error(after=1, timeout=2 * QUICK.lookup_timeout + SLACK)
    assert [s.addresses for s in listener.states] == [listener.states[0].addresses]

    dns.set_a(NAME, ["127.0.0.2"], ttl=1)
    dns.mode = "normal"
    await listener.wait_for_addresses(
        {"127.0.0.2:50051"}, timeout=QUICK.max_backoff * 1.1 + QUICK.lookup_timeout + SLACK
    )
    assert all(s.addresses for s in listener.states)


async def test_servfail_reports_and_the_same_answer_is_pushed_again(
    dns: DnsServer, start: Start
) -> None:
    dns.set_a(NAME, ["127.0.0.1"], ttl=1)
    _, listener = await start(dns.target(NAME, PORT))
    await listener.wait_for_addresses({"127.0.0.1:50051"}, timeout=5)

    dns.mode = "servfail"
    error = await listener.wait_for_error(timeout=1 + SLACK)
    assert "SERVFAIL" in str(error), str(error)
    dns.mode = "normal"
    # Same addresses as before the outage, pushed again so the consumer knows it is good.
    await listener.wait_until(
        lambda: isinstance(listener.events[-1][1], resolvers.ResolverState),
        "state after the error",
        timeout=QUICK.max_backoff * 1.1 + SLACK,
    )
    assert [len(s.addresses) for s in listener.states] == [1, 1]


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("127.0.0.9:7000", "127.0.0.9:7000"),
        ("[::1]:7000", "[::1]:7000"),
        ("localhost:7000", "127.0.0.1:7000"),
        ("LOCALHOST", "127.0.0.1:443"),
    ],
)
async def test_literals_and_localhost_need_no_lookup(
    dns: DnsServer, start: Start, endpoint: str, expected: str
) -> None:
    resolver, listener = await start(f"dns://{dns.authority}/{endpoint}")
    await listener.wait_for_addresses({expected}, timeout=5)
    resolver.resolve_now()
    assert dns.query_log == []
