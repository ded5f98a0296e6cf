"""Serving side of ``grpc.health.v1``: a small API over grpcio-health-checking's servicers.

``HealthService`` wraps ``grpc_health.v1.health.HealthServicer`` for a sync ``grpc.Server``;
its twin ``health.aio.HealthService`` wraps ``grpc_health.v1.health.aio.HealthServicer`` for a
``grpc.aio.Server``. Both keep the upstream servicers (and their generated protos) and add:

- ``set(service, True | False | ServingStatus)``; ``""`` is the whole server;
- ``set_all(...)`` for every known service and ``""``;
- ``statuses()``, a snapshot of what ``Check`` answers;
- ``close_watches()``: ends every open ``Watch`` stream with OK. Upstream Watch streams never
  end on their own, so ``server.stop(grace)`` would otherwise always wait the full grace for
  them (every load-balancing client holds one). ``health.drain`` calls it before ``stop``.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health as _health
from grpc_health.v1 import health_pb2, health_pb2_grpc

from health._deprecated import former_names

OVERALL = ""
"""The service name that stands for the whole server."""

SERVICE_NAME = "grpc.health.v1.Health"


class ServingStatus(enum.IntEnum):
    """``grpc.health.v1.HealthCheckResponse.ServingStatus`` as a Python enum (same values)."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3


def to_status(value: bool | int) -> ServingStatus:
    """``True`` -> SERVING, ``False`` -> NOT_SERVING, an int/``ServingStatus`` -> itself."""
    if isinstance(value, bool):
        return ServingStatus.SERVING if value else ServingStatus.NOT_SERVING
    try:
        return ServingStatus(value)
    except ValueError:
        raise ValueError(f"not a grpc.health.v1 serving status: {value!r}") from None


class StatusTable:
    """The statuses we set, mirrored so they can be read without upstream's private fields
    (shared by the sync and the aio service)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._statuses: dict[str, ServingStatus] = {OVERALL: ServingStatus.SERVING}
        self._shutting_down = False

    def update(self, service: str, status: ServingStatus) -> bool:
        """Record ``status``; False once shutting down (upstream ignores it too)."""
        with self._lock:
            if self._shutting_down:
                return False
            self._statuses[service] = status
            return True

    def status_of(self, service: str) -> ServingStatus:
        with self._lock:
            return self._statuses.get(service, ServingStatus.SERVICE_UNKNOWN)

    def services(self) -> list[str]:
        with self._lock:
            return list(self._statuses)

    def shut_down(self) -> bool:
        """Flip everything to NOT_SERVING for good; False if that already happened."""
        with self._lock:
            if self._shutting_down:
                return False
            self._shutting_down = True
            for name in self._statuses:
                self._statuses[name] = ServingStatus.NOT_SERVING
            return True

    @property
    def shutting_down(self) -> bool:
        with self._lock:
            return self._shutting_down

    def snapshot(self) -> dict[str, ServingStatus]:
        with self._lock:
            return dict(self._statuses)


class _ClosableServicer(_health.HealthServicer):  # type: ignore[misc]
    """Upstream sync servicer that can end its non-blocking Watch streams."""

    def __init__(self, table: StatusTable, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._table = table
        self._watches_lock = threading.Lock()
        self._watch_callbacks: set[Callable[[Any], None]] = set()
        self._watches_closed = False

    def Watch(
        self,
        request: Any,
        context: grpc.ServicerContext,
        send_response_callback: Callable[[Any], None] | None = None,
    ) -> Any:
        if send_response_callback is None:
            # Blocking fallback (servers without experimental_non_blocking): not closable.
            return super().Watch(request, context)
        callback = send_response_callback
        with self._watches_lock:
            closed = self._watches_closed
            if not closed:
                self._watch_callbacks.add(callback)
        if closed:
            # Draining: answer the current status once and end the stream, so the client
            # learns NOT_SERVING and stop(grace) does not wait on it.
            status = self._table.status_of(request.service)
            callback(health_pb2.HealthCheckResponse(status=int(status)))
            callback(None)
            return None
        context.add_callback(lambda: self._forget(callback))
        return super().Watch(request, context, callback)

    def _forget(self, callback: Callable[[Any], None]) -> None:
        with self._watches_lock:
            self._watch_callbacks.discard(callback)

    def close_watches(self) -> None:
        with self._watches_lock:
            self._watches_closed = True
            callbacks = list(self._watch_callbacks)
            self._watch_callbacks.clear()
        for callback in callbacks:
            callback(None)  # None ends the stream with OK (upstream's own convention)


class HealthService:
    """``grpc.health.v1.Health`` for a sync ``grpc.Server``.

    Thread-safe. The whole server (``""``) starts SERVING; other services are unknown to
    ``Check`` (NOT_FOUND) and ``Watch`` (SERVICE_UNKNOWN) until set.
    """

    def __init__(self, *, experimental_thread_pool: Any = None) -> None:
        self._table = StatusTable()
        self._servicer = _ClosableServicer(
            self._table,
            experimental_non_blocking=True,
            experimental_thread_pool=experimental_thread_pool,
        )
        self._set_lock = threading.Lock()

    @property
    def servicer(self) -> Any:
        """The upstream ``HealthServicer`` (to register it yourself; set statuses here)."""
        return self._servicer

    def add_to_server(self, server: grpc.Server) -> None:
        """Register the health service on ``server`` (before ``server.start()``)."""
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    def set(self, service: str, status: bool | ServingStatus) -> None:
        """Set one service's status (``""``: the whole server). Ignored once shutting down."""
        value = to_status(status)
        with self._set_lock:  # so the mirror and the servicer see sets in the same order
            if self._table.update(service, value):
                self._servicer.set(service, int(value))

    def set_all(self, status: bool | ServingStatus) -> None:
        """Set every service ever set, and ``""``, to ``status``."""
        for service in self._table.services():
            self.set(service, status)

    def statuses(self) -> dict[str, ServingStatus]:
        """What ``Check`` answers now, per service name."""
        return self._table.snapshot()

    @property
    def shutting_down(self) -> bool:
        return self._table.shutting_down

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, permanently: later ``set`` calls are ignored."""
        with self._set_lock:
            self._table.shut_down()
            self._servicer.enter_graceful_shutdown()

    def close_watches(self) -> None:
        """End open ``Watch`` streams (OK) and every later one after its first answer."""
        self._servicer.close_watches()


def _aio_health_service() -> Any:
    from health.aio.service import HealthService as AioHealthService

    return AioHealthService


if TYPE_CHECKING:  # the former name, typed
    from health.aio import service as _aio_service

    AioHealthService = _aio_service.HealthService
else:  # hidden from type checkers, which would otherwise accept any name of this module
    __getattr__ = former_names(
        "health.service", {"AioHealthService": ("health.aio.HealthService", _aio_health_service)}
    )
