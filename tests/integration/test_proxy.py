"""The forwarding core against real grpc.aio servers on loopback, through a real proxy server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from balancers import RetryPolicy
from sidecar.auth import INVALID_TOKEN, MISSING_TOKEN, TokenAuth
from sidecar.proxy import (
    ProxyHandler,
    Upstream,
    server_options,
    upstream_channel_options,
)
from sidecar.routing import Router
from telemetry.rpc_kind import RpcKind
from tests.support.echo import EchoRequest, EchoServer, EchoStub, aiter_requests, start_echo_server

SERVICE = "/meshkit.test.Echo/"
ECHO_KINDS = {
    SERVICE + "Unary": RpcKind.UNARY_UNARY,
    SERVICE + "ServerStream": RpcKind.UNARY_STREAM,
    SERVICE + "ClientStream": RpcKind.STREAM_UNARY,
    SERVICE + "BidiStream": RpcKind.STREAM_STREAM,
}


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or predicate}")
        await asyncio.sleep(0.01)


@dataclass
class Proxy:
    server: grpc.aio.Server
    port: int
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


async def start_proxy(handler: ProxyHandler) -> Proxy:
    server = grpc.aio.server(options=server_options())
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return Proxy(server, port)


def upstream_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        address, options=upstream_channel_options(local_subchannel_pool=True)
    )


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = await start_echo_server("a")
    yield server
    await server.stop(None)


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Callable[[], Awaitable[Any]]]]:
    closers: list[Callable[[], Awaitable[Any]]] = []
    yield closers
    for close in reversed(closers):
        await close()


@pytest.fixture
def proxied(
    cleanup: list[Callable[[], Awaitable[Any]]],
) -> Callable[..., Awaitable[grpc.aio.Channel]]:
    """Start a proxy in front of ``address`` and return a client channel to it."""

    async def make(
        address: str,
        *,
        name: str = "echo",
        kinds: dict[str, RpcKind] | None = None,
        retry: RetryPolicy | None = None,
        routes: list[tuple[str, bool]] | None = None,
        **handler_kwargs: Any,
    ) -> grpc.aio.Channel:
        channel = upstream_channel(address)
        cleanup.append(channel.close)
        upstream = Upstream(name, channel, retry=retry, kinds=kinds or {})
        router = Router(
            [(prefix, upstream if use else None) for prefix, use in routes or [("/", True)]]
        )
        proxy = await start_proxy(ProxyHandler(router.match, **handler_kwargs))
        cleanup.append(lambda: proxy.server.stop(None))
        client = grpc.aio.insecure_channel(proxy.address)
        cleanup.append(client.close)
        return client

    return make


KINDS = pytest.mark.parametrize("kinds", [None, ECHO_KINDS], ids=["stream-path", "kind-hints"])


@KINDS
async def test_all_four_kinds(echo: EchoServer, proxied: Any, kinds: Any) -> None:
    stub = EchoStub(await proxied(echo.address, kinds=kinds))
    reply = await stub.Unary(EchoRequest(message="hello"), timeout=5)
    assert (reply.message, reply.server) == ("hello", "a")
    replies = [r.message async for r in stub.ServerStream(EchoRequest(message="s", count=3))]
    assert replies == ["s#0", "s#1", "s#2"]
    reply = await stub.ClientStream(aiter_requests("x", "y", "z"), timeout=5)
    assert reply.message == "x,y,z"
    call = stub.BidiStream(timeout=5)
    for text in ("p", "q"):  # interleaved: each reply before the next request
        await call.write(EchoRequest(message=text))
        assert (await call.read()).message == text
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK
    assert echo.servicer.calls == {
        "Unary": 1,
        "ServerStream": 1,
        "ClientStream": 1,
        "BidiStream": 1,
    }


@KINDS
async def test_request_metadata_forwarded_without_hop_by_hop(
    echo: EchoServer, proxied: Any, kinds: Any
) -> None:
    stub = EchoStub(await proxied(echo.address, kinds=kinds))
    metadata = (
        ("x-app", "v1"),
        ("x-trace-bin", b"\x00\x01\xff"),
        ("connection", "close"),
        ("keep-alive", "1"),
        ("proxy-authorization", "secret"),
        ("host", "elsewhere"),
        ("authorization", "Bearer t"),
    )
    reply = await stub.Unary(EchoRequest(message="m"), metadata=metadata, timeout=5)
    received = dict(item.split("=", 1) for item in reply.metadata)
    assert received["x-app"] == "v1"
    assert received["x-trace-bin"] == "0001ff"
    assert received["authorization"] == "Bearer t"
    for key in ("connection", "keep-alive", "proxy-authorization", "host"):
        assert key not in received


@KINDS
async def test_status_details_and_metadata_pass_through(
    echo: EchoServer, proxied: Any, kinds: Any
) -> None:
    stub = EchoStub(await proxied(echo.address, kinds=kinds))
    call = stub.Unary(EchoRequest(message="bad precondition", fail_code=9), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    err = info.value
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == "bad precondition"
    assert ("x-echo-server", "a") in tuple(err.initial_metadata())
    assert ("x-echo-trailer", "failed") in tuple(err.trailing_metadata())

    call = stub.Unary(EchoRequest(message="ok"), timeout=5)
    await call
    assert ("x-echo-trailer", "a") in tuple(await call.trailing_metadata())

    # headers, then no message, then a status: both reach the client
    stream = stub.ServerStream(EchoRequest(message="gone", fail_code=5), timeout=5)
    assert ("x-echo-server", "a") in tuple(await stream.initial_metadata())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream.read()
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "gone"


@KINDS
async def test_deadline_reaches_upstream_as_remaining_time(
    echo: EchoServer, proxied: Any, kinds: Any
) -> None:
    stub = EchoStub(await proxied(echo.address, kinds=kinds))
    # grpc-timeout is encoded with few significant digits, rounded up, on each hop: allow 1%
    reply = await stub.Unary(EchoRequest(message="t"), timeout=5)
    assert 3.0 < reply.time_remaining < 5.05
    reply = await stub.Unary(EchoRequest(message="t"))
    assert reply.time_remaining == 0.0  # no deadline stays no deadline
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Unary(EchoRequest(message="slow", delay_s=5), timeout=0.3)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: echo.servicer.cancelled == 1, what="upstream saw the deadline")


@KINDS
async def test_client_cancel_reaches_upstream(echo: EchoServer, proxied: Any, kinds: Any) -> None:
    stub = EchoStub(await proxied(echo.address, kinds=kinds))
    call = stub.Unary(EchoRequest(message="wait", delay_s=30), timeout=20)
    await wait_until(lambda: echo.servicer.active == 1, what="call reached upstream")
    call.cancel()
    await wait_until(lambda: echo.servicer.cancelled == 1, what="upstream cancelled")
    bidi = stub.BidiStream(timeout=20)
    await bidi.write(EchoRequest(message="wait", delay_s=30))
    await wait_until(lambda: echo.servicer.calls["BidiStream"] == 1, what="bidi reached upstream")
    bidi.cancel()
    await wait_until(lambda: echo.servicer.cancelled == 2, what="upstream bidi cancelled")


async def test_upstream_dying_mid_call_ends_the_client_call(proxied: Any) -> None:
    echo = await start_echo_server("doomed")
    stub = EchoStub(await proxied(echo.address))
    call = stub.Unary(EchoRequest(message="wait", delay_s=30), timeout=20)
    await wait_until(lambda: echo.servicer.active == 1, what="call reached upstream")
    await echo.stop(None)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


async def test_unknown_route_is_unimplemented_naming_the_path(
    echo: EchoServer, proxied: Any
) -> None:
    stub = EchoStub(await proxied(echo.address, routes=[("/other.Service/", True)]))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Unary(EchoRequest(message="x"), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "/meshkit.test.Echo/Unary" in info.value.details()
    call = stub.BidiStream(timeout=5)  # rejected without waiting for a request
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


@KINDS
async def test_upstream_down_is_unavailable_naming_the_cluster(proxied: Any, kinds: Any) -> None:
    gone = await start_echo_server("gone")
    await gone.stop(None)
    stub = EchoStub(await proxied(gone.address, name="payments", kinds=kinds))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Unary(EchoRequest(message="x"), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "'payments'" in info.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ClientStream(aiter_requests("a", "b"), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "'payments'" in info.value.details()


async def test_upstream_for_raising_is_internal_not_a_crash(echo: EchoServer) -> None:
    def broken(method: str) -> Upstream | None:
        raise RuntimeError("boom")

    proxy = await start_proxy(ProxyHandler(broken))
    try:
        async with grpc.aio.insecure_channel(proxy.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await EchoStub(channel).Unary(EchoRequest(message="x"), timeout=5)
            assert info.value.code() is grpc.StatusCode.INTERNAL
            assert "Traceback" not in info.value.details()
    finally:
        await proxy.server.stop(None)


# -- flow control -------------------------------------------------------------------------------


class Firehose:
    """A raw upstream streaming ``count`` messages of ``size`` bytes, counting what it yielded."""

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.payload = b"x" * size
        self.sent = 0

    async def pour(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            yield self.payload
            self.sent += 1


async def test_slow_reader_backpressures_the_upstream(proxied: Any) -> None:
    size, count = 64 * 1024, 2000  # 125 MiB if nothing pushed back
    hose = Firehose(count, size)
    upstream = grpc.aio.server()
    upstream.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "hose.Hose", {"Pour": grpc.unary_stream_rpc_method_handler(hose.pour)}
            ),
        )
    )
    port = upstream.add_insecure_port("127.0.0.1:0")
    await upstream.start()
    try:
        client = await proxied(f"127.0.0.1:{port}")
        call = client.unary_stream("/hose.Hose/Pour")(b"go", timeout=60)
        received = 0
        for _ in range(5):
            assert len(await call.read()) == size
            received += 1
        # the client stops reading: the upstream must stall once the windows on the way are full
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 20
        while time.monotonic() - stable_since < 0.5:
            assert time.monotonic() < deadline, "upstream never stalled"
            if hose.sent != last:
                last, stable_since = hose.sent, time.monotonic()
            await asyncio.sleep(0.02)
        in_flight = hose.sent - received
        assert in_flight < 400, f"{in_flight} messages ({in_flight * size >> 20} MiB) in flight"
        print(f"in flight while stalled: {in_flight} messages")
        while (message := await call.read()) is not grpc.aio.EOF:  # reading resumes the flow
            assert len(message) == size
            received += 1
        assert received == count == hose.sent
    finally:
        await upstream.stop(None)


# -- retries ------------------------------------------------------------------------------------


class Flaky:
    """Raw upstream failing the first ``failures`` attempts with a trailers-only UNAVAILABLE."""

    def __init__(self, failures: int, *, fail_before_reading: bool = False) -> None:
        self.failures = failures
        self.fail_before_reading = fail_before_reading
        self.attempts = 0

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.attempts += 1
        if self.attempts <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return b"ok:" + request

    async def collect(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> bytes:
        self.attempts += 1
        if self.fail_before_reading and self.attempts <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        parts = [r async for r in requests]
        if self.attempts <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return b",".join(parts)

    async def start(self) -> tuple[grpc.aio.Server, str]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "flaky.Flaky",
                    {
                        "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                        "Collect": grpc.stream_unary_rpc_method_handler(self.collect),
                    },
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, f"127.0.0.1:{port}"


RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.05)
FLAKY_KINDS = {
    "/flaky.Flaky/Unary": RpcKind.UNARY_UNARY,
    "/flaky.Flaky/Collect": RpcKind.STREAM_UNARY,
}


@pytest.mark.parametrize("kinds", [None, FLAKY_KINDS], ids=["stream-path", "kind-hints"])
async def test_retry_on_unavailable_then_success(proxied: Any, kinds: Any) -> None:
    flaky = Flaky(failures=2)
    server, address = await flaky.start()
    try:
        client = await proxied(address, retry=RETRY, kinds=kinds)
        assert await client.unary_unary("/flaky.Flaky/Unary")(b"a", timeout=5) == b"ok:a"
        assert flaky.attempts == 3

        flaky.attempts = 0

        async def requests() -> AsyncIterator[bytes]:
            for part in (b"x", b"y", b"z"):
                yield part

        collect = client.stream_unary("/flaky.Flaky/Collect")
        assert await collect(requests(), timeout=5) == b"x,y,z"  # replayed to the third attempt
        assert flaky.attempts == 3

        flaky.attempts, flaky.failures = 0, 5  # more failures than attempts: the last one shows
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.unary_unary("/flaky.Flaky/Unary")(b"a", timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert flaky.attempts == 3
    finally:
        await server.stop(None)


async def test_retry_while_the_client_is_still_streaming(proxied: Any) -> None:
    # attempt 1 fails while the proxy is waiting for the client's second message: attempt 2
    # gets the first message replayed and the rest live, in order
    flaky = Flaky(failures=1, fail_before_reading=True)
    server, address = await flaky.start()
    try:
        client = await proxied(address, retry=RETRY)

        async def requests() -> AsyncIterator[bytes]:
            yield b"x"
            await wait_until(lambda: flaky.attempts == 2, what="second attempt started")
            yield b"y"
            yield b"z"

        collect = client.stream_unary("/flaky.Flaky/Collect")
        assert await collect(requests(), timeout=10) == b"x,y,z"
        assert flaky.attempts == 2
    finally:
        await server.stop(None)


async def test_no_retry_once_the_upstream_answered(echo: EchoServer, proxied: Any) -> None:
    stub = EchoStub(await proxied(echo.address, retry=RETRY))
    with pytest.raises(grpc.aio.AioRpcError) as info:  # headers sent, then UNAVAILABLE
        await stub.Unary(EchoRequest(message="down", fail_code=14), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "down"
    assert echo.servicer.calls["Unary"] == 1


async def test_no_retry_past_the_buffer_cap(proxied: Any) -> None:
    flaky = Flaky(failures=1)
    server, address = await flaky.start()
    try:
        small = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_buffer_bytes=10)
        client = await proxied(address, retry=small)

        async def requests() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"0123456789"

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.stream_unary("/flaky.Flaky/Collect")(requests(), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert flaky.attempts == 1
    finally:
        await server.stop(None)


# -- authentication -----------------------------------------------------------------------------


async def test_token_auth(echo: EchoServer, proxied: Any, tmp_path: Any) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# tokens\nsecret-1\n\nsecret-2\n")
    stub = EchoStub(await proxied(echo.address, authenticate=TokenAuth(str(tokens)).check))
    reply = await stub.Unary(
        EchoRequest(message="in"), metadata=(("authorization", "Bearer secret-2"),), timeout=5
    )
    assert reply.message == "in"
    cases = [((), MISSING_TOKEN), ((("authorization", "Bearer nope"),), INVALID_TOKEN)]
    for metadata, details in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Unary(EchoRequest(message="in"), metadata=metadata, timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert info.value.details() == details
    assert echo.servicer.calls["Unary"] == 1


async def test_token_auth_interceptor_guards_a_plain_server(tmp_path: Any) -> None:
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from sidecar.auth import token_auth_interceptor
    from tests.support.echo import EchoServicer, echo_pb2_grpc

    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    server = grpc.aio.server(interceptors=[token_auth_interceptor(TokenAuth(str(tokens)).check)])
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer("guarded"), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = EchoStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Unary(EchoRequest(message="x"), timeout=5)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            good = (("authorization", "Bearer s3cret"),)
            assert (await stub.Unary(EchoRequest(message="x"), metadata=good, timeout=5)).message
            probe = health_pb2_grpc.HealthStub(channel)  # health stays open to probes
            reply = await probe.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(None)


# -- an upstream ending the call before reading it -------------------------------------------

#: Calls per (outcome, client kind): grpc.aio's replacement status showed in ~1 call in 6.
EARLY_REPEATS = 100


@pytest.mark.parametrize("hinted", [False, True], ids=["stream-path", "kind-hints"])
async def test_early_upstream_status_survives_a_failed_send(
    cleanup: list[Callable[[], Awaitable[Any]]], hinted: bool
) -> None:
    """The upstream answers before the relay has sent the request (unknown method, abort with
    trailers, an OK reply without reading): each call ends exactly as a direct call does,
    never with grpc.aio's ``INTERNAL "Internal error from Core"``."""
    from tests.e2e.test_early_status import (
        HINTS,
        KINDS,
        OUTCOMES,
        EarlyHandler,
        method,
        repeat_calls,
    )

    upstream = grpc.aio.server()
    upstream.add_generic_rpc_handlers((EarlyHandler(),))
    direct = f"127.0.0.1:{upstream.add_insecure_port('127.0.0.1:0')}"
    await upstream.start()
    cleanup.append(lambda: upstream.stop(None))
    channel = upstream_channel(direct)
    cleanup.append(channel.close)
    hints = {method(outcome, kind): RpcKind(HINTS[kind]) for outcome in OUTCOMES for kind in KINDS}
    target = Upstream("early", channel, kinds=hints if hinted else {})
    proxy = await start_proxy(ProxyHandler(lambda _method: target))
    cleanup.append(lambda: proxy.server.stop(None))
    for outcome in OUTCOMES:
        for kind in KINDS:
            (want,) = await asyncio.to_thread(repeat_calls, direct, kind, outcome, 1)
            seen = await asyncio.to_thread(
                repeat_calls, proxy.address, kind, outcome, EARLY_REPEATS
            )
            assert dict(seen) == {want: EARLY_REPEATS}, (outcome, kind, want, seen)
