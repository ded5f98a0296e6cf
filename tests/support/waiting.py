"""Wait on a condition with a deadline: the only way tests order events (never a bare sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "",
) -> float:
    """Poll ``predicate`` until true; return the seconds it took; AssertionError at ``timeout``."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {message or predicate}")
        await asyncio.sleep(interval)


def wait_until_sync(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02, message: str = ""
) -> float:
    """Blocking twin of :func:`wait_until` for sync tests."""
    start = time.monotonic()
    deadline = start + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {message or predicate}")
        time.sleep(interval)
    return time.monotonic() - start
