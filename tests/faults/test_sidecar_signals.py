"""The sidecar's own signals under load, on each data plane: SIGTERM with calls in flight
(they complete within the grace period; new calls are refused only after ``drain_delay``), and
SIGHUP reloading a cluster's endpoints (no call fails)."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest

from tests.faults.conftest import Figures, Sidecars, outbound_config, static
from tests.support.echo import EchoRequest, EchoServer, EchoStub, start_echo_server
from tests.support.load import steady_load
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

DRAIN_DELAY = 1.0
GRACE = 5.0
#: Calls in flight when SIGTERM arrives, each taking CALL_TIME in the app.
IN_FLIGHT = 8
CALL_TIME = 1.5


async def _one_call(address: str) -> tuple[float, str]:
    """A new connection and one call: (time it ended, status code name)."""
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            await EchoStub(channel).Unary(EchoRequest(message="probe"), timeout=1.0)
        code = "OK"
    except grpc.aio.AioRpcError as error:
        code = error.code().name
    return time.monotonic(), code


async def test_sigterm_completes_calls_in_flight_and_refuses_new_ones_after_drain_delay(
    sidecars: Sidecars, echo: EchoServer, figures: Figures
) -> None:
    config = outbound_config(static(echo))
    config["drain"] = {
        "drain_delay": f"{DRAIN_DELAY}s",
        "grace_period": f"{GRACE}s",
        # outbound-only: without a bound the outbound waits for a quiet moment the steady
        # callers of this test never give; the bound is what refuses them
        "outbound_max_wait": f"{DRAIN_DELAY}s",
    }
    sidecar = await sidecars.start(config)
    async with grpc.aio.insecure_channel(sidecar.outbound) as channel:
        stub = EchoStub(channel)
        before = echo.servicer.calls["Unary"] + echo.servicer.calls["ServerStream"]
        unary = [
            asyncio.ensure_future(
                stub.Unary(EchoRequest(message=str(i), delay_s=CALL_TIME), timeout=10)
            )
            for i in range(IN_FLIGHT // 2)
        ]

        async def stream() -> list[str]:
            call = stub.ServerStream(
                EchoRequest(message="s", delay_s=CALL_TIME, count=3), timeout=10
            )
            return [reply.message async for reply in call]

        streams = [asyncio.ensure_future(stream()) for _ in range(IN_FLIGHT // 2)]
        await wait_until(
            lambda: (
                echo.servicer.calls["Unary"] + echo.servicer.calls["ServerStream"]
                >= before + IN_FLIGHT
            ),
            message="calls reached the app",
        )
        sent = time.monotonic()
        sidecar.send(signal.SIGTERM)
        probes: list[tuple[float, str]] = []
        while sidecar.process.poll() is None and time.monotonic() - sent < DRAIN_DELAY + GRACE:
            probes.append(await _one_call(sidecar.outbound))
            if probes[-1][1] != "OK":
                break
        replies = await asyncio.gather(*unary)
        streamed = await asyncio.gather(*streams)
    status = await sidecar.wait_exit(DRAIN_DELAY + GRACE + 5)
    exited = time.monotonic() - sent
    refused = [t - sent for t, code in probes if code != "OK"]
    figures.record(
        in_flight=IN_FLIGHT,
        completed=len(replies) + len(streamed),
        probes_ok=sum(code == "OK" for _, code in probes),
        first_refused_s=round(refused[0], 2) if refused else None,
        exit_s=round(exited, 2),
    )
    assert status == 0, sidecar.log
    assert all(r.message for r in replies)
    assert all(s == ["s#0", "s#1", "s#2"] for s in streamed), streamed
    # every probe made inside drain_delay succeeded; refusals came only after it
    assert refused and refused[0] >= DRAIN_DELAY, probes
    assert all(code == "OK" for t, code in probes if t - sent < DRAIN_DELAY), probes


async def test_sighup_under_load_moves_a_cluster_without_failing_a_call(
    sidecars: Sidecars, figures: Figures
) -> None:
    a, b, c = [await start_echo_server(name) for name in "abc"]
    try:
        sidecar = await sidecars.start(outbound_config(static(a, b)))
        async with grpc.aio.insecure_channel(sidecar.outbound) as channel:
            async with steady_load(EchoStub(channel), callers=4, interval=0.02) as load:
                await load.wait_server(lambda s: s == "a", 3)
                await load.wait_server(lambda s: s == "b", 3)
                sidecar.write_config({**sidecar.config, **outbound_config(static(b, c))})
                reloaded = time.monotonic()
                sidecar.send(signal.SIGHUP)
                await load.wait_server(lambda s: s == "c", 3, timeout=10)
                moved = time.monotonic() - reloaded
                to_a = load.result.servers["a"]
                await load.wait_calls(40)
            result = load.result
    finally:
        for server in (a, b, c):
            await server.stop(None)
    figures.record(**result.figures(), moved_s=round(moved, 2))
    assert result.failed == 0, result.failure_summary()
    assert result.servers["a"] == to_a, result.servers  # the removed endpoint gets nothing more
