"""Retries of the balanced channels (``retry=balancers.RetryPolicy(...)``) against real servers."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

import balancers
import balancers.aio
from tests.support.echo import EchoRequest, EchoServer, EchoStub, start_echo_server
from tests.support.waiting import wait_until

READY = grpc.ChannelConnectivity.READY

pytestmark = pytest.mark.timeout(60)

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
FAST = balancers.RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)


@dataclass(frozen=True)
class FixedBackoff(balancers.RetryPolicy):
    """Always the longest backoff, so timing tests do not depend on the jitter."""

    def backoff(self, retry: int) -> float:
        return self.backoff_ceiling(retry)


class FailingServer:
    """A server whose every Echo method fails UNAVAILABLE before sending anything."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.server = grpc.aio.server()
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self._stream),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("meshkit.test.Echo", handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls["Unary"] += 1
        await context.abort(UNAVAILABLE, "failing server")
        return b""

    async def _stream(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        self.calls["ServerStream"] += 1
        await context.abort(UNAVAILABLE, "failing server")
        yield b""


@pytest.fixture
async def two() -> AsyncIterator[list[EchoServer]]:
    servers = [await start_echo_server(name) for name in ("a", "b")]
    yield servers
    for server in servers:
        await server.stop(None)


@pytest.fixture
async def failing() -> AsyncIterator[FailingServer]:
    server = FailingServer()
    await server.server.start()
    yield server
    await server.server.stop(None)


def static(*addresses: str) -> str:
    return "static:///" + ",".join(addresses)


def unary_calls(servers: list[EchoServer]) -> int:
    return sum(s.servicer.calls["Unary"] for s in servers)


async def all_ready(channel: balancers.aio.BalancedChannel, count: int) -> None:
    await wait_until(
        lambda: sum(sc.state.connectivity is READY for sc in channel.core.subchannels) == count,
        message=f"{count} endpoints READY",
    )


async def test_aio_retry_hides_a_failing_backend(two: list[EchoServer]) -> None:
    sick, healthy = two
    sick.servicer.fail_with = UNAVAILABLE
    async with balancers.aio.insecure_channel(static(sick.address, healthy.address)) as plain:
        await all_ready(plain, 2)
        stub = EchoStub(plain)
        outcomes = await asyncio.gather(
            *(stub.Unary(EchoRequest(message="x"), timeout=10) for _ in range(10)),
            return_exceptions=True,
        )
        assert any(isinstance(o, grpc.aio.AioRpcError) for o in outcomes)
    before = sick.servicer.calls["Unary"]
    async with balancers.aio.insecure_channel(
        static(sick.address, healthy.address), retry=FAST
    ) as channel:
        await all_ready(channel, 2)
        stub = EchoStub(channel)
        # one at a time: round robin alternates, so a retry always lands on the other backend
        replies = [await stub.Unary(EchoRequest(message="x"), timeout=10) for _ in range(20)]
        assert {r.server for r in replies} == {"b"}
        assert sick.servicer.calls["Unary"] > before  # it was tried, then retried elsewhere
        call = stub.Unary(EchoRequest(message="y"), timeout=10)
        assert (await call).message == "y"
        assert await call.code() is grpc.StatusCode.OK
        assert ("x-echo-trailer", "b") in tuple(await call.trailing_metadata())


async def test_sync_retry_hides_a_failing_backend(two: list[EchoServer]) -> None:
    sick, healthy = two
    sick.servicer.fail_with = UNAVAILABLE

    def run() -> None:  # on a thread: the servers run on this test's loop
        target = static(sick.address, healthy.address)
        with balancers.insecure_channel(target, retry=FAST) as channel:
            stub = EchoStub(channel)
            for _ in range(10):
                reply, call = stub.Unary.with_call(
                    EchoRequest(message="x"), timeout=10, wait_for_ready=True
                )
                assert reply.server == "b" and call.code() is grpc.StatusCode.OK
            assert stub.Unary(EchoRequest(message="y"), timeout=10).server == "b"

    await asyncio.to_thread(run)
    assert sick.servicer.calls["Unary"] > 0


async def test_non_retryable_code_is_not_retried(two: list[EchoServer]) -> None:
    policy = balancers.RetryPolicy(
        max_attempts=5, retryable_codes=frozenset({UNAVAILABLE}), initial_backoff=0.01
    )
    async with balancers.aio.insecure_channel(
        static(*(s.address for s in two)), retry=policy
    ) as ch:
        await all_ready(ch, 2)
        for s in two:
            s.servicer.fail_with = grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await EchoStub(ch).Unary(EchoRequest(message="no"), timeout=10)
        assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert unary_calls(two) == 1


async def test_failure_after_headers_is_not_retried(two: list[EchoServer]) -> None:
    code = UNAVAILABLE.value[0]  # the echo sends its headers, then aborts with fail_code
    async with balancers.aio.insecure_channel(static(*(s.address for s in two)), retry=FAST) as ch:
        await all_ready(ch, 2)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await EchoStub(ch).Unary(EchoRequest(message="late", fail_code=code), timeout=10)
        assert raised.value.code() is UNAVAILABLE
        assert "x-echo-server" in raised.value.initial_metadata()
        assert unary_calls(two) == 1

    def run() -> None:
        with balancers.insecure_channel(static(*(s.address for s in two)), retry=FAST) as sync:
            with pytest.raises(grpc.RpcError) as failed:
                EchoStub(sync).Unary(
                    EchoRequest(message="late", fail_code=code), timeout=10, wait_for_ready=True
                )
            assert failed.value.code() is UNAVAILABLE

    await asyncio.to_thread(run)
    assert unary_calls(two) == 2


async def test_max_attempts_bounds_the_attempts(two: list[EchoServer]) -> None:
    for s in two:
        s.servicer.fail_with = UNAVAILABLE
    policy = balancers.RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.02)
    async with balancers.aio.insecure_channel(
        static(*(s.address for s in two)), retry=policy
    ) as ch:
        await all_ready(ch, 2)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await EchoStub(ch).Unary(EchoRequest(message="x"), timeout=10)
        assert raised.value.code() is UNAVAILABLE
        assert "failing on purpose" in (raised.value.details() or "")
        assert unary_calls(two) == 4
        assert all(s.servicer.calls["Unary"] == 2 for s in two)  # each retry re-picks

    def run() -> None:
        with balancers.insecure_channel(static(*(s.address for s in two)), retry=policy) as sync:
            with pytest.raises(grpc.RpcError) as failed:
                EchoStub(sync).Unary(EchoRequest(message="x"), timeout=10, wait_for_ready=True)
            assert failed.value.code() is UNAVAILABLE

    await asyncio.to_thread(run)
    assert unary_calls(two) == 8


async def test_deadline_bounds_the_retries(two: list[EchoServer]) -> None:
    for s in two:
        s.servicer.fail_with = UNAVAILABLE
    # Attempts at ~0, 0.4 and 0.8 s; the next would start after the 1 s deadline.
    policy = FixedBackoff(max_attempts=5, initial_backoff=0.4, max_backoff=0.4)
    async with balancers.aio.insecure_channel(
        static(*(s.address for s in two)), retry=policy
    ) as ch:
        await all_ready(ch, 2)
        start = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await EchoStub(ch).Unary(EchoRequest(message="x"), timeout=1.0)
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "UNAVAILABLE" in (raised.value.details() or "")
        assert unary_calls(two) == 3
        assert 0.9 <= time.monotonic() - start < 3.0

    def run() -> None:
        with balancers.insecure_channel(static(*(s.address for s in two)), retry=policy) as sync:
            stub = EchoStub(sync)
            with pytest.raises(grpc.RpcError) as failed:
                stub.Unary(EchoRequest(message="x"), timeout=1.0, wait_for_ready=True)
            assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

    await asyncio.to_thread(run)
    assert unary_calls(two) == 6


async def test_aio_unary_stream_is_retried_before_its_first_message(
    two: list[EchoServer], failing: FailingServer
) -> None:
    healthy = two[0]
    target = static(failing.address, healthy.address)
    async with balancers.aio.insecure_channel(target, retry=FAST) as channel:
        await all_ready(channel, 2)
        stub = EchoStub(channel)
        for _ in range(6):
            got = [r.message async for r in stub.ServerStream(EchoRequest(message="s", count=3))]
            assert got == ["s#0", "s#1", "s#2"]
            call = stub.ServerStream(EchoRequest(message="r", count=2))
            assert (await call.read()).message == "r#0"
            assert (await call.read()).message == "r#1"
            assert await call.read() is grpc.aio.EOF
            assert await call.code() is grpc.StatusCode.OK
        assert failing.calls["ServerStream"] > 0
        # a failure after the first message is the caller's to see, not retried
        code = UNAVAILABLE.value[0]
        before = healthy.servicer.calls["ServerStream"] + failing.calls["ServerStream"]
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in stub.ServerStream(EchoRequest(message="f", fail_code=code)):
                pass
        after = healthy.servicer.calls["ServerStream"] + failing.calls["ServerStream"]
        assert after - before <= FAST.max_attempts  # failing-server tries, then one answer


async def test_sync_unary_stream_is_retried_before_its_first_message(
    two: list[EchoServer], failing: FailingServer
) -> None:
    healthy = two[0]
    target = static(failing.address, healthy.address)

    def run() -> None:
        with balancers.insecure_channel(target, retry=FAST) as channel:
            stub = EchoStub(channel)
            for _ in range(6):
                stream = stub.ServerStream(
                    EchoRequest(message="s", count=3), timeout=10, wait_for_ready=True
                )
                assert [r.message for r in stream] == ["s#0", "s#1", "s#2"]
                assert stream.code() is grpc.StatusCode.OK

    await asyncio.to_thread(run)
    assert failing.calls["ServerStream"] > 0


async def test_cancellation_stops_retrying(two: list[EchoServer]) -> None:
    for s in two:
        s.servicer.fail_with = UNAVAILABLE
    policy = FixedBackoff(max_attempts=5, initial_backoff=30.0, max_backoff=30.0)
    async with balancers.aio.insecure_channel(
        static(*(s.address for s in two)), retry=policy
    ) as ch:
        await all_ready(ch, 2)
        call = EchoStub(ch).Unary(EchoRequest(message="x"), timeout=50)
        await wait_until(lambda: unary_calls(two) == 1, message="first attempt failed")
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert call.cancelled() and call.done()
        assert await call.code() is grpc.StatusCode.CANCELLED
        await wait_until(lambda: call._task.done(), message="retry loop stopped")
        assert unary_calls(two) == 1


async def test_cancellation_cancels_the_attempt_in_flight(two: list[EchoServer]) -> None:
    async with balancers.aio.insecure_channel(static(*(s.address for s in two)), retry=FAST) as ch:
        await all_ready(ch, 2)
        task = asyncio.ensure_future(
            EchoStub(ch).Unary(EchoRequest(message="slow", delay_s=20), timeout=30)
        )
        await wait_until(lambda: sum(s.servicer.active for s in two) == 1, message="in flight")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: sum(s.servicer.cancelled for s in two) == 1, message="cancelled")
        assert unary_calls(two) == 1


async def test_streaming_requests_pass_through_unretried(two: list[EchoServer]) -> None:
    from tests.support.echo import aiter_requests

    async with balancers.aio.insecure_channel(static(*(s.address for s in two)), retry=FAST) as ch:
        await all_ready(ch, 2)
        call = EchoStub(ch).ClientStream(aiter_requests("a", "b"))
        assert type(call).__module__.startswith("grpc")
        assert (await call).message == "a,b"
