"""Health/Watch clients (gRFC A17) against real loopback servers, aio and sync."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from health import HealthService, HealthVerdict, aio, watch_health
from tests.support.echo import start_echo_server

HEALTHY, UNHEALTHY = HealthVerdict.HEALTHY, HealthVerdict.UNHEALTHY
DISABLED = HealthVerdict.DISABLED
FAST: dict[str, Any] = {"initial_backoff": 0.05, "max_backoff": 0.2}


async def until(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def until_sync(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


class Recorder:
    """Collects (verdict, reason) from a watcher; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.changes: list[tuple[HealthVerdict, str]] = []

    def __call__(self, verdict: HealthVerdict, reason: str) -> None:
        with self._lock:
            self.changes.append((verdict, reason))

    @property
    def verdicts(self) -> list[HealthVerdict]:
        with self._lock:
            return [v for v, _ in self.changes]

    @property
    def last(self) -> HealthVerdict | None:
        v = self.verdicts
        return v[-1] if v else None


class AttemptCounter(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Counts Watch streams the client opens."""

    def __init__(self) -> None:
        self.count = 0

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        self.count += 1
        return await continuation(details, request)


@pytest.fixture
async def served() -> AsyncIterator[tuple[aio.HealthService, str, grpc.aio.Server]]:
    server = grpc.aio.server()
    health = aio.HealthService()
    health.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield health, f"127.0.0.1:{port}", server
    finally:
        await server.stop(None)


async def stop_task(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_aio_watch_follows_status_flips(
    served: tuple[aio.HealthService, str, Any],
) -> None:
    health, address, _ = served
    rec = Recorder()
    async with grpc.aio.insecure_channel(address) as channel:
        task = asyncio.create_task(aio.watch_health(channel, "", rec, **FAST))
        await until(lambda: rec.last is HEALTHY)
        await health.set("", False)
        await until(lambda: rec.last is UNHEALTHY)
        assert "NOT_SERVING" in rec.changes[-1][1]
        await health.set("", True)
        await until(lambda: rec.last is HEALTHY)
        await stop_task(task)
    assert rec.verdicts == [HEALTHY, UNHEALTHY, HEALTHY]


async def test_aio_watch_unknown_service_then_known(
    served: tuple[aio.HealthService, str, Any],
) -> None:
    health, address, _ = served
    rec = Recorder()
    async with grpc.aio.insecure_channel(address) as channel:
        task = asyncio.create_task(aio.watch_health(channel, "echo.Echo", rec, **FAST))
        await until(lambda: rec.last is UNHEALTHY)
        assert "SERVICE_UNKNOWN" in rec.changes[-1][1]
        await health.set("echo.Echo", True)
        await until(lambda: rec.last is HEALTHY)
        await stop_task(task)


async def test_aio_watch_disabled_without_health_service(
    caplog: pytest.LogCaptureFixture,
) -> None:
    echo = await start_echo_server("plain", health=False)
    rec = Recorder()
    try:
        async with grpc.aio.insecure_channel(echo.address) as channel:
            with caplog.at_level("INFO", logger="health.watch"):
                await asyncio.wait_for(
                    aio.watch_health(channel, "", rec, label=echo.address, **FAST), 15
                )
    finally:
        await echo.stop(None)
    assert rec.verdicts == [DISABLED]
    logged = [r for r in caplog.records if "disabled" in r.getMessage()]
    assert len(logged) == 1 and echo.address in logged[0].getMessage()


async def test_aio_killed_server_is_unhealthy_and_retried(
    served: tuple[aio.HealthService, str, grpc.aio.Server],
) -> None:
    _, address, server = served
    rec = Recorder()
    counter = AttemptCounter()
    async with grpc.aio.insecure_channel(address, interceptors=[counter]) as channel:
        task = asyncio.create_task(aio.watch_health(channel, "", rec, **FAST))
        await until(lambda: rec.last is HEALTHY)
        await server.stop(None)
        await until(lambda: rec.last is UNHEALTHY)
        assert "health-check stream" in rec.changes[-1][1]
        seen = counter.count
        await until(lambda: counter.count >= seen + 3)  # it keeps trying, backing off
        assert not task.done()
        await stop_task(task)
    assert rec.verdicts == [HEALTHY, UNHEALTHY]


class FlakyHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Fails the first ``failures`` Watch streams without answering, or answers once and
    closes the first one (``close_after_answer``); later streams answer SERVING and stay."""

    def __init__(self, failures: int = 0, close_after_answer: bool = False) -> None:
        self.failures = failures
        self.close_after_answer = close_after_answer
        self.attempts: list[float] = []

    async def Watch(self, request, context):  # type: ignore[no-untyped-def]
        self.attempts.append(time.monotonic())
        n = len(self.attempts)
        if n <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        ok = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        await context.write(ok)
        if self.close_after_answer and n == 1:
            return
        await asyncio.Event().wait()  # hold the stream open until the client leaves


async def _flaky_server(servicer: FlakyHealth) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_aio_broken_streams_back_off_exponentially() -> None:
    servicer = FlakyHealth(failures=3)
    server, address = await _flaky_server(servicer)
    rec = Recorder()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            task = asyncio.create_task(
                aio.watch_health(
                    channel, "", rec, initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0
                )
            )
            await until(lambda: rec.last is HEALTHY)
            await stop_task(task)
    finally:
        await server.stop(None)
    assert rec.verdicts == [UNHEALTHY, HEALTHY]
    assert "UNAVAILABLE: warming up" in rec.changes[0][1]
    gaps = [b - a for a, b in zip(servicer.attempts, servicer.attempts[1:], strict=False)]
    assert len(gaps) == 3
    # Lower bounds only: a loaded machine may be slower, never faster.
    for gap, backoff in zip(gaps, [0.1, 0.2, 0.4], strict=True):
        assert gap >= backoff * 0.9, gaps


async def test_aio_stream_closed_after_an_answer_is_reopened_at_once() -> None:
    servicer = FlakyHealth(close_after_answer=True)
    server, address = await _flaky_server(servicer)
    rec = Recorder()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            # A huge backoff: only the A17 "answered, so no backoff" rule can reopen in time.
            task = asyncio.create_task(
                aio.watch_health(channel, "", rec, initial_backoff=60, max_backoff=120)
            )
            await until(lambda: len(servicer.attempts) == 2 and rec.last is HEALTHY)
            await stop_task(task)
    finally:
        await server.stop(None)
    assert rec.verdicts == [HEALTHY, UNHEALTHY, HEALTHY]
    assert rec.changes[1][1] == "health-check stream closed by the server"


# --- the sync twin ------------------------------------------------------------------------


@pytest.fixture
def sync_served() -> Any:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health = HealthService()
    health.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield health, f"127.0.0.1:{port}", server
    finally:
        server.stop(None).wait(10)


def _start_blocking(
    channel: grpc.Channel, service: str, rec: Recorder
) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(
        target=watch_health, args=(channel, service, rec, stop), kwargs=FAST, daemon=True
    )
    thread.start()
    return thread, stop


def test_blocking_watch_follows_flips_and_stops_promptly(
    sync_served: tuple[HealthService, str, Any],
) -> None:
    health, address, _ = sync_served
    rec = Recorder()
    with grpc.insecure_channel(address) as channel:
        thread, stop = _start_blocking(channel, "svc", rec)
        until_sync(lambda: rec.last is UNHEALTHY)  # SERVICE_UNKNOWN
        health.set("svc", True)
        until_sync(lambda: rec.last is HEALTHY)
        health.set("svc", False)
        until_sync(lambda: rec.last is UNHEALTHY)
        health.set("svc", True)
        until_sync(lambda: rec.last is HEALTHY)
        # The stream is open and idle: stop must cancel it, not wait for a message.
        started = time.monotonic()
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert time.monotonic() - started < 5
    assert rec.verdicts == [UNHEALTHY, HEALTHY, UNHEALTHY, HEALTHY]


def test_blocking_watch_server_killed(
    sync_served: tuple[HealthService, str, grpc.Server],
) -> None:
    _, address, server = sync_served
    rec = Recorder()
    with grpc.insecure_channel(address) as channel:
        thread, stop = _start_blocking(channel, "", rec)
        until_sync(lambda: rec.last is HEALTHY)
        server.stop(None).wait(10)
        until_sync(lambda: rec.last is UNHEALTHY)
        assert "health-check stream" in rec.changes[-1][1]
        assert thread.is_alive()  # still retrying
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()


async def test_blocking_watch_disabled_and_aio_status_flips() -> None:
    # The sync client against aio servers: one with health, one without.
    plain = await start_echo_server("plain", health=False)
    server = grpc.aio.server()
    health = aio.HealthService()
    health.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        rec_plain, rec = Recorder(), Recorder()
        with (
            grpc.insecure_channel(plain.address) as ch_plain,
            grpc.insecure_channel(f"127.0.0.1:{port}") as ch,
        ):
            t_plain, stop_plain = _start_blocking(ch_plain, "", rec_plain)
            t, stop = _start_blocking(ch, "", rec)
            await until(lambda: rec.last is HEALTHY and not t_plain.is_alive())
            assert rec_plain.verdicts == [DISABLED]
            await health.set("", False)
            await until(lambda: rec.last is UNHEALTHY)
            stop.set()
            stop_plain.set()
            await until(lambda: not t.is_alive())
    finally:
        await server.stop(None)
        await plain.stop(None)
