"""Transparency of the real sidecar process, outbound and inbound: all four RPC kinds,
metadata, trailers, status, deadline, cancellation, and the errors the sidecar itself causes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from tests.e2e.conftest import EchoEnv, Sidecars, echo_behind_sidecar, static
from tests.support.calls import (
    assert_cancel_reaches_app,
    assert_deadline_carried,
    assert_deadline_enforced,
)
from tests.support.echo import EchoRequest, EchoStub, aiter_requests

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

ECHO = "/meshkit.test.Echo/"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(module_sidecars: Sidecars) -> AsyncIterator[EchoEnv]:
    async with echo_behind_sidecar(
        module_sidecars,
        lambda echo: {
            "outbound": {
                "listen": "127.0.0.1:0",
                "routes": [
                    {"prefix": ECHO, "cluster": "echo"},
                    {"prefix": "/dead.Service/", "cluster": "dead"},
                ],
            },
            "inbound": {"listen": "127.0.0.1:0", "app": echo.address},
            "clusters": {
                "echo": {"target": static(echo)},
                # port 1 on loopback: nothing listens there, connections are refused at once
                "dead": {"target": "static:///127.0.0.1:1"},
            },
        },
    ) as started:
        yield started


@pytest.fixture(params=["outbound", "inbound"])
def address(request: pytest.FixtureRequest, env: EchoEnv) -> str:
    return str(env.sidecar.addresses[request.param])


@pytest_asyncio.fixture(loop_scope="module")
async def stub(address: str) -> AsyncIterator[EchoStub]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield EchoStub(channel)


async def test_unary_carries_metadata_and_trailers(stub: EchoStub) -> None:
    call = stub.Unary(
        EchoRequest(message="hi"),
        metadata=(("x-test", "one"), ("x-raw-bin", b"\x00\x01")),
        timeout=10,
    )
    reply = await call
    assert (reply.message, reply.server) == ("hi", "app")
    assert "x-test=one" in reply.metadata
    assert "x-raw-bin=0001" in reply.metadata
    assert ("x-echo-trailer", "app") in tuple(await call.trailing_metadata())


async def test_server_stream(stub: EchoStub) -> None:
    replies = [r.message async for r in stub.ServerStream(EchoRequest(message="s", count=3))]
    assert replies == ["s#0", "s#1", "s#2"]


async def test_client_stream(stub: EchoStub) -> None:
    reply = await stub.ClientStream(aiter_requests("a", "b", "c"), timeout=10)
    assert reply.message == "a,b,c"


async def test_bidi_stream_interleaves(stub: EchoStub) -> None:
    call = stub.BidiStream(timeout=10)
    for word in ("x", "y", "z"):
        await call.write(EchoRequest(message=word))
        reply = await call.read()  # answered before the next write: truly streamed
        assert reply.message == word
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK


async def test_upstream_status_details_and_trailers_reach_the_client(stub: EchoStub) -> None:
    code = grpc.StatusCode.FAILED_PRECONDITION
    call = stub.Unary(EchoRequest(message="not today", fail_code=code.value[0]), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    error = failure.value
    assert error.code() is code
    assert error.details() == "not today"
    assert ("x-echo-trailer", "failed") in tuple(error.trailing_metadata())
    assert ("x-echo-server", "app") in tuple(error.initial_metadata())


async def test_deadline_reaches_the_upstream_as_remaining_time(stub: EchoStub) -> None:
    await assert_deadline_carried(stub)


async def test_no_deadline_stays_none(stub: EchoStub) -> None:
    reply = await stub.Unary(EchoRequest(message="d"))
    assert reply.time_remaining == 0.0  # the echo reports 0 for "no deadline"


async def test_deadline_exceeded(stub: EchoStub) -> None:
    await assert_deadline_enforced(stub)


async def test_client_cancel_reaches_the_upstream(stub: EchoStub, env: EchoEnv) -> None:
    await assert_cancel_reaches_app(stub, env.echo.servicer)


async def test_unknown_route_is_unimplemented_naming_the_path(env: EchoEnv) -> None:
    async with grpc.aio.insecure_channel(env.sidecar.outbound) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await channel.unary_unary("/unknown.Service/Method")(b"", timeout=10)
    assert failure.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "/unknown.Service/Method" in (failure.value.details() or "")


async def test_cluster_without_reachable_endpoint_is_unavailable(env: EchoEnv) -> None:
    async with grpc.aio.insecure_channel(env.sidecar.outbound) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await channel.unary_unary("/dead.Service/Method")(b"", timeout=10)
    assert failure.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "dead" in (failure.value.details() or "")
    assert time.monotonic() - started < 9  # failed fast, not by running out the deadline
    assert "Traceback" not in env.sidecar.log
