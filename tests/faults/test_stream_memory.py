"""1,000 concurrent streams through the sidecar, three rounds, on each data plane: memory
after is at most 1.2x memory before (measured after a warm-up round), Envoy's included."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.faults.conftest import Figures, Sidecars, outbound_config, static
from tests.support.echo import EchoRequest, EchoServer, EchoStub
from tests.support.procmem import children, rss_bytes

pytestmark = pytest.mark.timeout(120)

STREAMS = 1000
ROUNDS = 3
GROWTH = 1.2


async def _round(stub: EchoStub) -> int:
    """STREAMS server-streaming calls at once (each held open a moment by the app)."""

    async def one(i: int) -> int:
        call = stub.ServerStream(EchoRequest(message=str(i), delay_s=0.1, count=2), timeout=30)
        return len([reply async for reply in call])

    replies = await asyncio.gather(*(one(i) for i in range(STREAMS)))
    return sum(replies)


def _change(before: int, after: int) -> str:
    return f"{before / 2**20:.0f}->{after / 2**20:.0f}"


async def test_thousand_concurrent_streams_hold_memory_flat(
    sidecars: Sidecars, echo: EchoServer, figures: Figures
) -> None:
    config = outbound_config(static(echo))
    config["outbound"]["max_concurrent_streams"] = 2 * STREAMS
    sidecar = await sidecars.start(config)
    pid = sidecar.process.pid

    def memory() -> dict[str, int]:
        found = {"sidecar": rss_bytes(pid)}
        for child in children(pid):
            found[f"child{child}"] = rss_bytes(child)
        return found

    async with grpc.aio.insecure_channel(sidecar.outbound) as channel:
        stub = EchoStub(channel)
        # Two warm-up rounds: the allocator's arenas and grpc's buffers reach their high-water
        # mark over the first rounds (measured: 8 rounds after these grow the Python plane's
        # RSS 1.12x, 3 rounds after one warm-up up to 1.27x): a leak keeps growing after that.
        for _ in range(2):
            assert await _round(stub) == 2 * STREAMS
        before = memory()
        for _ in range(ROUNDS):
            assert await _round(stub) == 2 * STREAMS
        after = memory()
    figures.record(
        streams=STREAMS * ROUNDS,
        **{f"{k.rstrip('0123456789')}_MB": _change(before[k], after.get(k, 0)) for k in before},
    )
    for name, rss in before.items():
        assert after.get(name, 0) <= GROWTH * rss, (name, before, after)
    assert sidecar.process.poll() is None
