"""Graceful drain of a ``grpc.aio`` server (twin of ``health.drain``; timing explained there)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence

import grpc

from health.aio.service import HealthService
from health.drain import DEFAULT_SIGNALS, DrainConfig

_LOG = logging.getLogger("health.drain")  # one logger for both twins


class GracefulDrain:
    """Drains a ``grpc.aio.Server``; create and use it on the server's event loop.

    Typical use::

        drain = GracefulDrain(server, health, DrainConfig(drain_delay=5, grace=20))
        drain.install_signal_handlers()
        await server.start()
        await drain.wait()          # returns once a drain has stopped the server

    ``delay_done``: awaited (called once the drain begins) alongside ``drain_delay``; when it
    returns first, the delay ends then: e.g. a proxy whose only backend is already gone
    serves on for nothing, and its clients fail over sooner on a refused connection than on
    failed calls. ``server`` may be anything with ``async stop(grace)`` that a second
    ``stop(None)`` cuts short (the sidecar passes its shutdown sequence).
    """

    def __init__(
        self,
        server: grpc.aio.Server,
        health: HealthService | None = None,
        config: DrainConfig | None = None,
        *,
        on_event: Callable[[str], None] | None = None,
        delay_done: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._server = server
        self._health = health
        self.config = config or DrainConfig()
        self._on_event = on_event
        self._delay_done = delay_done
        self._task: asyncio.Task[None] | None = None
        self._forced = asyncio.Event()
        self._requested = asyncio.Event()
        self._signals: list[signal.Signals] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def draining(self) -> bool:
        """Whether a drain has been requested."""
        return self._task is not None

    @property
    def forced(self) -> bool:
        """Whether a second request cut the drain short."""
        return self._forced.is_set()

    def install_signal_handlers(self, signals: Sequence[signal.Signals] = DEFAULT_SIGNALS) -> None:
        """Route ``signals`` to ``request()`` (first: drain; second: stop now)."""
        loop = asyncio.get_running_loop()
        for sig in signals:
            loop.add_signal_handler(sig, self.request)
            self._signals.append(sig)
        self._loop = loop

    def remove_signal_handlers(self) -> None:
        """Give the signals back their default handling; idempotent."""
        if self._loop is not None:
            for sig in self._signals:
                self._loop.remove_signal_handler(sig)
        self._signals.clear()

    def request(self) -> None:
        """Start the drain; called again while draining, stop at once. Non-blocking."""
        if self._task is None:
            self._event("draining")
            self._task = asyncio.get_running_loop().create_task(self._run(), name="grpc-drain")
            self._requested.set()
        elif not self._forced.is_set():
            self._event("forced")
            self._forced.set()
            self.remove_signal_handlers()

    async def drain(self) -> None:
        """Request a drain and wait for it to finish."""
        self.request()
        await self.wait()

    async def wait(self) -> None:
        """Wait until a drain has been requested and has stopped the server."""
        await self._requested.wait()
        assert self._task is not None
        # shield: a caller giving up on waiting must not abort the drain itself.
        await asyncio.shield(self._task)

    async def _run(self) -> None:
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        forced = await self._forced_within(self.config.drain_delay)
        if self._health is not None:
            self._health.close_watches()
        if forced:
            await self._server.stop(None)
        else:
            self._event("stopping")
            stopping = asyncio.ensure_future(self._server.stop(self.config.grace))
            forcing = asyncio.ensure_future(self._forced.wait())
            try:
                await asyncio.wait({stopping, forcing}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                forcing.cancel()
            if not stopping.done():
                await self._server.stop(None)  # cancels what the first stop still waits for
            await stopping
        self._event("stopped")

    async def _forced_within(self, delay: float) -> bool:
        """Wait out ``delay`` (less if ``delay_done`` returns first); whether forced."""
        forcing: asyncio.Future[object] = asyncio.ensure_future(self._forced.wait())
        waiting = {forcing}
        if self._delay_done is not None:
            waiting.add(asyncio.ensure_future(self._delay_done()))
        deadline = asyncio.get_running_loop().time() + delay
        try:
            while not self._forced.is_set():
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                done, _ = await asyncio.wait(
                    waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                failed = [t for t in done if t is not forcing and t.exception() is not None]
                if not failed:
                    break  # forced, the delay is over, or delay_done returned
                _LOG.warning("graceful drain: delay_done failed: %r", failed[0].exception())
                waiting.difference_update(failed)  # wait out the rest of the delay
        finally:
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        return self._forced.is_set()

    def _event(self, what: str) -> None:
        _LOG.info("graceful drain: %s", what)
        if self._on_event is not None:
            self._on_event(what)
