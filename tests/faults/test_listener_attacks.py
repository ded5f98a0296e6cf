"""Slow clients and garbage bytes on every listener (outbound, inbound, admin) of the sidecar,
on each data plane, while good calls and probes go on: they all succeed, the process lives."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import grpc
import pytest

from tests.faults.conftest import Figures, Sidecars, outbound_config, static
from tests.support.echo import EchoServer, EchoStub
from tests.support.load import steady_load

pytestmark = pytest.mark.timeout(90)

#: Attacking connections of each kind on each listener.
PER_KIND = 50
#: How long the attack lasts while the good calls go on (a byte a second: 3 bytes each).
ATTACK_SECONDS = 3
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SLOW_REQUEST = b"GET /live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 64


async def _dribble(host: str, port: int, stop: asyncio.Event) -> None:
    """A byte a second of a request that never ends."""
    _, writer = await asyncio.open_connection(host, port)
    try:
        for byte in SLOW_REQUEST:
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if stop.is_set():
                return
    finally:
        writer.close()


async def _garbage(host: str, port: int, stop: asyncio.Event, preface: bool, seed: int) -> None:
    """Random bytes (after the HTTP/2 client preface when ``preface``), repeatedly."""
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            return
        try:
            writer.write((PREFACE if preface else b"") + rng.randbytes(rng.randint(1, 4096)))
            await writer.drain()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(65536), 0.5)
        except OSError:
            pass
        finally:
            writer.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def _split(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host.strip("[]"), int(port)


async def _attack(addresses: list[str], stop: asyncio.Event) -> list[asyncio.Task[Any]]:
    tasks = []
    for address in addresses:
        host, port = _split(address)
        for i in range(PER_KIND):
            tasks.append(asyncio.create_task(_dribble(host, port, stop)))
            tasks.append(asyncio.create_task(_garbage(host, port, stop, False, i)))
            tasks.append(asyncio.create_task(_garbage(host, port, stop, True, i)))
    return tasks


async def test_slow_and_garbage_clients_on_every_listener(
    sidecars: Sidecars, echo: EchoServer, figures: Figures
) -> None:
    config = {
        **outbound_config(static(echo)),
        "inbound": {"listen": "127.0.0.1:0", "app": echo.address},
    }
    sidecar = await sidecars.start(config)
    stop = asyncio.Event()
    probes: list[int] = []
    async with (
        grpc.aio.insecure_channel(sidecar.outbound) as out_channel,
        grpc.aio.insecure_channel(sidecar.inbound) as in_channel,
        steady_load(EchoStub(out_channel), callers=2, interval=0.05) as outbound,
        steady_load(EchoStub(in_channel), callers=2, interval=0.05) as inbound,
    ):
        attackers = await _attack(
            [sidecar.outbound, sidecar.inbound, sidecar.addresses["admin"]], stop
        )
        loop = asyncio.get_running_loop()
        end = loop.time() + ATTACK_SECONDS
        while loop.time() < end:
            probes.append((await sidecar.get("/live"))[0])
            probes.append((await sidecar.get("/ready"))[0])
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
        stop.set()
        results = await asyncio.gather(*attackers, return_exceptions=True)
    refused = sum(isinstance(r, OSError) for r in results)
    figures.record(
        attackers=len(attackers),
        attackers_refused=refused,
        outbound_calls=outbound.result.calls,
        outbound_failed=outbound.result.failed,
        inbound_calls=inbound.result.calls,
        inbound_failed=inbound.result.failed,
        probes=len(probes),
        probes_not_200=sum(p != 200 for p in probes),
    )
    assert outbound.result.failed == 0, outbound.result.failure_summary()
    assert inbound.result.failed == 0, inbound.result.failure_summary()
    assert outbound.result.calls > 20 and inbound.result.calls > 20
    assert probes and all(p == 200 for p in probes), probes
    assert sidecar.process.poll() is None, sidecar.log
