"""Serving side of ``grpc.health.v1`` for a ``grpc.aio.Server`` (twin of ``health.service``)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health as _health
from grpc_health.v1 import health_pb2, health_pb2_grpc

from health.service import ServingStatus, StatusTable, to_status


class _ClosableAioServicer(_health.aio.HealthServicer):  # type: ignore[misc]
    """Upstream asyncio servicer that can end its Watch streams.

    The upstream Watch loops forever; it runs here as a child task raced against a "closed"
    event, and is cancelled (by us, its parent) when the event wins. The handler's own
    cancellation (client gone, server stop) propagates untouched.
    """

    def __init__(self, table: StatusTable) -> None:
        super().__init__()
        self._table = table
        self._closed: asyncio.Event | None = None  # made on the server's loop, lazily

    def _closed_event(self) -> asyncio.Event:
        if self._closed is None:
            self._closed = asyncio.Event()
        return self._closed

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        closed = self._closed_event()
        if closed.is_set():
            # Draining: answer the current status once and end the stream, so the client
            # learns NOT_SERVING and stop(grace) does not wait on it.
            status = self._table.status_of(request.service)
            await context.write(health_pb2.HealthCheckResponse(status=int(status)))
            return
        inner = asyncio.ensure_future(super().Watch(request, context))
        closing = asyncio.ensure_future(closed.wait())
        try:
            await asyncio.wait({inner, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            inner.cancel()
            closing.cancel()
            await asyncio.gather(inner, closing, return_exceptions=True)
        if not inner.cancelled():
            inner.result()  # re-raise what the upstream Watch raised, if anything

    def close_watches(self) -> None:
        self._closed_event().set()


class HealthService:
    """``grpc.health.v1.Health`` for a ``grpc.aio.Server``; use it on the server's loop.

    The whole server (``""``) starts SERVING; other services are unknown until set.
    """

    def __init__(self) -> None:
        self._table = StatusTable()
        self._servicer = _ClosableAioServicer(self._table)

    @property
    def servicer(self) -> Any:
        """The upstream aio ``HealthServicer`` (to register it yourself)."""
        return self._servicer

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register the health service on ``server`` (before ``await server.start()``)."""
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    async def set(self, service: str, status: bool | ServingStatus) -> None:
        """Set one service's status (``""``: the whole server). Ignored once shutting down."""
        value = to_status(status)
        if self._table.update(service, value):
            await self._servicer.set(service, int(value))

    async def set_all(self, status: bool | ServingStatus) -> None:
        """Set every service ever set, and ``""``, to ``status``."""
        for service in self._table.services():
            await self.set(service, status)

    def statuses(self) -> dict[str, ServingStatus]:
        """What ``Check`` answers now, per service name."""
        return self._table.snapshot()

    @property
    def shutting_down(self) -> bool:
        return self._table.shutting_down

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, permanently: later ``set`` calls are ignored."""
        self._table.shut_down()
        await self._servicer.enter_graceful_shutdown()

    def close_watches(self) -> None:
        """End open ``Watch`` streams (OK) and every later one after its first answer."""
        self._servicer.close_watches()
