"""Routes with RPC-kind hints (``kind: unary_unary`` ...) through the real sidecar process:
the hinted forwarding paths carry metadata, trailers, status, deadlines and cancellation like
the default stream path, and unhinted methods of the same service still work."""

from __future__ import annotations

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
                    {"prefix": ECHO + "Unary", "cluster": "echo", "kind": "unary_unary"},
                    {"prefix": ECHO + "ServerStream", "cluster": "echo", "kind": "unary_stream"},
                    {"prefix": ECHO + "ClientStream", "cluster": "echo", "kind": "stream_unary"},
                    {"prefix": ECHO, "cluster": "echo"},
                ],
            },
            "clusters": {"echo": {"target": static(echo)}},
        },
    ) as started:
        yield started


@pytest_asyncio.fixture(loop_scope="module")
async def stub(env: EchoEnv) -> AsyncIterator[EchoStub]:
    async with grpc.aio.insecure_channel(env.sidecar.addresses["outbound"]) as channel:
        yield EchoStub(channel)


async def test_unary_hint_carries_metadata_and_trailers(stub: EchoStub) -> None:
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


async def test_unary_hint_carries_status_details_and_trailers(stub: EchoStub) -> None:
    request = EchoRequest(message="not today", fail_code=grpc.StatusCode.NOT_FOUND.value[0])
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.Unary(request, timeout=10)
    error = failure.value
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert error.details() == "not today"
    assert ("x-echo-trailer", "failed") in tuple(error.trailing_metadata())
    assert ("x-echo-server", "app") in tuple(error.initial_metadata())


async def test_unary_hint_keeps_the_deadline(stub: EchoStub) -> None:
    await assert_deadline_carried(stub)
    await assert_deadline_enforced(stub)


async def test_unary_hint_cancel_reaches_the_upstream(stub: EchoStub, env: EchoEnv) -> None:
    await assert_cancel_reaches_app(stub, env.echo.servicer)


async def test_server_stream_hint(stub: EchoStub) -> None:
    replies = [r.message async for r in stub.ServerStream(EchoRequest(message="s", count=3))]
    assert replies == ["s#0", "s#1", "s#2"]


async def test_client_stream_hint(stub: EchoStub) -> None:
    reply = await stub.ClientStream(aiter_requests("a", "b", "c"), timeout=10)
    assert reply.message == "a,b,c"


async def test_unhinted_bidi_of_the_same_service_still_streams(stub: EchoStub) -> None:
    call = stub.BidiStream(timeout=10)
    for word in ("x", "y"):
        await call.write(EchoRequest(message=word))
        assert (await call.read()).message == word
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK
