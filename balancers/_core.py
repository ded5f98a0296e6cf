"""The channel core: resolver -> policy -> picker, shared by the aio and the sync channel.

All state changes run serially on one event loop (the caller's for ``balancers.aio``, a
private thread's for the sync channel). Calls read ``core.picker`` from any thread: it is
replaced, never mutated, so reading it needs no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

import resolvers
from balancers import _registry
from balancers._base import (
    CONNECTING,
    IDLE,
    SHUTDOWN,
    Balancer,
    BalancerOptions,
    Connectivity,
    ErrorPicker,
    NoSubchannelAvailable,
    Picker,
    PickFailed,
    PickInfo,
    PickResult,
    QueuePicker,
    SubchannelState,
)
from balancers._retry import RetryPolicy
from balancers._subchannel import StateListener, Subchannel
from resolvers import Address, Resolver, ResolverOptions, ResolverState, Target

log = logging.getLogger("meshkit.balancers")

SERVER_MIN_PING_INTERVAL_MS = 300_000
"""A default gRPC server's minimum interval between client pings (5 min)."""

SubchannelFactory = Callable[..., Subchannel]
"""``factory(address, listener, loop=..., health_service=..., on_done=...) -> Subchannel``."""


@dataclass(frozen=True)
class ChannelSettings:
    """What a balanced channel is built from, besides its target and transport."""

    lb_policy: str = "round_robin"
    lb_config: dict[str, Any] = field(default_factory=dict)
    health_check_service: str | None = None
    """Service name checked with grpc.health.v1 Watch per endpoint; None is off (as in gRPC)."""
    outlier_detection: Any = None
    """A ``health.OutlierConfig`` to eject endpoints that keep failing; None is off."""
    resolver_options: ResolverOptions = field(default_factory=ResolverOptions)
    drain_timeout: float = 30.0
    """How long a removed endpoint may finish its in-flight calls before they are cancelled."""
    retry: RetryPolicy | None = None
    """Retries of unary-request calls (``balancers.RetryPolicy``); None is one attempt."""


