"""Client-side active health checking with ``grpc.health.v1.Health/Watch`` (gRFC A17).

One watcher per endpoint channel, for one service name (``""``: the whole server):

- SERVING -> ``HEALTHY``; NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN -> ``UNHEALTHY``;
- the stream failing with any code but UNIMPLEMENTED, or the server ending it, ->
  ``UNHEALTHY`` and a new stream after a backoff (exponential with jitter). As in A17 and
  grpc-go, a stream that delivered at least one answer resets the backoff and is reopened at
  once; the backoff only grows while streams fail without answering;
- UNIMPLEMENTED -> ``DISABLED``: the server has no health service, so checking is off and the
  endpoint counts as healthy; logged once, and the watcher returns.

``on_change(verdict, reason)`` is called only when the verdict changes, from the watcher's
thread (sync) or task (aio); ``reason`` explains it, for error messages. ``WatchState`` and
``Backoff`` hold all of that logic without I/O, shared by ``watch_health`` (a sync
``grpc.Channel``, in a thread of yours until ``stop`` is set) and its twin
``health.aio.watch_health`` (a ``grpc.aio.Channel``, as a task).
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import warnings
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

import grpc
from grpc_health.v1 import health_pb2

from health._deprecated import former_names

_LOG = logging.getLogger(__name__)

WATCH_METHOD = "/grpc.health.v1.Health/Watch"

# ServingStatus values (see health.service.ServingStatus; not imported, to keep this module
# usable on its own).
_SERVING = 1
_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


class HealthVerdict(enum.Enum):
    """What a watcher concludes about one endpoint."""

    PENDING = "pending"
    """No answer yet."""
    HEALTHY = "healthy"
    """The server says SERVING."""
    UNHEALTHY = "unhealthy"
    """The server says it is not serving, or the Watch stream is broken."""
    DISABLED = "disabled"
    """The server does not implement health checking: treat the endpoint as healthy."""


OnChange = Callable[[HealthVerdict, str], None]


@dataclass
class Backoff:
    """Exponential backoff with jitter (gRPC's connection-backoff shape).

    The n-th delay is ``min(initial * multiplier**n, maximum)``, spread uniformly by
    ``± jitter`` of itself so a fleet of clients does not retry in lockstep.
    """

    initial: float = 1.0
    maximum: float = 120.0
    multiplier: float = 1.6
    jitter: float = 0.2
    rng: Callable[[], float] = random.random
    _current: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise ValueError("initial_backoff: must be > 0")
        if self.maximum < self.initial:
            raise ValueError("max_backoff: must be >= initial_backoff")
        if self.multiplier < 1:
            raise ValueError("backoff multiplier: must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("backoff jitter: must be in [0, 1)")

    def next_delay(self) -> float:
        """The next delay, in seconds; each call grows the base until ``maximum``."""
        if self._current is None:
            self._current = self.initial
        else:
            self._current = min(self._current * self.multiplier, self.maximum)
        spread = self._current * self.jitter * (2 * self.rng() - 1)
        return max(0.0, self._current + spread)

    def reset(self) -> None:
        """Start over from ``initial``."""
        self._current = None


@dataclass(frozen=True)
class Transition:
    """A verdict change to report."""

    verdict: HealthVerdict
    reason: str


def verdict_for_status(status: int) -> tuple[HealthVerdict, str]:
    """The verdict and reason for one ``HealthCheckResponse.status`` value."""
    name = _STATUS_NAMES.get(status, f"status {status}")
    if status == _SERVING:
        return HealthVerdict.HEALTHY, "SERVING"
    return HealthVerdict.UNHEALTHY, f"health check answered {name}"


class WatchState:
    """The sans-I/O core of a watcher: feed it stream events, act on what it returns."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.verdict = HealthVerdict.PENDING
        self.reason = "no health answer yet"
        self.answered = False  # the current stream delivered at least one message
        self.attempts = 0

    def stream_started(self) -> None:
        """A new Watch stream is being opened."""
        self.attempts += 1
        self.answered = False

    def on_message(self, status: int) -> Transition | None:
        """A message arrived; the transition to report, if any."""
        self.answered = True
        return self._move(*verdict_for_status(status))

    def on_stream_end(
        self, code: grpc.StatusCode, details: str
    ) -> tuple[Transition | None, float | None]:
        """The stream ended with ``code``: (transition to report, seconds before the next
        stream or None to stop watching)."""
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return self._move(HealthVerdict.DISABLED, "server does not implement health"), None
        if code == grpc.StatusCode.OK:
            reason = "health-check stream closed by the server"
        else:
            reason = f"health-check stream failed: {code.name}: {details}".rstrip(": ")
        transition = self._move(HealthVerdict.UNHEALTHY, reason)
        if self.answered:
            self.backoff.reset()
            return transition, 0.0
        return transition, self.backoff.next_delay()

    def _move(self, verdict: HealthVerdict, reason: str) -> Transition | None:
        if verdict == self.verdict:
            return None
        self.verdict, self.reason = verdict, reason
        return Transition(verdict, reason)


def log_disabled(label: str, service: str) -> None:
    """Say once that ``label`` has no health service, so checking is off for it."""
    _LOG.info(
        "health checking disabled for %s (service %r): the server does not implement "
        "grpc.health.v1.Health; treating it as healthy",
        label or "endpoint",
        service,
    )


def watch_request(service: str) -> Any:
    """The ``Health/Watch`` request for ``service``."""
    return health_pb2.HealthCheckRequest(service=service)


@overload
def watch_health(
    channel: grpc.Channel,
    service: str,
    on_change: OnChange,
    stop: threading.Event,
    *,
    initial_backoff: float = 1.0,
    max_backoff: float = 120.0,
    multiplier: float = 1.6,
    jitter: float = 0.2,
    label: str = "",
    rng: Callable[[], float] = random.random,
) -> None: ...


@overload
def watch_health(
    channel: grpc.aio.Channel,
    service: str,
    on_change: OnChange,
    stop: None = None,
    *,
    initial_backoff: float = 1.0,
    max_backoff: float = 120.0,
    multiplier: float = 1.6,
    jitter: float = 0.2,
    label: str = "",
    rng: Callable[[], float] = random.random,
) -> Coroutine[Any, Any, None]: ...


def watch_health(
    channel: Any,
    service: str,
    on_change: OnChange,
    stop: threading.Event | None = None,
    *,
    initial_backoff: float = 1.0,
    max_backoff: float = 120.0,
    multiplier: float = 1.6,
    jitter: float = 0.2,
    label: str = "",
    rng: Callable[[], float] = random.random,
) -> Coroutine[Any, Any, None] | None:
    """Watch ``service``'s health over the sync ``channel`` until ``stop`` is set or the
    server turns out not to implement health checking (DISABLED). Run it in a thread.

    It returns soon after ``stop`` is set (the open stream is cancelled then). ``label``
    names the endpoint in logs. For a ``grpc.aio`` channel, use ``health.aio.watch_health``;
    given one here with no ``stop`` (this name's former use), it still returns that
    coroutine, with a ``DeprecationWarning``.
    """
    if stop is None:
        if not isinstance(channel, grpc.aio.Channel):
            raise TypeError("watch_health() needs stop, a threading.Event that ends the watch")
        warnings.warn(
            "health.watch_health watches a sync grpc.Channel in a thread; for a grpc.aio "
            "channel use health.aio.watch_health",
            DeprecationWarning,
            stacklevel=2,
        )
        from health.aio.watch import watch_health as aio_watch_health

        return aio_watch_health(
            channel,
            service,
            on_change,
            initial_backoff=initial_backoff,
            max_backoff=max_backoff,
            multiplier=multiplier,
            jitter=jitter,
            label=label,
            rng=rng,
        )
    _watch_blocking(
        channel,
        service,
        on_change,
        stop,
        Backoff(initial_backoff, max_backoff, multiplier, jitter, rng),
        label,
    )
    return None


def _watch_blocking(
    channel: grpc.Channel,
    service: str,
    on_change: OnChange,
    stop: threading.Event,
    backoff: Backoff,
    label: str,
) -> None:
    state = WatchState(backoff)
    method = channel.unary_stream(
        WATCH_METHOD,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    request = watch_request(service)
    lock = threading.Lock()
    current: list[Any] = []  # the open call; guarded by lock
    finished = threading.Event()

    def cancel_on_stop() -> None:
        # Wakes at once when stop is set; the 1 s timeout only bounds how long this thread
        # outlives a watcher that returned on its own (DISABLED or an error).
        while not stop.wait(1.0):
            if finished.is_set():
                return
        with lock:
            for call in current:
                call.cancel()

    canceller = threading.Thread(
        target=cancel_on_stop, name=f"health-watch-stop {label}".strip(), daemon=True
    )
    canceller.start()
    try:
        while True:
            with lock:
                # Checked under the lock the canceller takes, so a stop can't slip between
                # this check and the new call being visible to it.
                if stop.is_set():
                    return
                state.stream_started()
                call = method(request)
                current[:] = [call]
            try:
                for response in call:
                    emit(on_change, state.on_message(response.status))
                code, details = call.code(), call.details() or ""
            except grpc.RpcError as err:
                code, details = err.code(), err.details() or ""
            finally:
                call.cancel()
            if stop.is_set():
                return
            transition, delay = state.on_stream_end(code, details)
            emit(on_change, transition)
            if delay is None:
                log_disabled(label, service)
                return
            if delay > 0 and stop.wait(delay):
                return
    finally:
        finished.set()


def emit(on_change: OnChange, transition: Transition | None) -> None:
    """Report ``transition`` to ``on_change``, if there is one."""
    if transition is not None:
        on_change(transition.verdict, transition.reason)


if TYPE_CHECKING:  # the former name, typed
    watch_health_blocking = watch_health
else:  # hidden from type checkers, which would otherwise accept any name of this module
    __getattr__ = former_names(
        "health.watch", {"watch_health_blocking": ("health.watch_health", lambda: watch_health)}
    )
