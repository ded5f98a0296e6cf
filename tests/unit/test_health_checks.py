"""Periodic checks driving statuses, without sockets (the service is not on a server)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from health import CheckRunner, HealthService, ServiceCheck, ServingStatus, aio

SERVING, NOT_SERVING = ServingStatus.SERVING, ServingStatus.NOT_SERVING


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class Flag:
    def __init__(self, value: object = True) -> None:
        self.value = value
        self.calls = 0

    async def async_check(self) -> object:
        self.calls += 1
        return self.value

    def sync_check(self) -> object:
        self.calls += 1
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


async def test_check_once_sets_statuses_from_results() -> None:
    health = aio.HealthService()
    good, bad = Flag(True), Flag(0)
    runner = CheckRunner(
        health,
        [ServiceCheck("db", good.async_check), ServiceCheck("cache", bad.sync_check)],
    )
    assert await runner.check_once() == {"db": True, "cache": False}
    assert health.statuses() == {"": SERVING, "db": SERVING, "cache": NOT_SERVING}
    assert runner.results()["cache"][0].reason == "returned 0"


async def test_exceptions_and_timeouts_fail() -> None:
    health = aio.HealthService()
    release = threading.Event()

    async def slow() -> bool:
        await asyncio.sleep(30)
        return True

    def raises() -> bool:
        raise RuntimeError("db down")

    def blocks() -> bool:
        release.wait(30)
        return True

    runner = CheckRunner(
        health,
        [
            ServiceCheck("slow", slow, timeout=0.05),
            ServiceCheck("raises", raises),
            ServiceCheck("blocks", blocks, timeout=0.05),
        ],
    )
    try:
        assert await runner.check_once() == {"slow": False, "raises": False, "blocks": False}
        results = runner.results()
        assert "timed out" in results["slow"][0].reason
        assert "RuntimeError: db down" in results["raises"][0].reason
        # The blocked thread is still running: no second one is started.
        await runner.check_once()
        assert runner.results()["blocks"][0].reason == "previous run still running"
    finally:
        release.set()


async def test_all_checks_of_a_service_must_pass() -> None:
    health = aio.HealthService()
    a, b = Flag(True), Flag(True)
    runner = CheckRunner(
        health, [ServiceCheck("svc", a.async_check), ServiceCheck("svc", b.sync_check)]
    )
    await runner.check_once()
    assert health.statuses()["svc"] is SERVING
    b.value = False
    await runner.check_once()
    assert health.statuses()["svc"] is NOT_SERVING


async def test_runner_task_flips_status_and_stops_cleanly() -> None:
    health = aio.HealthService()
    flag = Flag(True)
    async with CheckRunner(health, [ServiceCheck("", flag.async_check, ttl=0.02)]) as runner:
        assert runner.running
        await until(lambda: flag.calls >= 1)
        assert health.statuses()[""] is SERVING
        flag.value = False
        await until(lambda: health.statuses()[""] is NOT_SERVING)
        flag.value = True
        await until(lambda: health.statuses()[""] is SERVING)
    assert not runner.running
    calls = flag.calls
    await asyncio.sleep(0.1)  # proves nothing runs after stop, not used for ordering
    assert flag.calls == calls
    await runner.stop()  # idempotent


async def test_cancellation_propagates_through_a_running_check() -> None:
    health = aio.HealthService()
    entered = asyncio.Event()

    async def hangs() -> bool:
        entered.set()
        await asyncio.sleep(30)
        return True

    runner = CheckRunner(health, [ServiceCheck("x", hangs, timeout=60)])
    task = asyncio.create_task(runner.check_once())
    await asyncio.wait_for(entered.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "x" not in health.statuses()


async def test_sync_health_service_works_too() -> None:
    health = HealthService()
    flag = Flag(False)
    runner = CheckRunner(health, [ServiceCheck("svc", flag.sync_check)])
    await runner.check_once()
    assert health.statuses()["svc"] is NOT_SERVING


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"ttl": 0}, "ttl"), ({"timeout": -1}, "timeout"), ({"func": 3}, "func")],
)
def test_service_check_validation(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"service": "", "func": lambda: True, **kwargs}
    with pytest.raises(ValueError, match=field):
        ServiceCheck(**args)  # type: ignore[arg-type]


def test_runner_needs_checks() -> None:
    with pytest.raises(ValueError):
        CheckRunner(HealthService(), [])
