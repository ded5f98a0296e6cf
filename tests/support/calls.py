"""Checks shared by the tests that put something between a client and the echo app."""

from __future__ import annotations

import grpc
import pytest

from tests.support.echo import EchoRequest, EchoServicer, EchoStub
from tests.support.waiting import wait_until


async def assert_deadline_carried(stub: EchoStub) -> None:
    """The client's deadline reaches the app as (a bit less) remaining time."""
    reply = await stub.Unary(EchoRequest(message="d"), timeout=5.0)
    # grpc rounds timeouts up on the wire (~1%); hops must not make it grow beyond that
    assert 3.0 < reply.time_remaining <= 5.0 * 1.01


async def assert_deadline_enforced(stub: EchoStub) -> None:
    """A call slower than its deadline ends DEADLINE_EXCEEDED."""
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.Unary(EchoRequest(message="slow", delay_s=5), timeout=0.3)
    assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def assert_cancel_reaches_app(stub: EchoStub, servicer: EchoServicer) -> None:
    """A client cancel arrives at the app's handler as a cancellation."""
    # Earlier calls (a deadline-exceeded one) may still be unwinding in the app: wait until
    # none is, so the counters below can only move for this call.
    await wait_until(lambda: servicer.active == 0, timeout=10, message="earlier calls ended")
    before = servicer.cancelled
    calls = servicer.calls["Unary"]
    call = stub.Unary(EchoRequest(message="wait", delay_s=20), timeout=30)
    await wait_until(
        lambda: servicer.calls["Unary"] > calls, timeout=10, message="call reached app"
    )
    call.cancel()
    await wait_until(lambda: servicer.cancelled > before, timeout=10, message="app cancelled")
