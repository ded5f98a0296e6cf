"""Process lifecycle pieces: the drain of several servers, the config file watch, tasks.

The drain itself is :class:`health.aio.GracefulDrain` (NOT_SERVING, ``drain_delay``, end health
``Watch`` streams, ``stop(grace)``, a second signal stops at once); :class:`ServerGroup` lets it
stop the outbound and inbound servers together, as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc

from sidecar.files import signature_or_none

__all__ = ["ConfigWatcher", "ServerGroup", "TaskSet"]

_LOG = logging.getLogger(__name__)

class ServerGroup:
    """Several ``grpc.aio`` servers stopped together (what :class:`health.aio.GracefulDrain`
    drives)."""

    def __init__(self, servers: list[grpc.aio.Server]) -> None:
        self._servers = servers

    async def stop(self, grace: float | None) -> None:
        """Stop every server concurrently with the same ``grace``."""
        await asyncio.gather(*(s.stop(grace) for s in self._servers))


class ConfigWatcher:
    """Calls ``on_change()`` when the config file's :func:`sidecar.files.file_signature` changes.

    Polls every ``interval`` seconds: inotify does not see a symlink swapped in a parent
    directory, and one ``stat`` per second costs nothing. A file that disappears (mid-swap)
    is not a change; its reappearance with another signature is.
    """

    def __init__(
        self, path: str, on_change: Callable[[], Awaitable[object]], interval: float = 1.0
    ) -> None:
        self._path = path
        self._on_change = on_change
        self._interval = interval
        self._signature = signature_or_none(path)

    def seen(self) -> None:
        """Take the file as it is now as known (after a reload read it)."""
        self._signature = signature_or_none(self._path) or self._signature

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            signature = signature_or_none(self._path)
            if signature is None or signature == self._signature:
                continue
            self._signature = signature
            _LOG.info("config file %s changed on disk", self._path)
            try:
                await self._on_change()
            except Exception:  # the watch must outlive any reload bug
                _LOG.exception("config reload failed")


class TaskSet:
    """Background tasks the process owns: kept referenced, errors logged, cancelled at exit."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOG.error("background task %s failed: %r", task.get_name(), task.exception())

    async def wait(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds for the tasks running now."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def cancel(self) -> None:
        """Cancel every task and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
