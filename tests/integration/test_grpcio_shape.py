"""Where the balanced channels mirror grpcio's API, they behave as grpcio does.

Each check runs the same steps on a real grpcio channel and on a balanced one and compares what
comes out (exception type and message, status code and details). Servers are real grpc.aio
servers on loopback; ``127.0.0.1:1`` is an address nothing listens on.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import grpc
import pytest

import balancers
from balancers import (
    Balancer,
    BalancerController,
    BalancerOptions,
    NoSubchannelAvailable,
    Picker,
    PickInfo,
    PickResult,
    RetryPolicy,
)
from resolvers import ResolverState
from tests.support.echo import (
    EchoRequest,
    EchoStub,
    echo_servers_in_thread,
    start_echo_server,
)
from tests.support.waiting import wait_until, wait_until_sync

pytestmark = pytest.mark.timeout(60)

NOWHERE = "127.0.0.1:1"
METHOD = "/meshkit.test.Echo/Unary"
READY = grpc.ChannelConnectivity.READY
SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN
CANCELLED = grpc.StatusCode.CANCELLED
RETRY = RetryPolicy(
    max_attempts=3, retryable_codes=frozenset(grpc.StatusCode) - {grpc.StatusCode.OK}
)
"""Retries everything retryable (CANCELLED too): closing must still never be retried."""

KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
SYNC_VERBS = (
    ("unary_unary", "__call__"),
    ("unary_unary", "with_call"),
    ("unary_unary", "future"),
    ("unary_stream", "__call__"),
    ("stream_unary", "__call__"),
    ("stream_unary", "with_call"),
    ("stream_unary", "future"),
    ("stream_stream", "__call__"),
)


def static(*addresses: str) -> str:
    return "static:///" + ",".join(addresses)


def ready_count(channel: Any) -> int:
    return sum(sc.state.connectivity is READY for sc in channel.core.subchannels)


def same_error(got: BaseException, want: BaseException) -> None:
    assert (type(got), str(got)) == (type(want), str(want))


# -- a call on a closed channel ----------------------------------------------------------------


async def aio_call_error(channel: Any, kind: str) -> Exception:
    """What one call of ``kind`` raises on ``channel`` (starting it, or awaiting its answer)."""
    try:
        call = getattr(channel, kind)(METHOD)(b"" if kind.startswith("unary") else None)
        await (call if kind.endswith("unary") else call.read())
    except Exception as exc:
        return exc
    raise AssertionError(f"a {kind} call on a closed channel did not fail")


@pytest.mark.parametrize("retry", [None, RETRY], ids=["plain", "retrying"])
async def test_aio_call_on_a_closed_channel_raises_usage_error(retry: RetryPolicy | None) -> None:
    reference = grpc.aio.insecure_channel(NOWHERE)
    await reference.close()
    channel = balancers.aio.insecure_channel(static(NOWHERE), retry=retry)
    await channel.close()
    for kind in KINDS:
        want, got = await aio_call_error(reference, kind), await aio_call_error(channel, kind)
        assert isinstance(want, grpc.aio.UsageError)
        same_error(got, want)


def sync_call_error(channel: Any, kind: str, verb: str) -> Exception:
    request: Any = b"" if kind.startswith("unary") else iter([b""])
    try:
        result = getattr(getattr(channel, kind)(METHOD), verb)(request, timeout=5)
        if kind.endswith("stream"):
            list(result)
        elif verb == "future":
            result.result()
    except Exception as exc:
        return exc
    raise AssertionError(f"{kind}.{verb} on a closed channel did not fail")


@pytest.mark.parametrize("retry", [None, RETRY], ids=["plain", "retrying"])
def test_sync_call_on_a_closed_channel_raises_value_error(retry: RetryPolicy | None) -> None:
    reference = grpc.insecure_channel(NOWHERE)
    reference.close()
    channel = balancers.insecure_channel(static(NOWHERE), retry=retry)
    channel.close()
    for kind, verb in SYNC_VERBS:
        want, got = sync_call_error(reference, kind, verb), sync_call_error(channel, kind, verb)
        assert type(want) is ValueError, (kind, verb, want)
        same_error(got, want)


async def test_aio_state_api_on_a_closed_channel_raises_usage_error() -> None:
    for channel in (
        grpc.aio.insecure_channel(NOWHERE),
        balancers.aio.insecure_channel(static(NOWHERE)),
    ):
        waiting = asyncio.ensure_future(channel.channel_ready())
        await channel.close()
        assert channel.get_state() is SHUTDOWN
        with pytest.raises(grpc.aio.UsageError, match="Channel is closed"):
            await waiting  # in flight when the channel closed
        with pytest.raises(grpc.aio.UsageError, match="Channel is closed"):
            await channel.channel_ready()
        with pytest.raises(grpc.aio.UsageError, match="Channel is closed"):
            await channel.wait_for_state_change(READY)


# -- calls in flight when the channel closes ---------------------------------------------------


@pytest.mark.parametrize("retry", [None, RETRY], ids=["plain", "retrying"])
async def test_aio_call_waiting_for_an_endpoint_is_cancelled_by_close(
    retry: RetryPolicy | None,
) -> None:
    outcomes = []
    for channel in (
        grpc.aio.insecure_channel(NOWHERE),
        balancers.aio.insecure_channel(static(NOWHERE), retry=retry),
    ):
        call = channel.unary_unary(METHOD)(b"", timeout=30, wait_for_ready=True)
        await channel.close()
        with pytest.raises(asyncio.CancelledError):
            await call
        outcomes.append((await call.code(), call.cancelled()))
    assert outcomes[1] == outcomes[0] == (CANCELLED, True)


async def test_aio_close_cancels_calls_in_flight_or_gives_them_the_grace() -> None:
    echo = await start_echo_server("a")
    try:
        for grace in (None, 10.0):
            channel = balancers.aio.insecure_channel(static(echo.address))
            await channel.channel_ready()
            slow = asyncio.ensure_future(
                EchoStub(channel).Unary(EchoRequest(message="x", delay_s=0.5), timeout=20)
            )
            await wait_until(lambda: echo.servicer.active == 1, message="the call is in flight")
            started = time.monotonic()
            await channel.close(grace)
            if grace is None:  # grpc.aio's close(None): cancelled at once
                assert time.monotonic() - started < 5
                with pytest.raises(asyncio.CancelledError):
                    await slow
            else:  # within the grace, the call finishes
                assert (await slow).message == "x"
    finally:
        await echo.stop(None)


class _NeverReadyPicker(Picker):
    """Keeps every call waiting, and tells the test once a call has asked."""

    def __init__(self, asked: threading.Event) -> None:
        self._asked = asked

    def pick(self, info: PickInfo) -> PickResult:
        self._asked.set()
        raise NoSubchannelAvailable()


class _NeverReady(Balancer):
    def __init__(self, controller: BalancerController, asked: threading.Event) -> None:
        self._controller = controller
        self._asked = asked

    def update_resolver_state(self, state: ResolverState) -> None:
        self._controller.update_state(
            grpc.ChannelConnectivity.CONNECTING, _NeverReadyPicker(self._asked)
        )

    def resolver_error(self, error: Exception) -> None:
        pass

    def close(self) -> None:
        pass


class _NeverReadyBuilder:
    name = "test_never_ready"

    def __init__(self) -> None:
        self.asked = threading.Event()

    def build(self, controller: BalancerController, options: BalancerOptions) -> Balancer:
        return _NeverReady(controller, self.asked)


def test_sync_call_waiting_for_an_endpoint_fails_cancelled_on_close() -> None:
    reference = grpc.insecure_channel(NOWHERE)
    future = reference.unary_unary(METHOD).future(b"", timeout=30, wait_for_ready=True)
    reference.close()
    want = future.exception()
    assert want is not None

    builder = _NeverReadyBuilder()
    balancers.register(builder)
    channel = balancers.insecure_channel(static(NOWHERE), lb_policy=builder.name)
    failures: list[grpc.RpcError] = []

    def call() -> None:
        try:
            channel.unary_unary(METHOD)(b"", timeout=30)
        except grpc.RpcError as error:
            failures.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    assert builder.asked.wait(10), "the call never asked for an endpoint"
    channel.close()
    caller.join(10)
    assert len(failures) == 1
    got = failures[0]
    assert (got.code(), got.details()) == (want.code(), want.details())
    assert got.code() is CANCELLED


def test_sync_close_cancels_calls_in_flight_at_once() -> None:
    with echo_servers_in_thread("a") as (echo,):
        outcomes = []
        for channel in (
            grpc.insecure_channel(echo.address),
            balancers.insecure_channel(static(echo.address)),  # drain_timeout is 30 s
        ):
            future = EchoStub(channel).Unary.future(
                EchoRequest(message="x", delay_s=30), timeout=40
            )
            wait_until_sync(lambda: echo.servicer.active == 1, message="the call is in flight")
            started = time.monotonic()
            channel.close()
            error = future.exception(10)
            assert time.monotonic() - started < 10
            outcomes.append((error.code(), error.details()))
            wait_until_sync(lambda: echo.servicer.active == 0, message="the server saw the end")
        assert outcomes[1] == outcomes[0]
        assert outcomes[0][0] is CANCELLED


# -- subscribe ---------------------------------------------------------------------------------


def test_sync_subscribe_reports_transitions_only() -> None:
    with echo_servers_in_thread("ab") as servers:
        channel = balancers.insecure_channel(static(*(s.address for s in servers)))
        seen: list[tuple[grpc.ChannelConnectivity, threading.Thread]] = []
        late: list[grpc.ChannelConnectivity] = []

        def record(state: grpc.ChannelConnectivity) -> None:
            seen.append((state, threading.current_thread()))

        def broken(state: grpc.ChannelConnectivity) -> None:
            raise RuntimeError("a subscriber that fails")

        channel.subscribe(broken)
        channel.subscribe(record)
        wait_until_sync(lambda: ready_count(channel) == 2, message="both endpoints READY")
        # Each endpoint's change published a picker; the aggregate state changed less often.
        channel.subscribe(late.append)
        wait_until_sync(lambda: late == [READY], message="the current state, once")
        channel.close()

    states = [state for state, _ in seen]
    assert states[-1] is SHUTDOWN and late == [READY, SHUTDOWN]
    assert all(a is not b for a, b in itertools.pairwise(states)), states
    assert states.count(READY) == 1
    assert channel.core.generation > len(states)  # pickers published without a transition
    # Delivered like grpcio's: from another thread than the subscriber's.
    assert all(thread is not threading.current_thread() for _, thread in seen)


# -- an aio channel built with no event loop running -------------------------------------------


def test_aio_channel_built_outside_a_loop_binds_on_first_use() -> None:
    """Stubs and channels built at import time work from ``asyncio.run`` later.

    (grpc.aio binds to the thread's default loop at construction, so the same program fails
    under ``asyncio.run`` with "attached to a different loop"; binding at first use is what
    makes this pattern work.)
    """
    with echo_servers_in_thread("ab") as servers:
        channel = balancers.aio.insecure_channel(static(*(s.address for s in servers)))
        stub = EchoStub(channel)
        assert channel.get_state() is grpc.ChannelConnectivity.IDLE
        assert not channel.core.subchannels  # nothing runs before the first use

        async def main() -> set[str]:
            first = await stub.Unary(EchoRequest(message="x"), timeout=10, wait_for_ready=True)
            await wait_until(lambda: ready_count(channel) == 2, message="both endpoints READY")
            names = {first.server}
            for _ in range(10):
                names.add((await stub.Unary(EchoRequest(message="x"), timeout=10)).server)
            await channel.close()
            return names

        assert asyncio.run(main()) == {"a", "b"}
        assert channel.get_state() is SHUTDOWN


def test_aio_channel_serves_the_loop_of_its_first_use_and_says_so() -> None:
    with pytest.raises(LookupError, match="no resolver for scheme 'nope'"):
        balancers.aio.insecure_channel("nope:///x:1")  # checked at once, loop or not
    channel = balancers.aio.insecure_channel(static(NOWHERE))
    unary = channel.unary_unary(METHOD)
    with pytest.raises(RuntimeError, match="use them from async code"):
        unary(b"")

    async def bind() -> None:
        channel.get_state(try_to_connect=True)
        assert channel.core.started

    async def call_from_another_loop() -> None:
        await unary(b"", timeout=5)

    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(bind())
        with pytest.raises(RuntimeError, match="bound to the event loop of its first use"):
            asyncio.run(call_from_another_loop())
        first.run_until_complete(channel.close())
    finally:
        first.close()


def test_aio_channel_never_used_closes_cleanly() -> None:
    channel = balancers.aio.insecure_channel(static(NOWHERE))

    async def close_then_call() -> Exception:
        await channel.close()
        return await aio_call_error(channel, "unary_unary")

    same_error(asyncio.run(close_then_call()), grpc.aio.UsageError("Channel is closed."))
    assert not channel.core.started
