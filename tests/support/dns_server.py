"""The loopback DNS server tests drive resolvers with (:mod:`sidecar.loopback_dns`, the one
``sidecar demo`` and the benchmarks use too), and a listener recording what a resolver pushes.

For tests of resolvers themselves, :class:`RecordingListener` records what a resolver pushes
and waits (with a deadline) for a condition on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from resolvers import ResolverState
from sidecar.loopback_dns import DnsServer, Mode

__all__ = ["DnsServer", "Mode", "RecordingListener"]


class RecordingListener:
    """A resolver listener that records ``(loop time, state or error)`` and lets a test wait
    for a condition on what it got, with a deadline."""

    def __init__(self) -> None:
        self.events: list[tuple[float, ResolverState | Exception]] = []
        self._changed = asyncio.Event()

    def update_state(self, state: ResolverState) -> None:
        self.events.append((asyncio.get_running_loop().time(), state))
        self._changed.set()

    def report_error(self, error: Exception) -> None:
        self.events.append((asyncio.get_running_loop().time(), error))
        self._changed.set()

    @property
    def states(self) -> list[ResolverState]:
        """Every state pushed, in order."""
        return [e for _, e in self.events if isinstance(e, ResolverState)]

    @property
    def errors(self) -> list[Exception]:
        """Every error reported, in order."""
        return [e for _, e in self.events if isinstance(e, Exception)]

    @property
    def addresses(self) -> set[str]:
        """``host:port`` of the last state pushed (empty before any)."""
        states = self.states
        return {str(a) for a in states[-1].addresses} if states else set()

    async def wait_until(
        self, predicate: Callable[[], bool], what: str, *, timeout: float = 10.0
    ) -> float:
        """Wait until ``predicate()`` holds (checked after each event); return the loop time
        it first held. ``AssertionError`` naming ``what`` and the events after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout:g}s; got {self.events!r}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return loop.time()

    async def wait_for_addresses(self, expected: set[str], *, timeout: float = 10.0) -> float:
        """Wait until the last state holds exactly ``expected`` (``host:port`` strings)."""
        return await self.wait_until(
            lambda: bool(self.states) and self.addresses == expected,
            f"state with {sorted(expected)}",
            timeout=timeout,
        )

    async def wait_for_error(self, *, after: int = 0, timeout: float = 10.0) -> Exception:
        """Wait for an error beyond the first ``after`` ones; return it."""
        await self.wait_until(lambda: len(self.errors) > after, "error", timeout=timeout)
        return self.errors[after]
