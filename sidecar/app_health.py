"""The local app's health, as the sidecar reports it on the inbound ``grpc.health.v1`` service.

Shared by both data planes: the Python plane serves the health service on its inbound
listener; the Envoy plane serves it on a loopback server of its own, to which Envoy routes
``/grpc.health.v1.Health/`` calls of the inbound listener. Either way the status (``""``, and
``app_health.service`` when named) is SERVING only while the local app is healthy as
:class:`AppHealth` sees it and no drain has begun (the drain flips everything to NOT_SERVING).

:func:`app_listening` is how the drain tells that the app is gone (see :mod:`sidecar.app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc

from health import HealthVerdict
from health.aio import HealthService as AioHealthService
from health.aio import watch_health
from sidecar.config import AppHealthConfig, HostPort

__all__ = ["AppHealth", "LocalHealth", "app_listening"]

_LOG = logging.getLogger("sidecar.inbound")


async def app_listening(address: HostPort, timeout: float = 1.0) -> bool:
    """Whether the app still accepts connections on ``address`` (one TCP connect, closed at
    once). A refused or failed connect means gone; no answer within ``timeout`` counts as
    still there (nothing is proven gone)."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(address.host, address.port), timeout
        )
    except asyncio.TimeoutError:
        return True
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class AppHealth:
    """Follows the local app's health and reports ``on_change(healthy, reason)``.

    With ``app_health.enabled`` it watches the app's own ``grpc.health.v1`` service
    (``watch_health``, reconnecting within ``interval``). When the app does not implement
    it (``DISABLED``), or checking is off, the app counts as healthy while the channel to it is
    connected (READY) and unhealthy when connecting fails (TRANSIENT_FAILURE).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        config: AppHealthConfig,
        on_change: Callable[[bool, str], None],
    ) -> None:
        self._channel = channel
        self._config = config
        self._on_change = on_change
        self.healthy = False
        self.reason = "local app not checked yet"

    def _set(self, healthy: bool, reason: str) -> None:
        if (healthy, reason) != (self.healthy, self.reason):
            if healthy != self.healthy:
                _LOG.info("local app %s: %s", "healthy" if healthy else "unhealthy", reason)
            self.healthy, self.reason = healthy, reason
            self._on_change(healthy, reason)

    def _verdict(self, verdict: HealthVerdict, reason: str) -> None:
        if verdict is HealthVerdict.DISABLED:
            return  # watch_health returns next; connectivity decides from then on
        self._set(verdict is HealthVerdict.HEALTHY, f"health check: {reason}")

    async def run(self) -> None:
        """Follow the app until cancelled."""
        if self._config.enabled:
            interval = float(self._config.interval)
            try:
                await watch_health(
                    self._channel,
                    self._config.service,
                    self._verdict,
                    initial_backoff=min(1.0, interval),
                    max_backoff=interval,
                    label="local app",
                )
            except Exception as exc:  # never leave the health frozen: fall back, say so
                _LOG.error("watching the local app's health failed (%r); using its connection", exc)
        await self._follow_connectivity()

    async def _follow_connectivity(self) -> None:
        connectivity = grpc.ChannelConnectivity
        while True:
            # try_to_connect: an IDLE channel (never used, or its connection dropped) only
            # reconnects when asked, and we want to know whether the app is there.
            state = self._channel.get_state(try_to_connect=True)
            if state is connectivity.READY:
                self._set(True, "connected (no health service)")
            elif state is connectivity.TRANSIENT_FAILURE:
                self._set(False, "cannot connect to the local app")
            elif state is connectivity.SHUTDOWN:
                return
            await self._channel.wait_for_state_change(state)


class LocalHealth:
    """Publishes :class:`AppHealth`'s verdicts on ``health`` (an :class:`AioHealthService`)."""

    def __init__(
        self, channel: grpc.aio.Channel, config: AppHealthConfig, health: AioHealthService
    ) -> None:
        self.health = health
        self._services = {"", config.service}
        self._dirty = asyncio.Event()
        self.app = AppHealth(channel, config, lambda healthy, reason: self._dirty.set())
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def healthy(self) -> bool:
        """Whether the local app is healthy now."""
        return self.app.healthy

    async def _publish(self) -> None:
        # One writer applies the latest verdict: set() awaits, so writing from each
        # callback could apply verdicts out of order.
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            for service in self._services:
                await self.health.set(service, self.app.healthy)

    async def start(self) -> None:
        """Report NOT_SERVING until the app is seen healthy; follow it from now on."""
        for service in self._services:
            await self.health.set(service, False)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._publish(), name="inbound-health"),
            loop.create_task(self.app.run(), name="app-health"),
        ]

    async def close(self) -> None:
        """Stop following the app."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
