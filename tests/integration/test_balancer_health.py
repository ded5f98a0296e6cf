"""Endpoint health in the balanced channels: active checks (gRFC A17) and outlier ejection."""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2

import balancers
import balancers.aio
from health import OutlierConfig
from tests.support.echo import EchoRequest, EchoServer, EchoStub, start_echo_server
from tests.support.waiting import wait_until, wait_until_sync

READY = grpc.ChannelConnectivity.READY

pytestmark = pytest.mark.timeout(60)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Load:
    """Calls in a loop in the background; counts per backend, keeps every failure."""

    stub: EchoStub
    ok: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[grpc.StatusCode] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while not self.stop.is_set():
            try:
                reply = await self.stub.Unary(EchoRequest(message="x"), timeout=5)
            except grpc.aio.AioRpcError as error:
                self.failures.append(error.code())
            else:
                self.ok[reply.server] += 1
            await asyncio.sleep(0.002)  # pacing of the load, not ordering of the test

    def start(self) -> Load:
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def finish(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task


@pytest.fixture
async def trio() -> AsyncIterator[list[EchoServer]]:
    servers = [await start_echo_server(n, health=True) for n in ("a", "b", "c")]
    yield servers
    for s in servers:
        await s.stop(None)


def target(servers: list[EchoServer]) -> str:
    return "static:///" + ",".join(s.address for s in servers)


def by_name(channel: balancers.aio.BalancedChannel, servers: list[EchoServer]) -> dict[str, object]:
    port_to_name = {s.port: s.servicer.name for s in servers}
    return {port_to_name[sc.address.port]: sc for sc in channel.core.subchannels}


async def set_health(server: EchoServer, status: int) -> None:
    await server.extra["health"].set("", status)  # type: ignore[attr-defined]


async def test_not_serving_backend_leaves_rotation_without_failed_calls(
    trio: list[EchoServer],
) -> None:
    b = trio[1]
    async with balancers.aio.insecure_channel(target(trio), health_check_service="") as channel:
        await wait_until(
            lambda: sum(sc.state.connectivity is READY for sc in channel.core.subchannels) == 3
        )
        load = Load(EchoStub(channel)).start()
        await wait_until(lambda: all(load.ok[n] > 0 for n in "abc"))
        await set_health(b, NOT_SERVING)
        # Within 1 s of the flip, b is out of rotation...
        await wait_until(
            lambda: (
                by_name(channel, trio)["b"].state.connectivity  # type: ignore[attr-defined]
                is not READY
            ),
            timeout=1.0,
            message="b out of rotation within 1 s",
        )
        # (calls already sent to b before the verdict arrived may still land: take the count
        # once it is out, then require it not to move while many more calls go to a and c)
        frozen = b.servicer.calls["Unary"]
        total = sum(load.ok.values())
        await wait_until(lambda: sum(load.ok.values()) >= total + 150, timeout=20)
        assert b.servicer.calls["Unary"] == frozen
        await set_health(b, SERVING)
        await wait_until(
            lambda: load.ok["b"] > 0 and b.servicer.calls["Unary"] > frozen,
            timeout=5,
            message="b back in rotation",
        )
        await load.finish()
        assert load.failures == []


async def test_backend_without_health_service_still_gets_traffic() -> None:
    plain = await start_echo_server("plain", health=False)
    checked = await start_echo_server("checked", health=True)
    try:
        async with balancers.aio.insecure_channel(
            target([plain, checked]), health_check_service=""
        ) as channel:
            await wait_until(
                lambda: sum(sc.state.connectivity is READY for sc in channel.core.subchannels) == 2
            )
            stub = EchoStub(channel)
            names = collections.Counter(
                [(await stub.Unary(EchoRequest(message="x"), timeout=5)).server for _ in range(20)]
            )
            assert names["plain"] == 10 and names["checked"] == 10
            assert {sc.health for sc in channel.core.subchannels} == {"disabled", "healthy"}
    finally:
        await plain.stop(None)
        await checked.stop(None)


async def test_unknown_service_name_is_unhealthy(trio: list[EchoServer]) -> None:
    async with balancers.aio.insecure_channel(
        target(trio), health_check_service="no.such.Service"
    ) as channel:
        await wait_until(lambda: all(sc.health == "unhealthy" for sc in channel.core.subchannels))
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await EchoStub(channel).Unary(EchoRequest(message="x"), timeout=5)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "unhealthy" in (failed.value.details() or "")


async def test_failing_backend_is_ejected_then_readmitted(trio: list[EchoServer]) -> None:
    b = trio[1]
    b.servicer.fail_with = grpc.StatusCode.UNAVAILABLE
    outliers = OutlierConfig(
        consecutive_failures=3,
        base_ejection_time=1.0,
        max_ejection_time=10.0,
        max_ejection_percent=50,
    )
    async with balancers.aio.insecure_channel(target(trio), outlier_detection=outliers) as channel:
        await wait_until(
            lambda: sum(sc.state.connectivity is READY for sc in channel.core.subchannels) == 3
        )
        sc_b = by_name(channel, trio)["b"]
        load = Load(EchoStub(channel)).start()
        await wait_until(lambda: sc_b.ejected, timeout=10, message="b ejected")  # type: ignore[attr-defined]
        failed_before = len(load.failures)
        assert failed_before >= 3
        served_by_b = b.servicer.calls["Unary"]
        ok_before = sum(load.ok.values())
        # While ejected (1 s), nothing goes to b and nothing fails.
        await wait_until(lambda: sum(load.ok.values()) >= ok_before + 50, timeout=10)
        if sc_b.ejected:  # type: ignore[attr-defined]
            assert b.servicer.calls["Unary"] == served_by_b
        # Back after base_ejection_time: b gets calls again (and, still sick, is ejected again).
        b.servicer.fail_with = None
        await wait_until(lambda: not sc_b.ejected, timeout=5, message="b readmitted")  # type: ignore[attr-defined]
        await wait_until(lambda: load.ok["b"] > 0, timeout=5, message="b serves again")
        await load.finish()
        assert set(load.failures) == {grpc.StatusCode.UNAVAILABLE}


async def test_max_ejection_percent_keeps_one_of_two() -> None:
    servers = [await start_echo_server(n) for n in ("x", "y")]
    for s in servers:
        s.servicer.fail_with = grpc.StatusCode.UNAVAILABLE
    outliers = OutlierConfig(
        consecutive_failures=2, base_ejection_time=30.0, max_ejection_percent=50
    )
    try:
        async with balancers.aio.insecure_channel(
            target(servers), outlier_detection=outliers
        ) as channel:
            await wait_until(
                lambda: sum(sc.state.connectivity is READY for sc in channel.core.subchannels) == 2
            )
            stub = EchoStub(channel)
            for _ in range(40):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Unary(EchoRequest(message="x"), timeout=5)
            ejected = [sc for sc in channel.core.subchannels if sc.ejected]
            assert len(ejected) == 1
            # The one left keeps taking calls (they fail with the backend's own status).
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Unary(EchoRequest(message="x"), timeout=5)
            assert "failing on purpose" in (failed.value.details() or "")
    finally:
        for s in servers:
            await s.stop(None)


async def test_sync_channel_follows_health_flips(trio: list[EchoServer]) -> None:
    b = trio[1]
    flipped = threading.Event()
    restored = threading.Event()

    def client() -> collections.Counter[str]:
        with balancers.insecure_channel(target(trio), health_check_service="") as channel:
            wait_until_sync(
                lambda: sum(sc.state.connectivity is READY for sc in channel.core.subchannels) == 3
            )
            stub = EchoStub(channel)
            ask_flip.set()
            assert flipped.wait(10)
            port_b = b.port
            wait_until_sync(
                lambda: all(
                    sc.state.connectivity is not READY
                    for sc in channel.core.subchannels
                    if sc.address.port == port_b
                ),
                timeout=1.0,
            )
            after = collections.Counter(
                stub.Unary(EchoRequest(message="x"), timeout=5).server for _ in range(60)
            )
            ask_restore.set()
            assert restored.wait(10)
            wait_until_sync(
                lambda: sum(sc.state.connectivity is READY for sc in channel.core.subchannels) == 3
            )
            return after

    ask_flip, ask_restore = threading.Event(), threading.Event()
    future = asyncio.get_running_loop().run_in_executor(None, client)
    await wait_until(ask_flip.is_set, timeout=15)
    await set_health(b, NOT_SERVING)
    flipped.set()
    await wait_until(ask_restore.is_set, timeout=20)
    await set_health(b, SERVING)
    restored.set()
    after = await future
    assert after["b"] == 0 and after["a"] + after["c"] == 60
