"""The balanced channels against real grpc.aio servers on loopback (static targets)."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import balancers
import balancers.aio
from tests.support.echo import EchoRequest, EchoServer, EchoStub, aiter_requests, start_echo_server
from tests.support.waiting import wait_until

READY = grpc.ChannelConnectivity.READY

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def three() -> AsyncIterator[list[EchoServer]]:
    servers = [await start_echo_server(name, health=True) for name in ("a", "b", "c")]
    yield servers
    for server in servers:
        await server.stop(None)


def static(servers: list[EchoServer]) -> str:
    return "static:///" + ",".join(s.address for s in servers)


def ready_count(channel: balancers.aio.BalancedChannel | balancers.BalancedChannel) -> int:
    return sum(sc.state.connectivity is READY for sc in channel.core.subchannels)


def assert_even(counts: collections.Counter[str], names: str, total: int) -> None:
    even = total / len(names)
    for name in names:
        assert abs(counts[name] - even) <= 0.1 * even, counts


async def test_aio_round_robin_spreads_evenly(three: list[EchoServer]) -> None:
    async with balancers.aio.insecure_channel(static(three)) as channel:
        await wait_until(lambda: ready_count(channel) == 3, message="3 endpoints READY")
        stub = EchoStub(channel)
        counts: collections.Counter[str] = collections.Counter()
        for _ in range(30):
            replies = await asyncio.gather(
                *(stub.Unary(EchoRequest(message="x"), timeout=10) for _ in range(20))
            )
            counts.update(r.server for r in replies)
        assert_even(counts, "abc", 600)
        assert sum(sc.picks for sc in channel.core.subchannels) == 600


async def test_aio_all_four_kinds_with_a_generated_stub(three: list[EchoServer]) -> None:
    async with balancers.aio.insecure_channel(static(three)) as channel:
        stub = EchoStub(channel)
        reply = await stub.Unary(EchoRequest(message="hi"), timeout=10, wait_for_ready=True)
        assert reply.message == "hi" and reply.server in "abc"
        stream = [r.message async for r in stub.ServerStream(EchoRequest(message="s", count=3))]
        assert stream == ["s#0", "s#1", "s#2"]
        joined = await stub.ClientStream(aiter_requests("a", "b", "c"))
        assert joined.message == "a,b,c"
        bidi = [r.message async for r in stub.BidiStream(aiter_requests("p", "q"))]
        assert bidi == ["p", "q"]
        call = stub.BidiStream()
        await call.write(EchoRequest(message="w"))
        assert (await call.read()).message == "w"
        await call.done_writing()
        assert await call.code() is grpc.StatusCode.OK
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_aio_per_call_options_pass_through(three: list[EchoServer]) -> None:
    async with balancers.aio.insecure_channel(static(three)) as channel:
        stub = EchoStub(channel)
        call = stub.Unary(
            EchoRequest(message="m"),
            timeout=5,
            metadata=(("x-user", "ann"), ("x-blob-bin", b"\x00\x01")),
            wait_for_ready=True,
        )
        reply = await call
        # grpc rounds the encoded timeout up (grpc-timeout has 8 digits), hence the 1 %.
        assert 0 < reply.time_remaining <= 5 * 1.01
        assert "x-user=ann" in reply.metadata and "x-blob-bin=0001" in reply.metadata
        assert ("x-echo-trailer", reply.server) in tuple(await call.trailing_metadata())
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Unary(EchoRequest(message="boom", fail_code=9), timeout=5)
        assert failed.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert failed.value.details() == "boom"
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.Unary(EchoRequest(message="slow", delay_s=5), timeout=0.2)
        assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_aio_channel_state_api(three: list[EchoServer]) -> None:
    channel = balancers.aio.insecure_channel(static(three))
    assert isinstance(channel, grpc.aio.Channel)
    await asyncio.wait_for(channel.channel_ready(), 10)
    assert channel.get_state() is READY
    await channel.close()
    assert not channel.core.subchannels
    assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN
    # What grpc.aio raises for a call on a closed channel (not a retryable UNAVAILABLE).
    with pytest.raises(grpc.aio.UsageError, match="Channel is closed"):
        await EchoStub(channel).Unary(EchoRequest(message="x"), timeout=1)


async def test_aio_no_endpoint_fails_fast_with_reason_or_waits() -> None:
    async with balancers.aio.insecure_channel("static:///127.0.0.1:1") as channel:
        stub = EchoStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Unary(EchoRequest(message="x"), timeout=10)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "all 1 endpoints of static:///127.0.0.1:1 failing" in (failed.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as waited:
            await stub.Unary(EchoRequest(message="x"), timeout=0.3, wait_for_ready=True)
        assert waited.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "waiting for an endpoint" in (waited.value.details() or "")


async def test_aio_queued_call_can_be_cancelled() -> None:
    async with balancers.aio.insecure_channel("static:///127.0.0.1:1") as channel:
        call = EchoStub(channel).Unary(EchoRequest(message="x"), timeout=30, wait_for_ready=True)
        seen: list[object] = []
        call.add_done_callback(seen.append)
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await call.code() is grpc.StatusCode.CANCELLED
        await wait_until(lambda: seen == [call], message="done callback ran")


# -- the sync twin -----------------------------------------------------------------------------


@pytest.fixture
def sync_servers() -> Iterator[list[str]]:
    """Three echo servers on a loop in another thread (sync clients block this one)."""
    ready = threading.Event()
    stop = threading.Event()
    addresses: list[str] = []

    def serve() -> None:
        async def main() -> None:
            servers = [await start_echo_server(n, health=True) for n in "abc"]
            addresses.extend(s.address for s in servers)
            ready.set()
            await asyncio.to_thread(stop.wait)
            for s in servers:
                await s.stop(None)

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield addresses
    stop.set()
    thread.join(10)


def test_sync_channel_all_kinds_and_spread(sync_servers: list[str]) -> None:
    with balancers.insecure_channel("static:///" + ",".join(sync_servers)) as channel:
        assert isinstance(channel, grpc.Channel)
        ready = threading.Event()
        channel.subscribe(lambda state: state is READY and ready.set())
        assert ready.wait(10)
        stub = EchoStub(channel)
        reply, call = stub.Unary.with_call(
            EchoRequest(message="m"), timeout=5, metadata=(("x-user", "bob"),)
        )
        assert "x-user=bob" in reply.metadata and 0 < reply.time_remaining <= 5 * 1.01
        assert call.code() is grpc.StatusCode.OK
        assert stub.Unary.future(EchoRequest(message="f"), timeout=5).result().message == "f"
        stream = [r.message for r in stub.ServerStream(EchoRequest(message="s", count=2))]
        assert stream == ["s#0", "s#1"]
        requests = iter([EchoRequest(message="a"), EchoRequest(message="b")])
        assert stub.ClientStream(requests, timeout=5).message == "a,b"
        bidi = stub.BidiStream(iter([EchoRequest(message="p"), EchoRequest(message="q")]))
        assert [r.message for r in bidi] == ["p", "q"]
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        # Every endpoint READY before measuring the spread.
        deadline_hits = 0
        while ready_count(channel) < 3 and deadline_hits < 500:
            stub.Unary(EchoRequest(message="warm"), timeout=5)
            deadline_hits += 1
        counts = collections.Counter(
            stub.Unary(EchoRequest(message="x"), timeout=5).server for _ in range(300)
        )
        assert_even(counts, "abc", 300)
        with pytest.raises(grpc.RpcError) as failed:
            stub.Unary(EchoRequest(message="boom", fail_code=5), timeout=5)
        assert failed.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_sync_no_endpoint() -> None:
    with balancers.insecure_channel("static:///127.0.0.1:1") as channel:
        stub = EchoStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.Unary(EchoRequest(message="x"), timeout=10)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert "failing" in failed.value.details()  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as waited:
            list(stub.ServerStream(EchoRequest(message="x"), timeout=0.3, wait_for_ready=True))
        assert waited.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]


def test_bad_targets_raise_at_construction() -> None:
    with pytest.raises(ValueError):
        balancers.insecure_channel("static:///no-port-here")
    with pytest.raises(LookupError, match="no resolver for scheme 'nope'"):
        balancers.insecure_channel("nope:///x:1")
    with pytest.raises(LookupError, match="no load-balancing policy"):
        balancers.insecure_channel("static:///127.0.0.1:1", lb_policy="weird")