class ChannelCore:
    """Drives a resolver and a policy for one target and publishes pickers."""

    def __init__(
        self,
        target: str,
        factory: SubchannelFactory,
        settings: ChannelSettings,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        # The check `sidecar validate` runs too: a target gets one verdict everywhere.
        self.target = resolvers.check_target(target)
        self.target_text = target
        self.settings = settings
        self._factory = factory
        self._loop = loop
        self.picker: Picker = QueuePicker()
        self.connectivity: Connectivity = IDLE
        self._builder = _registry.get(settings.lb_policy)
        self._balancer: Balancer | None = None
        self._resolver: Resolver | None = None
        self._closed = False
        self._closing_tasks: set[asyncio.Task[None]] = set()
        self._subchannels: set[Subchannel] = set()
        self._watchers: list[Callable[[], None]] = []
        self._aio_event: asyncio.Event | None = None
        self._cond = threading.Condition()
        self._generation = 0
        self._detector: Any = None
        self._eject_timer: asyncio.TimerHandle | None = None
        if settings.outlier_detection is not None:
            from health.outlier import OutlierDetector

            self._detector = OutlierDetector(settings.outlier_detection)

    # -- lifecycle (on the loop) ---------------------------------------------------------------

    def start(self) -> None:
        """Build the policy and the resolver; must run on the core's loop."""
        self._balancer = self._builder.build(
            _BalancerSide(self), BalancerOptions(self.target_text, dict(self.settings.lb_config))
        )
        self.connectivity = CONNECTING
        self._resolver = resolvers.get(self.target.scheme).build(
            self.target, _ResolverSide(self), self.settings.resolver_options
        )

    async def aclose(self) -> None:
        """Stop resolving, close every subchannel, fail queued calls; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._eject_timer is not None:
            self._eject_timer.cancel()
        if self._resolver is not None:
            await self._resolver.aclose()
        if self._balancer is not None:
            self._balancer.close()
        self._publish(SHUTDOWN, ErrorPicker(grpc.StatusCode.UNAVAILABLE, "channel closed"))
        for sc in list(self._subchannels):
            self._close_subchannel(sc, grace=None)
        if self._closing_tasks:
            await asyncio.wait(list(self._closing_tasks))

    @property
    def closed(self) -> bool:
        """Whether ``aclose`` has begun."""
        return self._closed

    @property
    def subchannels(self) -> list[Subchannel]:
        """Live subchannels (for admin endpoints and tests)."""
        return sorted(self._subchannels, key=lambda sc: str(sc.address))

    # -- picking (any thread) ------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Bumped on every new picker; lets waiters detect a change they raced with."""
        return self._generation

    def aio_picker_event(self) -> asyncio.Event:
        """An event set when the next picker is published (aio channels; on the loop)."""
        if self._aio_event is None:
            self._aio_event = asyncio.Event()
        return self._aio_event

    def wait_for_picker_sync(self, generation: int, timeout: float | None) -> bool:
        """Block until a picker newer than ``generation`` exists; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._generation != generation, timeout)

    def pick_now(self, info: PickInfo, wait_for_ready: bool) -> PickResult | None:
        """Pick from the current picker; None means wait for the next one.

        Raises ``PickFailed`` for a fail-fast call the picker fails.
        """
        try:
            return self.picker.pick(info)
        except NoSubchannelAvailable:
            return None
        except PickFailed:
            if wait_for_ready and not self._closed:
                return None
            raise

    def add_state_watcher(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on the loop after every connectivity/picker change."""
        self._watchers.append(callback)

    # -- resolver side -------------------------------------------------------------------------

    def _on_resolver_state(self, state: ResolverState) -> None:
        if not self._closed and self._balancer is not None:
            self._balancer.update_resolver_state(state)

    def _on_resolver_error(self, error: Exception) -> None:
        log.warning("resolver for %s: %s", self.target_text, error)
        if not self._closed and self._balancer is not None:
            self._balancer.resolver_error(error)

    # -- balancer side -------------------------------------------------------------------------

    def _new_subchannel(self, address: Address, listener: StateListener) -> Subchannel:
        sc = self._factory(
            address,
            listener,
            loop=self._loop,
            health_service=self.settings.health_check_service,
            on_done=self._on_call_done if self._detector is not None else None,
        )
        self._subchannels.add(sc)
        if self._detector is not None:
            self._detector.add(sc)
        return sc

    def _remove_subchannel(self, sc: Subchannel) -> None:
        self._close_subchannel(sc, grace=self.settings.drain_timeout)

    def _close_subchannel(self, sc: Subchannel, grace: float | None) -> None:
        if sc not in self._subchannels:
            return
        self._subchannels.discard(sc)
        if self._detector is not None:
            self._detector.remove(sc)
        task = self._loop.create_task(sc.aclose(grace))  # type: ignore[attr-defined]
        self._closing_tasks.add(task)
        task.add_done_callback(self._closing_tasks.discard)

    def _publish(self, connectivity: Connectivity, picker: Picker) -> None:
        self.connectivity = connectivity
        self.picker = picker
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
        if self._aio_event is not None:
            event, self._aio_event = self._aio_event, None
            event.set()
        for watcher in list(self._watchers):
            watcher()

    def _resolve_now(self) -> None:
        if self._resolver is not None and not self._closed:
            self._resolver.resolve_now()

    # -- outlier detection ---------------------------------------------------------------------

    def _on_call_done(self, sc: Subchannel, code: grpc.StatusCode) -> None:
        # May run on a grpcio thread (sync channels): the detector locks; ejection hops to the loop.
        if self._detector.record(sc, code):
            with contextlib.suppress(RuntimeError):  # loop closed: the channel is gone
                self._loop.call_soon_threadsafe(self._apply_ejection, sc)

    def _apply_ejection(self, sc: Subchannel) -> None:
        if sc in self._subchannels and self._detector.is_ejected(sc):
            log.warning("%s: ejecting %s after consecutive failures", self.target_text, sc.address)
            sc.set_ejected(True)
            self._schedule_unejection()

    def _schedule_unejection(self) -> None:
        if self._eject_timer is not None:
            self._eject_timer.cancel()
            self._eject_timer = None
        when = self._detector.next_expiry()
        if when is None or self._closed:
            return
        delay = max(0.0, when - time.monotonic())
        self._eject_timer = self._loop.call_later(delay, self._uneject_due)

    def _uneject_due(self) -> None:
        self._eject_timer = None
        for sc in self._detector.expired():
            if sc in self._subchannels:
                log.info("%s: returning %s to rotation", self.target_text, sc.address)
                sc.set_ejected(False)
        self._schedule_unejection()


class _ResolverSide:
    """The resolver's listener (grpc-go's ccResolverWrapper)."""

    __slots__ = ("_core",)

    def __init__(self, core: ChannelCore) -> None:
        self._core = core

    def update_state(self, state: ResolverState) -> None:
        self._core._on_resolver_state(state)

    def report_error(self, error: Exception) -> None:
        self._core._on_resolver_error(error)


class _BalancerSide:
    """The policy's controller (grpc-go's ccBalancerWrapper)."""

    __slots__ = ("_core",)

    def __init__(self, core: ChannelCore) -> None:
        self._core = core

    def new_subchannel(
        self, address: Address, listener: Callable[[Subchannel, SubchannelState], None]
    ) -> Subchannel:
        return self._core._new_subchannel(address, listener)

    def remove_subchannel(self, subchannel: Subchannel) -> None:
        self._core._remove_subchannel(subchannel)

    def update_state(self, connectivity: Connectivity, picker: Picker) -> None:
        if not self._core.closed:
            self._core._publish(connectivity, picker)

    def resolve_now(self) -> None:
        self._core._resolve_now()


def channel_options(
    options: Sequence[tuple[str, Any]] | None, target: Target
) -> list[tuple[str, Any]]:
    """Options for every subchannel: the user's, plus pick_first and the service's authority."""
    result = [(k, v) for k, v in (options or ()) if k != "grpc.lb_policy_name"]
    keepalive_ms = dict(result).get("grpc.keepalive_time_ms")
    if isinstance(keepalive_ms, int) and keepalive_ms < SERVER_MIN_PING_INTERVAL_MS:
        # Not an error: the server may be configured to allow it. But against a default
        # server the connection dies with GOAWAY too_many_pings, a classic outage.
        log.warning(
            "%s: grpc.keepalive_time_ms=%d is below the %d s a default gRPC server allows; "
            "it will answer GOAWAY too_many_pings unless its "
            "grpc.http2.min_ping_interval_without_data_ms permits it",
            target,
            keepalive_ms,
            SERVER_MIN_PING_INTERVAL_MS // 1000,
        )
    result.append(("grpc.lb_policy_name", "pick_first"))
    if not any(k == "grpc.default_authority" for k, _ in result):
        # The service's name (not a pod IP), as gRPC would send it; the resolver knows it.
        authority = resolvers.default_authority(target)
        if authority:
            result.append(("grpc.default_authority", authority))
    return result
