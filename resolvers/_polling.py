"""The refresh loop shared by polling resolvers (``dns``, ``dns+srv``).

A resolver here is a ``lookup()`` coroutine plus :class:`PollingResolver`, which owns the
timing: refresh when the answer's TTL runs out, back off on failure, merge ``resolve_now``
hints. The timing rules are pure functions (:func:`refresh_delay`, :func:`backoff_delay`) and
the clock, sleep and randomness are injectable, so the loop is tested with a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from resolvers._base import Resolver, ResolverListener, ResolverOptions
from resolvers._types import Address, ResolverState

__all__ = [
    "Lookup",
    "LookupResult",
    "PollingResolver",
    "ResolutionError",
    "backoff_delay",
    "refresh_delay",
]

_log = logging.getLogger(__name__)

# 2.0 ** 1100 overflows a float; any exponent past this already exceeds every sane max_backoff.
_MAX_BACKOFF_EXPONENT = 62

# The lookup enforces ``lookup_timeout`` itself (dnspython's lifetime, with its own message);
# this margin only makes the loop's backstop fire after it, never before.
_TIMEOUT_BACKSTOP_MARGIN = 1.0


class ResolutionError(Exception):
    """A lookup failed; the message names the target. The last good state stays in force."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"resolving {target}: {reason}")
        self.target = target
        self.reason = reason


@dataclass(frozen=True)
class LookupResult:
    """What one lookup found.

    ``ttl`` is how long the answer may be trusted (seconds); ``None`` means it never changes
    (an IP literal), so only a ``resolve_now`` hint triggers another lookup. An empty
    ``addresses`` is a real "no endpoints" answer; ``note`` says why.
    """

    addresses: tuple[Address, ...]
    ttl: float | None
    note: str = ""


Lookup = Callable[[], Awaitable[LookupResult]]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Rng = Callable[[], float]
"""Returns a uniform float in ``[0, 1)``, like :func:`random.random`."""


def refresh_delay(ttl: float, options: ResolverOptions, u: float) -> float:
    """Seconds until the next refresh: ``ttl`` clamped to ``[min_refresh, max_refresh]``, plus
    up to ``options.jitter`` of that at random (``u`` in ``[0, 1)``).

    The jitter is only ever added so a client never re-queries before the record expires,
    and replicas that started together drift apart instead of polling in lockstep.
    """
    base = min(max(ttl, options.min_refresh), options.max_refresh)
    return base * (1.0 + options.jitter * u)


