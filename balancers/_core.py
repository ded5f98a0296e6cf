"""The channel core: resolver -> policy -> picker, shared by the aio and the sync channel.

All state changes run serially on one event loop: the one running ``start()``, which is the
loop of the first use for ``balancers.aio`` and a private thread's for the sync channel. Calls
read ``core.picker`` from any thread: it is replaced, never mutated, so reading it needs no lock.
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
    NoSubchannelAvailable,
    Picker,
    PickFailed,
    PickInfo,
    PickResult,
    QueuePicker,
    Subchannel,
    SubchannelState,
    parse_policy_config,
)
from balancers._retry import RetryPolicy
from balancers._subchannel import EndpointSubchannel, StateListener
from health.outlier import OutlierConfig, OutlierDetector
from resolvers import Address, Resolver, ResolverOptions, ResolverState, Target

log = logging.getLogger("meshkit.balancers")

SERVER_MIN_PING_INTERVAL_MS = 300_000
"""A default gRPC server's minimum interval between client pings (5 min)."""

SubchannelFactory = Callable[..., EndpointSubchannel]
"""``factory(address, listener, loop=..., health_service=..., on_done=...)``."""

CLOSED_DETAILS = "Channel closed!"
"""grpcio's details for calls ended by closing their channel."""

NO_LOOP = (
    "balancers.aio channels run on an event loop: use them from async code (a channel binds "
    "to the loop running at its first use), or use the sync balancers.insecure_channel"
)


class ChannelClosed(PickFailed):
    """Raised by a closed channel's picker: the call must not start, nor be retried.

    The channels turn it into what grpcio raises for a call on a closed channel
    (``grpc.aio.UsageError``, ``ValueError``), or for a call still waiting for an endpoint
    when the channel closes, into a cancellation, as grpcio cancels its calls in flight.
    """

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.CANCELLED, CLOSED_DETAILS)


class _ClosedPicker(Picker):
    """Published when closing begins: no call may start any more."""

    def pick(self, info: PickInfo) -> PickResult:
        raise ChannelClosed()


@dataclass(frozen=True)
class ChannelSettings:
    """What a balanced channel is built from, besides its target and transport."""

    lb_policy: str = "round_robin"
    lb_config: dict[str, Any] = field(default_factory=dict)
    health_check_service: str | None = None
    """Service name checked with grpc.health.v1 Watch per endpoint; None is off (as in gRPC)."""
    outlier_detection: OutlierConfig | None = None
    """Eject endpoints that keep failing; None is off."""
    resolver_options: ResolverOptions = field(default_factory=ResolverOptions)
    drain_timeout: float = 30.0
    """How long a removed endpoint may finish its in-flight calls before they are cancelled."""
    retry: RetryPolicy | None = None
    """Retries of unary-request calls (``balancers.RetryPolicy``); None is one attempt."""


