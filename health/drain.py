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

``GracefulDrain`` drains a sync ``grpc.Server`` (``signal.signal``, the drain in a thread);
its twin ``health.aio.GracefulDrain`` a ``grpc.aio`` server (asyncio signal handlers, on the
server's loop). Both take the same ``DrainConfig``. The aio twin also takes ``delay_done``, an
awaitable that ends ``drain_delay`` early (the meshkit sidecar's: its local app is gone).

Behind a meshkit sidecar, the app's own ``drain_delay`` should be at least the sidecar's: calls
reach the app only through the sidecar's inbound listener, which stops accepting after the
sidecar's delay; the sidecar's outbound listener stays open until the app has exited, so the
app's calls in flight can still call out (see :mod:`sidecar.app`).
"""

from __future__ import annotations

import inspect
import logging
import signal
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from health._deprecated import former_names
from health.service import HealthService

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
    """Drains a sync ``grpc.Server``; the drain runs in its own (non-daemon) thread.

    Typical use, in the main thread::

        drain = GracefulDrain(server, health, DrainConfig(drain_delay=5, grace=20))
        drain.install_signal_handlers()
        server.start()
        server.wait_for_termination()
        drain.wait()

    For a ``grpc.aio`` server, use ``health.aio.GracefulDrain``. Given one here (this name's
    former use), it still builds that, with a ``DeprecationWarning``.
    """

    def __new__(
        cls,
        server: Any,
        health: Any = None,
        config: DrainConfig | None = None,
        *,
        on_event: Callable[[str], None] | None = None,
    ) -> GracefulDrain:
        if _is_asyncio_server(server, health):
            warnings.warn(
                "health.GracefulDrain drains a sync grpc.Server; for a grpc.aio server use "
                "health.aio.GracefulDrain",
                DeprecationWarning,
                stacklevel=2,
            )
            from health.aio.drain import GracefulDrain as AioGracefulDrain

            # Not an instance of cls, so Python does not run __init__ on it.
            return AioGracefulDrain(server, health, config, on_event=on_event)  # type: ignore[return-value]
        return super().__new__(cls)

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


def _is_asyncio_server(server: Any, health: Any) -> bool:
    """Whether the arguments are a ``grpc.aio`` server's (or a duck-typed group of them)."""
    from health.aio.service import HealthService as AioHealthService

    return (
        isinstance(server, grpc.aio.Server)
        or isinstance(health, AioHealthService)
        or inspect.iscoroutinefunction(getattr(server, "stop", None))
    )


if TYPE_CHECKING:  # the former name, typed
    SyncGracefulDrain = GracefulDrain
else:  # hidden from type checkers, which would otherwise accept any name of this module
    __getattr__ = former_names(
        "health.drain", {"SyncGracefulDrain": ("health.GracefulDrain", lambda: GracefulDrain)}
    )
