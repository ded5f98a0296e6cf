"""Periodic health checks that drive serving statuses (in the spirit of grpclib's
``ServiceCheck(func, check_ttl, check_timeout)``).

A ``ServiceCheck`` names a service and a callable. ``CheckRunner`` runs each check every
``ttl`` seconds with a ``timeout``: a truthy result passes; a falsy one, an exception or a
timeout fails. A service is SERVING while all of its checks pass, NOT_SERVING otherwise; its
status is left alone until each of its checks has run once, and only set when it changes.

``async def`` callables run on the event loop. Anything else runs in the loop's default
executor, so a blocking probe (a database ping) does not stall the server; a thread cannot be
interrupted, so a sync check that overran its timeout keeps failing without being started again
until that run returns.

The runner owns one task per check: ``start()`` / ``stop()`` (or ``async with``) start and
cancel-and-await them; nothing is fire-and-forget and cancellation always propagates.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from health import aio
from health.service import HealthService

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceCheck:
    """Run ``func`` every ``ttl`` seconds, at most ``timeout`` seconds each, for ``service``."""

    service: str
    func: Callable[[], Any]
    ttl: float = 30.0
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if not callable(self.func):
            raise ValueError("func: must be callable")
        if not self.ttl > 0:
            raise ValueError("ttl: must be > 0")
        if not self.timeout > 0:
            raise ValueError("timeout: must be > 0")

    @property
    def is_async(self) -> bool:
        """Whether ``func`` is an ``async def`` (function or callable object)."""
        call = getattr(self.func, "__call__", None)  # noqa: B004 (callable objects too)
        return inspect.iscoroutinefunction(self.func) or inspect.iscoroutinefunction(call)


@dataclass(frozen=True)
class CheckResult:
    """One run of one check."""

    ok: bool
    reason: str = ""


class CheckRunner:
    """Runs ``checks`` periodically and sets statuses on ``health`` (sync or aio service)."""

    def __init__(
        self, health: aio.HealthService | HealthService, checks: Iterable[ServiceCheck]
    ) -> None:
        self._health = health
        self._checks = list(checks)
        if not self._checks:
            raise ValueError("checks: at least one is needed")
        self._results: dict[int, CheckResult] = {}
        self._published: dict[str, bool] = {}
        self._threads: dict[int, asyncio.Future[Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def results(self) -> dict[str, list[CheckResult]]:
        """The latest result of each check that has run, per service."""
        out: dict[str, list[CheckResult]] = {}
        for index, check in enumerate(self._checks):
            if index in self._results:
                out.setdefault(check.service, []).append(self._results[index])
        return out

    async def check_once(self) -> dict[str, bool]:
        """Run every check once (concurrently), publish, and return each service's verdict."""
        await asyncio.gather(*(self._run_and_publish(i) for i in range(len(self._checks))))
        return dict(self._published)

    async def start(self) -> None:
        """Start one task per check (the first run is immediate)."""
        if self._tasks:
            raise RuntimeError("CheckRunner already started")
        self._tasks = [
            asyncio.create_task(self._loop(i), name=f"health-check {c.service!r} #{i}")
            for i, c in enumerate(self._checks)
        ]

    async def stop(self) -> None:
        """Cancel the check tasks and wait for them; idempotent."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception):
                _LOG.error("health check task failed", exc_info=result)

    async def __aenter__(self) -> CheckRunner:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _loop(self, index: int) -> None:
        ttl = self._checks[index].ttl
        while True:
            await self._run_and_publish(index)
            await asyncio.sleep(ttl)

    async def _run_and_publish(self, index: int) -> None:
        self._results[index] = await self._run(index)
        service = self._checks[index].service
        mine = [i for i, c in enumerate(self._checks) if c.service == service]
        if not all(i in self._results for i in mine):
            return  # not every check of this service has an opinion yet
        ok = all(self._results[i].ok for i in mine)
        if self._published.get(service) == ok:
            return
        self._published[service] = ok
        if isinstance(self._health, aio.HealthService):
            await self._health.set(service, ok)
        else:
            self._health.set(service, ok)

    async def _run(self, index: int) -> CheckResult:
        check = self._checks[index]
        try:
            if check.is_async:
                value = await asyncio.wait_for(check.func(), check.timeout)
            else:
                previous = self._threads.get(index)
                if previous is not None and not previous.done():
                    return CheckResult(False, "previous run still running")
                future = asyncio.get_running_loop().run_in_executor(None, check.func)
                self._threads[index] = future
                # A run that outlives its timeout is nobody's to await: retrieve its outcome
                # so a late exception is not reported as "never retrieved".
                future.add_done_callback(_consume)
                # shield: a timeout must not cancel the future we still track.
                value = await asyncio.wait_for(asyncio.shield(future), check.timeout)
        except asyncio.TimeoutError:
            return CheckResult(False, f"timed out after {check.timeout:g}s")
        except Exception as err:  # the check's own failure is its verdict
            _LOG.warning("health check for %r raised", check.service, exc_info=True)
            return CheckResult(False, f"raised {type(err).__name__}: {err}")
        if value:
            return CheckResult(True)
        return CheckResult(False, f"returned {value!r}")


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