class ChannelCore:
    """Drives a resolver and a policy for one target and publishes pickers.

    Built anywhere (the target and the policy are checked at once); bound to an event loop by
    ``start()``, which must run on that loop.
    """

    _loop: asyncio.AbstractEventLoop
    """The loop everything runs on; set by ``start()``."""

    def __init__(
        self,
        target: str,
        factory: SubchannelFactory,
        settings: ChannelSettings,
    ) -> None:
        # The check `sidecar validate` runs too: a target gets one verdict everywhere.
        self.target = resolvers.check_target(target)
        self.target_text = target
        self.settings = settings
        self._factory = factory
        self._started = False
        self.picker: Picker = QueuePicker()
        self.connectivity: Connectivity = IDLE
        self._builder = _registry.get(settings.lb_policy)
        # The policy's own config, checked by the policy at once (a bad one fails here, where
        # the channel is made, not at the first call).
        self._policy_config = parse_policy_config(self._builder, settings.lb_config)
        self._balancer: Balancer | None = None
        self._resolver: Resolver | None = None
        self._closed = False
        self._close_grace: float | None = None
        self._closing_tasks: set[asyncio.Task[None]] = set()
        self._subchannels: set[EndpointSubchannel] = set()
        self._watchers: list[Callable[[], None]] = []
        self._aio_event: asyncio.Event | None = None
        self._cond = threading.Condition()
        self._generation = 0
        self._detector: OutlierDetector[EndpointSubchannel] | None = None
        self._eject_timer: asyncio.TimerHandle | None = None
        if settings.outlier_detection is not None:
            self._detector = OutlierDetector(settings.outlier_detection)

    # -- lifecycle (on the loop) ---------------------------------------------------------------

    def start(self) -> None:
        """Bind to the running event loop, then build the policy and the resolver."""
        self._loop = _running_loop()
        self._started = True
        self._balancer = self._builder.build(
            _BalancerSide(self), BalancerOptions(self.target_text, self._policy_config)
        )
        self.connectivity = CONNECTING
        self._resolver = resolvers.get(self.target.scheme).build(
            self.target, _ResolverSide(self), self.settings.resolver_options
        )

    def ensure_started(self) -> None:
        """Start on the running loop unless started (or closed) already: ``balancers.aio``
        channels bind on first use. Raises ``RuntimeError`` when used from another loop."""
        if not self._started:
            if not self._closed:
                self.start()
        elif _running_loop() is not self._loop:
            raise RuntimeError(
                f"this balancers.aio channel to {self.target_text} is bound to the event loop "
                "of its first use and is used from another one: make one channel per loop"
            )

    @property
    def started(self) -> bool:
        """Whether ``start()`` has run (the core is bound to its loop)."""
        return self._started

    async def aclose(self, grace: float | None = None) -> None:
        """Close: no call starts from now on, calls waiting for an endpoint are ended, then
        stop resolving and close every subchannel, whose calls in flight get ``grace`` seconds
        to finish (None: cancelled at once, as grpcio does). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._close_grace = grace
        if self._eject_timer is not None:
            self._eject_timer.cancel()
        # First: grpcio's channel refuses new calls as soon as its close begins.
        self._publish(SHUTDOWN, _ClosedPicker())
        if self._resolver is not None:
            await self._resolver.aclose()
        if self._balancer is not None:
            self._balancer.close()  # gives every subchannel back, closing it with the grace
        for sc in list(self._subchannels):
            self._close_subchannel(sc, grace)
        if self._closing_tasks:
            await asyncio.wait(list(self._closing_tasks))

    @property
    def closed(self) -> bool:
        """Whether ``aclose`` has begun."""
        return self._closed

    @property
    def subchannels(self) -> list[EndpointSubchannel]:
        """Live subchannels (for admin endpoints and tests)."""
        return sorted(self._subchannels, key=lambda sc: str(sc.address))

    @property
    def ejections_total(self) -> int:
        """Outlier-detection ejections so far (0 without outlier detection)."""
        return 0 if self._detector is None else int(self._detector.ejections_total)

    def snapshot(self) -> dict[str, Any]:
        """The channel's state as plain data: ``target``, ``lb_policy``, aggregate ``state``,
        ``ejections_total`` and ``endpoints`` (each ``address``, ``state`` as the picker sees
        it, ``reason``, ``health``, ``ejected``, ``picks``), sorted by address.

        Safe from any thread while the loop works: the live subchannel set is copied in one
        step and each field read is one attribute holding an immutable value, replaced whole
        by the loop. A snapshot may mix values from just before and after a change; no value
        is ever torn.
        """
        endpoints = []
        for sc in self.subchannels:
            state = sc.state  # one read: connectivity and reason from the same snapshot
            endpoints.append(
                {
                    "address": str(sc.address),
                    "state": state.connectivity.name,
                    "reason": state.reason,
                    "health": sc.health,
                    "ejected": bool(sc.ejected),
                    "picks": int(sc.picks),
                }
            )
        return {
            "target": self.target_text,
            "lb_policy": self.settings.lb_policy,
            "state": self.connectivity.name,
            "ejections_total": self.ejections_total,
            "endpoints": endpoints,
        }

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

    def _new_subchannel(self, address: Address, listener: StateListener) -> EndpointSubchannel:
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

    def _remove_subchannel(self, sc: EndpointSubchannel) -> None:
        # A removed endpoint drains; a closing channel gives its calls the close's grace.
        grace = self._close_grace if self._closed else self.settings.drain_timeout
        self._close_subchannel(sc, grace)

    def _close_subchannel(self, sc: EndpointSubchannel, grace: float | None) -> None:
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

    def _on_call_done(self, sc: EndpointSubchannel, code: grpc.StatusCode) -> None:
        # May run on a grpcio thread (sync channels): the detector locks; ejection hops to the loop.
        # Only registered as the subchannels' done hook when there is a detector.
        assert self._detector is not None
        if self._detector.record(sc, code):
            with contextlib.suppress(RuntimeError):  # loop closed: the channel is gone
                self._loop.call_soon_threadsafe(self._apply_ejection, sc)

    def _apply_ejection(self, sc: EndpointSubchannel) -> None:
        detector = self._detector
        if detector is not None and sc in self._subchannels and detector.is_ejected(sc):
            log.warning("%s: ejecting %s after consecutive failures", self.target_text, sc.address)
            sc.set_ejected(True)
            self._schedule_unejection()

    def _schedule_unejection(self) -> None:
        if self._eject_timer is not None:
            self._eject_timer.cancel()
            self._eject_timer = None
        when = self._detector.next_expiry() if self._detector is not None else None
        if when is None or self._closed:
            return
        delay = max(0.0, when - time.monotonic())
        self._eject_timer = self._loop.call_later(delay, self._uneject_due)

    def _uneject_due(self) -> None:
        self._eject_timer = None
        for sc in self._detector.expired() if self._detector is not None else ():
            if sc in self._subchannels:
                log.info("%s: returning %s to rotation", self.target_text, sc.address)
                sc.set_ejected(False)
        self._schedule_unejection()


def _running_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(NO_LOOP) from None


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
        if not isinstance(subchannel, EndpointSubchannel):
            raise TypeError(f"not a subchannel of this channel: {subchannel!r}")
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
