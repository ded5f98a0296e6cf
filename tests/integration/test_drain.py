"""Graceful drain of a real server process under load: SIGTERM -> NOT_SERVING (seen by a
watcher) -> drain delay -> stop(grace) with every accepted call completing OK; a second SIGTERM
stops at once. Plus the method-call path of the sync helper, in process."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from health import DrainConfig, GracefulDrain, HealthService, HealthVerdict, aio
from tests.support.echo import EchoRequest, EchoStub

ROOT = Path(__file__).resolve().parents[2]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
CANCELLED = grpc.StatusCode.CANCELLED


async def until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    port: int
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        line = next(x for x in self.lines if x.startswith("STATS "))
        return dict(json.loads(line.removeprefix("STATS ")))


@pytest.fixture
async def spawn() -> AsyncIterator[Callable[..., Any]]:
    procs: list[Proc] = []

    async def start(*args: str) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.drain_server",
            *args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert first.startswith(b"PORT "), first
        p = Proc(proc, int(first.split()[1]))

        async def read() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                p.lines.append(raw.decode().strip())

        p.reader = asyncio.create_task(read())
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()
        if p.reader is not None:
            await asyncio.wait_for(p.reader, 10)


class Watcher:
    """Records when the server's health first went NOT_SERVING."""

    def __init__(self) -> None:
        self.verdict = HealthVerdict.PENDING
        self.not_serving_at: float | None = None

    def __call__(self, verdict: HealthVerdict, reason: str) -> None:
        self.verdict = verdict
        if self.not_serving_at is None and "NOT_SERVING" in reason:
            self.not_serving_at = time.monotonic()


class Load:
    """``workers`` clients calling Unary back to back, each until its first error or
    ``budget`` calls. Worker i's calls take ``delay * (1 + i / 7)`` s on the server: uneven,
    so that the calls do not end in lockstep and leave the server idle at some instants."""

    def __init__(
        self,
        stub: Any,
        workers: int,
        delay: float,
        budget: int = 500,
        keep_going: Callable[[], bool] = lambda: True,
    ) -> None:
        self.stub, self.budget, self.keep_going = stub, budget, keep_going
        self.codes: collections.Counter[grpc.StatusCode] = collections.Counter()
        self.first_error_at: float | None = None
        self.tasks = [
            asyncio.create_task(self._worker(delay * (1 + i / 7))) for i in range(workers)
        ]

    async def _worker(self, delay: float) -> None:
        for _ in range(self.budget):
            if not self.keep_going():
                return
            try:
                await self.stub.Unary(EchoRequest(message="x", delay_s=delay), timeout=30)
            except grpc.aio.AioRpcError as err:
                self.codes[err.code()] += 1
                if self.first_error_at is None:
                    self.first_error_at = time.monotonic()
                return
            self.codes[grpc.StatusCode.OK] += 1

    async def join(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.gather(*self.tasks), timeout)


