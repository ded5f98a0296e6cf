"""Steady call load for fault tests: a few callers at a modest rate, every final status counted.

Each caller makes one unary Echo call at a time on a shared stub, then waits ``interval``
seconds (pacing, not ordering: nothing waits on it to happen first), until stopped. The
result counts every call by final status code and by the server that answered.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from tests.support.echo import EchoRequest
from tests.support.waiting import wait_until

__all__ = ["LoadResult", "SteadyLoad", "steady_load"]


@dataclass
class LoadResult:
    """What a load saw: calls by status code name, successful calls by answering server."""

    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    servers: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[tuple[float, str, str]] = field(default_factory=list)
    """``(seconds since start, code, details)`` of each failed call."""
    started: float = field(default_factory=time.monotonic)
    duration: float = 0.0

    @property
    def calls(self) -> int:
        return sum(self.codes.values())

    @property
    def failed(self) -> int:
        return self.calls - self.codes["OK"]

    def by_code(self) -> dict[str, int]:
        return dict(sorted(self.codes.items()))

    def failure_summary(self) -> dict[str, int]:
        """Failed calls counted by ``CODE: details`` (details cut to 120 characters)."""
        found = collections.Counter(
            f"{code}: {details[:120]}" for _, code, details in self.failures
        )
        return dict(found.most_common())

    def figures(self) -> dict[str, Any]:
        """The figures a fault test records about this load."""
        return {
            "calls": self.calls,
            "failed": self.failed,
            "codes": self.by_code(),
            "seconds": round(self.duration, 1),
        }


class SteadyLoad:
    """``callers`` concurrent callers on ``stub`` (an Echo stub), one call each at a time."""

    def __init__(
        self,
        stub: Any,
        *,
        callers: int = 4,
        interval: float = 0.02,
        timeout: float = 5.0,
        delay_s: float = 0.0,
    ) -> None:
        self.stub = stub
        self.callers = callers
        self.interval = interval
        self.timeout = timeout
        self.delay_s = delay_s
        self.result = LoadResult()
        self.in_flight = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.result = LoadResult()
        self._tasks = [asyncio.create_task(self._caller(i)) for i in range(self.callers)]

    async def _caller(self, index: int) -> None:
        request = EchoRequest(message=f"load{index}", delay_s=self.delay_s)
        while not self._stop.is_set():
            self.in_flight += 1
            try:
                reply = await self.stub.Unary(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as error:
                self.result.codes[error.code().name] += 1
                elapsed = time.monotonic() - self.result.started
                self.result.failures.append((elapsed, error.code().name, error.details() or ""))
            else:
                self.result.codes["OK"] += 1
                self.result.servers[str(reply.server)] += 1
            finally:
                self.in_flight -= 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def stop(self) -> LoadResult:
        """Stop after the calls in flight end; the result."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        self.result.duration = time.monotonic() - self.result.started
        return self.result

    async def wait_calls(self, more: int, timeout: float = 10.0, ok: bool = True) -> None:
        """Until ``more`` further calls ended (successful ones only when ``ok``)."""
        target = (self.result.codes["OK"] if ok else self.result.calls) + more

        def enough() -> bool:
            return (self.result.codes["OK"] if ok else self.result.calls) >= target

        await wait_until(enough, timeout=timeout, message=f"{more} more calls")

    async def wait_server(
        self, predicate: Callable[[str], bool], count: int = 3, timeout: float = 10.0
    ) -> None:
        """Until ``count`` calls were answered by servers whose name matches ``predicate``."""

        def seen() -> bool:
            return sum(n for s, n in self.result.servers.items() if predicate(s)) >= count

        await wait_until(seen, timeout=timeout, message="calls answered by the expected server")


@contextlib.asynccontextmanager
async def steady_load(stub: Any, **options: Any) -> AsyncIterator[SteadyLoad]:
    """A running :class:`SteadyLoad`; stopped on exit (``load.result`` then holds it all)."""
    load = SteadyLoad(stub, **options)
    load.start()
    try:
        yield load
    finally:
        await load.stop()