def backoff_delay(failures: int, options: ResolverOptions, u: float) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (1-based).

    Doubles from ``initial_backoff`` up to ``max_backoff``, plus up to ``options.jitter`` of
    that at random (``u`` in ``[0, 1)``), so clients that failed together retry apart.
    """
    if failures < 1:
        raise ValueError(f"failures must be >= 1, got {failures}")
    exponent = min(failures - 1, _MAX_BACKOFF_EXPONENT)
    base = min(options.initial_backoff * 2.0**exponent, options.max_backoff)
    return base * (1.0 + options.jitter * u)


def _state_key(result: LookupResult) -> tuple[Any, ...]:
    # Order-insensitive: round-robin DNS rotates records on every answer, which is not a
    # change worth pushing. Attributes count (an SRV weight change is a change).
    entries = sorted(
        (a.host, a.port, tuple(sorted((str(k), repr(v)) for k, v in a.attributes.items())))
        for a in result.addresses
    )
    return (tuple(entries), result.note)


class PollingResolver(Resolver):
    """Runs ``lookup()`` over and over, pushing changes into ``listener``.

    - refresh after the answer's TTL (see :func:`refresh_delay`);
    - on failure: ``report_error``, keep the last good state, retry with
      :func:`backoff_delay`; the backoff resets after a success;
    - ``update_state`` on the first result, on a change, and on the first success after an
      error; identical repeats are skipped;
    - ``resolve_now()`` hints within ``resolve_now_min_interval`` of the last lookup's start
      merge into one lookup; at most one lookup is ever in flight.

    Must be created on a running event loop; it starts its task at once.
    ``resolve_now`` and ``aclose`` are to be called on that loop.
    """

    def __init__(
        self,
        target: str,
        lookup: Lookup,
        listener: ResolverListener,
        options: ResolverOptions,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: Rng = random.random,
    ) -> None:
        self.target = target
        self._lookup = lookup
        self._listener = listener
        self._options = options
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._hinted = False
        self._wake = asyncio.Event()
        self._last_start = float("-inf")
        self._last_key: tuple[Any, ...] | None = None
        self._error_reported = False
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"resolver {target}")
        self._task.add_done_callback(self._on_task_done)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.target}>"

    def resolve_now(self) -> None:
        """Ask for a lookup soon; merged with other hints and rate-limited. Never blocks."""
        if self._closed:
            return
        self._hinted = True
        self._wake.set()

    async def aclose(self) -> None:
        """Stop the loop and wait for it to finish; idempotent."""
        self._closed = True
        if not self._task.done():
            self._task.cancel()
        # Wait for the task without letting its cancellation look like ours: if *we* are
        # cancelled while waiting, ``wait`` raises CancelledError here and it propagates.
        await asyncio.wait({self._task})

    async def _run(self) -> None:
        failures = 0
        while True:
            self._hinted = False
            self._wake.clear()
            self._last_start = self._clock()
            try:
                result = await self._lookup_with_backstop()
            except Exception as exc:  # every failure is reported and retried, never fatal
                failures += 1
                self._report(exc)
            else:
                failures = 0
                self._publish(result)
                if result.ttl is None:
                    await self._wait_for_hint()
                else:
                    await self._wait_refresh(refresh_delay(result.ttl, self._options, self._rng()))
                continue
            # Hints do not shorten a backoff: the server is already being retried as fast as
            # the backoff allows, and a channel calls resolve_now on every failed connection.
            await self._sleep(backoff_delay(failures, self._options, self._rng()))

    async def _lookup_with_backstop(self) -> LookupResult:
        # Not wait_for: a TimeoutError raised *by* the lookup (the same class as asyncio's
        # since 3.11) must keep its own message, not be taken for the backstop firing.
        task = asyncio.ensure_future(self._lookup())
        try:
            done, _ = await asyncio.wait(
                {task}, timeout=self._options.lookup_timeout + _TIMEOUT_BACKSTOP_MARGIN
            )
        finally:
            if not task.done():  # the backstop fired, or we are being cancelled
                task.cancel()
                await asyncio.wait({task})
        if not done:
            raise ResolutionError(
                self.target, f"lookup did not finish within {self._options.lookup_timeout:g}s"
            )
        if task.cancelled():
            # Cancelled from inside, not by us (that would have raised above): a failure to
            # retry, not a reason for the loop to end.
            raise ResolutionError(self.target, "lookup was cancelled")
        return task.result()

    def _report(self, exc: Exception) -> None:
        if not isinstance(exc, ResolutionError):
            wrapped = ResolutionError(self.target, f"{type(exc).__name__}: {exc}")
            wrapped.__cause__ = exc
            exc = wrapped
        self._error_reported = True
        try:
            self._listener.report_error(exc)
        except Exception:
            _log.exception("%s: listener.report_error raised", self.target)

    def _publish(self, result: LookupResult) -> None:
        key = _state_key(result)
        if key == self._last_key and not self._error_reported:
            return
        self._last_key = key
        self._error_reported = False
        try:
            self._listener.update_state(ResolverState(result.addresses, note=result.note))
        except Exception:
            # A faulty consumer must not stop the watch; the next change is pushed again.
            _log.exception("%s: listener.update_state raised", self.target)

    async def _wait_refresh(self, delay: float) -> None:
        """Return when the refresh is due, or earlier for a hint (rate-limited)."""
        deadline = self._clock() + delay
        while True:
            now = self._clock()
            if now >= deadline:
                return
            if self._hinted:
                earliest = self._last_start + self._options.resolve_now_min_interval
                if now >= earliest:
                    return
                # Further hints until then merge into the one lookup already due.
                await self._sleep(min(deadline, earliest) - now)
            else:
                await self._sleep_or_hint(deadline - now)

    async def _wait_for_hint(self) -> None:
        """For answers that never expire: wait for a hint, then honour the rate limit."""
        await self._wake.wait()
        earliest = self._last_start + self._options.resolve_now_min_interval
        now = self._clock()
        if now < earliest:
            await self._sleep(earliest - now)

    async def _sleep_or_hint(self, delay: float) -> None:
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()
            await asyncio.gather(sleeper, waiter, return_exceptions=True)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed:
            return
        exc = task.exception()
        # Only a BaseException other than cancellation can get here; make it loud.
        _log.error("%s: resolver loop stopped unexpectedly", self.target, exc_info=exc)