@pytest.mark.parametrize("mode", ["aio", "sync"])
async def test_sigterm_drains_under_load(spawn: Callable[..., Any], mode: str) -> None:
    drain_delay, grace = 1.0, 8.0
    server = await spawn(
        *(["--sync"] if mode == "sync" else []),
        "--drain-delay",
        str(drain_delay),
        "--grace",
        str(grace),
    )
    watcher = Watcher()
    async with (
        grpc.aio.insecure_channel(server.address) as health_channel,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        watch = asyncio.create_task(
            aio.watch_health(health_channel, "meshkit.test.Echo", watcher, initial_backoff=0.1)
        )
        await until(lambda: watcher.verdict is HealthVerdict.HEALTHY)
        load = Load(EchoStub(channel), workers=8, delay=0.2)
        await until(lambda: load.codes[grpc.StatusCode.OK] >= 16)  # under load

        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(server.proc.wait(), drain_delay + grace + 20)
        exited = time.monotonic() - sent
        await load.join(30)
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch
    assert server.reader is not None
    await asyncio.wait_for(server.reader, 10)

    assert rc == 0, server.lines
    # Within the budget; generous slack for a loaded machine, well under the full grace.
    assert exited < drain_delay + grace, exited
    events = [line for line in server.lines if line.startswith("EVENT")]
    assert events == ["EVENT draining", "EVENT stopping", "EVENT stopped"]
    # Calls were in flight when the stop began (so "they completed" below means something).
    active = next(line for line in server.lines if line.startswith("ACTIVE "))
    assert int(active.split()[1]) > 0, server.lines
    # Health went NOT_SERVING, seen by the watcher, before any call failed.
    assert watcher.not_serving_at is not None
    assert load.first_error_at is not None
    assert watcher.not_serving_at < load.first_error_at
    # Every call the server's handlers started completed OK: none cancelled, none lost.
    stats = server.stats()
    assert stats["cancelled"] == 0, stats
    assert stats["started"] == load.codes[grpc.StatusCode.OK], (stats, load.codes)
    # These clients ignore health, so calls sent after the stop fail: UNAVAILABLE (refused).
    # A call that reached the transport just as the stop began, before any handler took it,
    # is failed by grpc-core with CANCELLED ("Server Shutdown" kills unmatched calls): it
    # never ran (checked above), but it is not UNAVAILABLE. Health-aware clients never send
    # such calls (next test).
    assert set(load.codes) <= {grpc.StatusCode.OK, UNAVAILABLE, CANCELLED}, load.codes
    assert load.codes[UNAVAILABLE] + load.codes[CANCELLED] >= 1


@pytest.mark.parametrize("mode", ["aio", "sync"])
async def test_health_aware_clients_see_no_error(spawn: Callable[..., Any], mode: str) -> None:
    """Clients that stop sending once the server says NOT_SERVING (what meshkit's balancers
    do) lose nothing: the drain delay covers them, and every call completes OK."""
    server = await spawn(
        *(["--sync"] if mode == "sync" else []), "--drain-delay", "1", "--grace", "8"
    )
    watcher = Watcher()
    async with (
        grpc.aio.insecure_channel(server.address) as health_channel,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        watch = asyncio.create_task(
            aio.watch_health(health_channel, "meshkit.test.Echo", watcher, initial_backoff=0.1)
        )
        await until(lambda: watcher.verdict is HealthVerdict.HEALTHY)
        load = Load(
            EchoStub(channel),
            workers=8,
            delay=0.2,
            keep_going=lambda: watcher.verdict is HealthVerdict.HEALTHY,
        )
        await until(lambda: load.codes[grpc.StatusCode.OK] >= 16)
        server.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(server.proc.wait(), 30)
        await load.join(30)
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch
    assert server.reader is not None
    await asyncio.wait_for(server.reader, 10)
    assert rc == 0, server.lines
    assert set(load.codes) == {grpc.StatusCode.OK}, load.codes
    assert server.stats() == {"started": load.codes[grpc.StatusCode.OK], "cancelled": 0}


@pytest.mark.parametrize("mode", ["aio", "sync"])
async def test_second_sigterm_stops_at_once(spawn: Callable[..., Any], mode: str) -> None:
    server = await spawn(
        *(["--sync"] if mode == "sync" else []), "--drain-delay", "30", "--grace", "30"
    )
    watcher = Watcher()
    async with (
        grpc.aio.insecure_channel(server.address) as health_channel,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        watch = asyncio.create_task(
            aio.watch_health(health_channel, "", watcher, initial_backoff=0.1)
        )
        await until(lambda: watcher.verdict is HealthVerdict.HEALTHY)
        load = Load(EchoStub(channel), workers=3, delay=25.0, budget=1)
        server.proc.send_signal(signal.SIGTERM)
        # The first signal was handled once health is NOT_SERVING; only then the second,
        # so the two are not merged into one pending signal.
        await until(lambda: watcher.not_serving_at is not None)
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(server.proc.wait(), 20)
        exited = time.monotonic() - sent
        await load.join(20)  # the long calls ended (cancelled), they do not hang
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch
    assert rc == 3, server.lines
    assert exited < 10, exited
    assert "EVENT forced" in server.lines


def test_sync_drain_by_method_call() -> None:
    """The sync helper without signals: in-flight calls finish, Watch streams end, stop is
    quick."""
    entered, release = threading.Event(), threading.Event()

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        entered.set()
        release.wait(20)
        return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    health = HealthService()
    health.add_to_server(server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "t.T", {"Slow": grpc.unary_unary_rpc_method_handler(slow)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    events: list[str] = []
    drain = GracefulDrain(
        server, health, DrainConfig(drain_delay=0.2, grace=20), on_event=events.append
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        stream = iter(watch)
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        in_flight = channel.unary_unary("/t.T/Slow").future(b"payload", timeout=30)
        assert entered.wait(10)
        drain.request()
        assert next(stream).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not drain.wait(0)  # the in-flight call holds the stop
        release.set()
        assert drain.wait(20)
        assert in_flight.result(timeout=10) == b"payload"
        assert [r.status for r in stream] in ([], [health_pb2.HealthCheckResponse.NOT_SERVING])
    assert events == ["draining", "stopping", "stopped"]
    assert not drain.forced


class _Stops:
    """Stands for a server: records when and how the drain stopped it."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float | None]] = []

    async def stop(self, grace: float | None) -> None:
        self.calls.append((time.monotonic(), grace))


async def test_aio_delay_done_ends_the_drain_delay_early() -> None:
    """``delay_done`` returning first ends the delay then (the sidecar: its app is gone)."""
    server, gone = _Stops(), asyncio.Event()
    drain = aio.GracefulDrain(
        server,
        config=DrainConfig(drain_delay=30, grace=5),
        delay_done=gone.wait,
    )
    drain.request()
    assert server.calls == []
    set_at = time.monotonic()
    gone.set()
    await asyncio.wait_for(drain.wait(), 5)
    ((stopped_at, grace),) = server.calls
    assert grace == 5 and stopped_at - set_at < 1.0
    assert not drain.forced


async def test_aio_failing_delay_done_waits_the_whole_delay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> None:
        raise RuntimeError("cannot tell")

    server = _Stops()
    drain = aio.GracefulDrain(
        server,
        config=DrainConfig(drain_delay=0.3, grace=5),
        delay_done=broken,
    )
    started = time.monotonic()
    await asyncio.wait_for(drain.drain(), 5)
    ((stopped_at, grace),) = server.calls
    assert stopped_at - started >= 0.3 and grace == 5
    assert "delay_done failed: RuntimeError('cannot tell')" in caplog.text
