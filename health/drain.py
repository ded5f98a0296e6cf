"""Graceful drain: stop being routed to, then stop, without failing a call in flight.

On SIGTERM (or ``request()``):

1. every health status flips to NOT_SERVING, for good (``enter_graceful_shutdown``), so
   ``Watch``-ing clients and Kubernetes readiness probes take the pod out of rotation;
2. the server keeps serving normally for ``drain_delay`` seconds, while endpoint lists
   (EndpointSlices, client balancers, kube-proxy rules) catch up;
3. open health ``Watch`` streams are ended (they would otherwise hold ``stop`` for the whole
   grace), then ``server.stop(grace)``: new calls are refused, calls in flight get up to
   ``grace`` seconds to finish and are cancelled after that.

A second signal skips whatever is left: the server stops at once, cancelling calls in flight,
so the process can exit now. After it the signal handlers are removed, so a third signal gets
the default action (terminate) even if the program is stuck.

Timing with Kubernetes (all in seconds)::

    readiness periodSeconds * failureThreshold  <=  drain_delay
    preStop duration + drain_delay + grace       <   terminationGracePeriodSeconds (default 30)

- The kubelet sends SIGTERM at the start of ``terminationGracePeriodSeconds`` (after a preStop
  hook, whose time counts against the same budget) and SIGKILL at its end. ``drain_delay +
  grace`` plus start-up margin must fit, or in-flight calls die with the process.
- The pod is removed from Service endpoints once the readiness probe has failed
  ``failureThreshold`` times, ``periodSeconds`` apart (the endpoint controller also removes a
  terminating pod on its own, but kube-proxy and clients that cache endpoints lag behind it).
  ``drain_delay`` should cover that, plus the time clients take to see the change: meshkit's
  balancers learn NOT_SERVING from ``Watch`` at once, but a ``dns:`` client only re-resolves
  on its own schedule.
- A ``preStop: sleep N`` hook is the alternative when the app cannot handle SIGTERM; with this
  module it is not needed (it would only add N to the budget).
- Example: readiness every 2 s with failureThreshold 2, ``drain_delay=5``, ``grace=20``,
  ``terminationGracePeriodSeconds: 30``.

Use ``GracefulDrain`` for ``grpc.aio`` servers (asyncio signal handlers, on the server's loop)
and ``SyncGracefulDrain`` for sync ``grpc.Server`` (``signal.signal``, the drain in a thread).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from health.service import AioHealthService, HealthService

_LOG = logging.getLogger(__name__)

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class DrainConfig:
    """How long to keep serving after going NOT_SERVING, and how long calls may finish."""

    drain_delay: float = 5.0
    grace: float = 20.0

    def __post_init__(self) -> None:
        if not self.drain_delay >= 0:
            raise ValueError("drain_delay: must be >= 0")
        if not self.grace >= 0:
            raise ValueError("grace: must be >= 0")


class GracefulDrain:
    """Drains a ``grpc.aio.Server``; create and use it on the server's event loop.

    Typical use::

        drain = GracefulDrain(server, health, DrainConfig(drain_delay=5, grace=20))
        drain.install_signal_handlers()
        await server.start()
        await drain.wait()          # returns once a drain has stopped the server
    """

    def __init__(
        self,
        server: grpc.aio.Server,
        health: AioHealthService | None = None,
        config: DrainConfig | None = None,
        *,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self._server = server
        self._health = health
        self.config = config or DrainConfig()
        self._on_event = on_event
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
        try:
            await asyncio.wait_for(self._forced.wait(), delay)
        except asyncio.TimeoutError:
            return False
        return True

    def _event(self, what: str) -> None:
        _LOG.info("graceful drain: %s", what)
        if self._on_event is not None:
            self._on_event(what)


class SyncGracefulDrain:
    """Drains a sync ``grpc.Server``; the drain runs in its own (non-daemon) thread.

    Typical use, in the main thread::

        drain = SyncGracefulDrain(server, health, DrainConfig(drain_delay=5, grace=20))
        drain.install_signal_handlers()
        server.start()
        server.wait_for_termination()
        drain.wait()
    """

    def __init__(
        self,
        server: grpc.Server,
        health: HealthService | None = None,
        config: DrainConfig | None = None,
        *,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self._server = server
        self._health = health
        self.config = config or DrainConfig()
        self._on_event = on_event
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._forced = threading.Event()
        self._done = threading.Event()
        self._previous: dict[int, object] = {}

    @property
    def draining(self) -> bool:
        with self._lock:
            return self._thread is not None

    @property
    def forced(self) -> bool:
        return self._forced.is_set()

    def install_signal_handlers(self, signals: Sequence[signal.Signals] = DEFAULT_SIGNALS) -> None:
        """Route ``signals`` to ``request()``; call from the main thread."""
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def remove_signal_handlers(self) -> None:
        """Restore the handlers that were there before; main thread only."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.request()
        if self._forced.is_set() and threading.current_thread() is threading.main_thread():
            self.remove_signal_handlers()

    def request(self) -> None:
        """Start the drain; called again while draining, stop at once. Non-blocking."""
        with self._lock:
            if self._thread is None:
                self._event("draining")
                self._thread = threading.Thread(target=self._run, name="grpc-drain")
                self._thread.start()
                return
        if not self._forced.is_set():
            self._event("forced")
            self._forced.set()

    def drain(self) -> None:
        """Request a drain and block until it is over."""
        self.request()
        self.wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a requested drain has stopped the server; False on timeout."""
        return self._done.wait(timeout)

    def _run(self) -> None:
        try:
            if self._health is not None:
                self._health.enter_graceful_shutdown()
            forced = self._forced.wait(self.config.drain_delay)
            if self._health is not None:
                self._health.close_watches()
            if forced:
                self._server.stop(None).wait()
            else:
                self._event("stopping")
                stopped = self._server.stop(self.config.grace)
                # Wake on whichever comes first: the server stopped, or a forced stop.
                while not stopped.wait(0.05):
                    if self._forced.is_set():
                        self._server.stop(None).wait()
                        break
            self._event("stopped")
        finally:
            self._done.set()

    def _event(self, what: str) -> None:
        _LOG.info("graceful drain: %s", what)
        if self._on_event is not None:
            self._on_event(what)
