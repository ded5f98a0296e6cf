"""Subchannels: one grpcio channel per endpoint, its connectivity watched.

A subchannel is a grpcio channel to a single literal address with ``pick_first``, so grpcio
does no resolving or balancing of its own. What a policy sees (``state``) folds three things
together, as gRPC does (gRFC A17, A50): transport connectivity, the endpoint's health-check
verdict, and outlier ejection. A connected endpoint that is unhealthy or ejected is reported
TRANSIENT_FAILURE, so policies need to know nothing about health.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import grpc

from balancers._base import (
    CONNECTING,
    IDLE,
    READY,
    SHUTDOWN,
    TRANSIENT_FAILURE,
    Connectivity,
    DoneInfo,
    Subchannel,
    SubchannelState,
)
from health.watch import HealthVerdict
from resolvers import Address
from telemetry.rpc_kind import RpcKind

log = logging.getLogger("meshkit.balancers")

StateListener = Callable[["EndpointSubchannel", SubchannelState], None]
DoneHook = Callable[["EndpointSubchannel", grpc.StatusCode], None]


def grpc_target(address: Address) -> str:
    """The grpcio target naming exactly this address, so grpcio resolves nothing itself."""
    if address.network == "unix":
        # grpcio takes both unix:relative and unix:/absolute paths.
        return f"unix:{address.host}"
    if address.is_ip:
        return f"ipv6:{address}" if ":" in address.host else f"ipv4:{address}"
    # A host name from a static list: grpcio's own resolver turns it into addresses once.
    return f"dns:///{address}"


def endpoint(subchannel: Subchannel) -> EndpointSubchannel:
    """A picked subchannel as the channel made it. Pickers only hand out what the channel's
    controller gave their policy, so this is a cast, not a check: the call path pays nothing."""
    return cast(EndpointSubchannel, subchannel)


class EndpointSubchannel:
    """One endpoint. Created by the channel core for a policy; never by a policy itself."""

    def __init__(
        self,
        address: Address,
        channel: Any,
        listener: StateListener,
        *,
        loop: asyncio.AbstractEventLoop,
        health_service: str | None,
        on_done: DoneHook | None,
    ) -> None:
        self.address = address
        self.channel = channel
        self._listener = listener
        self._loop = loop
        self._health_service = health_service
        self._on_done = on_done
        self._raw: Connectivity = IDLE
        self._raw_reason = ""
        self._health: HealthVerdict | None = (
            None if health_service is None else HealthVerdict.PENDING
        )
        self._health_reason = ""
        self._ejected = False
        self._state = SubchannelState(IDLE)
        self._closed = False
        self._callables: dict[tuple[Any, ...], Any] = {}
        self.picks = 0
        """Calls started on this subchannel (for admin endpoints and tests)."""

    @property
    def state(self) -> SubchannelState:
        """The state a policy sees (connectivity x health x ejection)."""
        return self._state

    @property
    def connectivity(self) -> Connectivity:
        """The transport's own connectivity, before health and ejection."""
        return self._raw

    @property
    def health(self) -> str:
        """The health-check verdict's name, or ``"off"``."""
        return "off" if self._health is None else self._health.name.lower()

    @property
    def ejected(self) -> bool:
        """Whether outlier detection has ejected this endpoint."""
        return self._ejected

    def connect(self) -> None:
        """Start connecting (and keep reconnecting) until closed."""
        raise NotImplementedError

    def update_address(self, address: Address) -> None:
        """New attributes for the same endpoint (the connection stays)."""
        self.address = address

    def set_ejected(self, ejected: bool) -> None:
        """Outlier detection verdict; must be called on the event loop."""
        if ejected != self._ejected:
            self._ejected = ejected
            self._publish()

    def multicallable(
        self, kind: RpcKind, method: str, ser: Any, deser: Any, registered: bool
    ) -> Any:
        """The grpcio multicallable for this method on this endpoint (cached)."""
        key = (kind, method, ser, deser, registered)
        found = self._callables.get(key)
        if found is None:
            factory = getattr(self.channel, kind.value)  # grpcio's method of that name
            found = factory(method, ser, deser, _registered_method=registered)
            self._callables[key] = found
        return found

    @property
    def tracks_results(self) -> bool:
        """Whether call results feed outlier detection (then every call's end must be told to
        :meth:`call_done`; otherwise only calls whose pick asked for a done hook)."""
        return self._on_done is not None

    def call_done(self, code: grpc.StatusCode, done: Callable[[DoneInfo], None] | None) -> None:
        """Account a finished call: the policy's done hook, then outlier detection."""
        if done is not None:
            done(DoneInfo(code))
        if self._on_done is not None:
            self._on_done(self, code)

    # -- state folding -------------------------------------------------------------------------

    def _set_raw(self, state: Connectivity, reason: str = "") -> None:
        if self._closed:
            return
        previous = self._raw
        self._raw = state
        if state is not READY:
            self._raw_reason = reason or f"endpoint {self.address} is {state.name}"
        if state is READY and previous is not READY:
            self._start_health()
        elif state is not READY and previous is READY:
            self._stop_health()
        self._publish()

    def _set_health(self, verdict: HealthVerdict, reason: str) -> None:
        if self._closed or self._health is None:
            return
        self._health = verdict
        self._health_reason = reason
        self._publish()

    def _fold(self) -> SubchannelState:
        if self._raw is not READY:
            return SubchannelState(self._raw, self._raw_reason)
        if self._health is not None:
            if self._health is HealthVerdict.PENDING:
                return SubchannelState(CONNECTING, f"endpoint {self.address}: health pending")
            if self._health is HealthVerdict.UNHEALTHY:
                return SubchannelState(
                    TRANSIENT_FAILURE,
                    f"endpoint {self.address} unhealthy: {self._health_reason}",
                )
        if self._ejected:
            return SubchannelState(
                TRANSIENT_FAILURE, f"endpoint {self.address} ejected by outlier detection"
            )
        return SubchannelState(READY)

    def _publish(self) -> None:
        new = self._fold()
        if new != self._state:
            self._state = new
            self._listener(self, new)

    def _start_health(self) -> None:
        if self._health is not None:
            self._health = HealthVerdict.PENDING
            self._start_health_watch()

    def _stop_health(self) -> None:
        if self._health is not None:
            self._stop_health_watch()

    def _start_health_watch(self) -> None:
        raise NotImplementedError

    def _stop_health_watch(self) -> None:
        raise NotImplementedError

    def _mark_closed(self) -> bool:
        if self._closed:
            return False
        self._closed = True
        self._state = SubchannelState(SHUTDOWN)
        return True

    def __repr__(self) -> str:
        return f"<EndpointSubchannel {self.address} {self._state.connectivity.name}>"


class AioSubchannel(EndpointSubchannel):
    """A subchannel over ``grpc.aio``: one watcher task per endpoint."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watcher: asyncio.Task[None] | None = None
        self._health_task: asyncio.Task[None] | None = None

    def connect(self) -> None:
        if self._watcher is None and not self._closed:
            self._watcher = self._loop.create_task(self._watch())

    async def _watch(self) -> None:
        channel = self.channel
        state = channel.get_state(try_to_connect=True)
        while not self._closed:
            self._set_raw(state)
            await channel.wait_for_state_change(state)
            # IDLE means the connection went away: reconnect at once, like gRPC's round_robin.
            state = channel.get_state(try_to_connect=True)

    def _start_health_watch(self) -> None:
        from health.aio import watch_health

        self._stop_health_watch()
        assert self._health_service is not None
        self._health_task = self._loop.create_task(
            watch_health(self.channel, self._health_service, self._set_health)
        )

    def _stop_health_watch(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            self._health_task = None

    async def aclose(self, grace: float | None) -> None:
        """Stop watching; let in-flight calls finish for up to ``grace`` seconds, then close."""
        if not self._mark_closed():
            return
        self._stop_health_watch()
        if self._watcher is not None:
            self._watcher.cancel()
            # asyncio.wait neither raises the watcher's CancelledError nor hides our own.
            await asyncio.wait([self._watcher])
        await self.channel.close(grace)


class SyncSubchannel(EndpointSubchannel):
    """A subchannel over the sync ``grpc.Channel``; grpcio's callbacks hop onto the loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscribed = False
        self._health_stop: threading.Event | None = None
        self._inflight = 0
        self._lock = threading.Lock()
        self._drained = threading.Event()

    def _on_connectivity(self, state: Connectivity) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: the channel is shutting down
            self._loop.call_soon_threadsafe(self._on_raw, state)

    def _on_raw(self, state: Connectivity) -> None:
        self._set_raw(state)
        if state is IDLE and not self._closed:
            # Re-subscribing with try_to_connect is grpcio's public way to leave IDLE.
            self.channel.unsubscribe(self._on_connectivity)
            self.channel.subscribe(self._on_connectivity, try_to_connect=True)

    def connect(self) -> None:
        if not self._subscribed and not self._closed:
            self._subscribed = True
            self.channel.subscribe(self._on_connectivity, try_to_connect=True)

    def acquire(self) -> bool:
        """Count a call about to start; False once closing (pick again)."""
        with self._lock:
            if self._closed:
                return False
            self._inflight += 1
            return True

    def release(self) -> None:
        """A call counted by ``acquire`` ended."""
        with self._lock:
            self._inflight -= 1
            if self._closed and self._inflight == 0:
                self._drained.set()

    def _start_health_watch(self) -> None:
        from health import watch_health

        self._stop_health_watch()
        stop = threading.Event()
        self._health_stop = stop

        def on_change(verdict: HealthVerdict, reason: str) -> None:
            if not stop.is_set():
                self._loop.call_soon_threadsafe(self._set_health, verdict, reason)

        assert self._health_service is not None
        threading.Thread(
            target=watch_health,
            args=(self.channel, self._health_service, on_change, stop),
            name=f"meshkit-health-{self.address}",
            daemon=True,
        ).start()

    def _stop_health_watch(self) -> None:
        if self._health_stop is not None:
            self._health_stop.set()
            self._health_stop = None

    async def aclose(self, grace: float | None) -> None:
        """Stop watching; let in-flight calls finish for up to ``grace`` seconds, then close."""
        with self._lock:
            if not self._mark_closed():
                return
            if self._inflight == 0:
                self._drained.set()
        self._stop_health_watch()
        if self._subscribed:
            self.channel.unsubscribe(self._on_connectivity)
        if grace:
            await asyncio.to_thread(self._drained.wait, grace)
        await asyncio.to_thread(self._wait_poller_stopped, 1.0)
        self.channel.close()

    def _wait_poller_stopped(self, timeout: float) -> None:
        # grpcio's connectivity poller wakes every 0.2 s and calls into the channel; closing the
        # channel under it makes that thread die with "Channel closed!". With no subscriber left
        # it exits on its next wake-up, so wait for that (grpcio keeps the flag in a private
        # object: if it is not there, close at once as before).
        state = getattr(self.channel, "_connectivity_state", None)
        if state is None:  # grpc.intercept_channel wraps the real channel
            state = getattr(getattr(self.channel, "_channel", None), "_connectivity_state", None)
        deadline = time.monotonic() + timeout
        while getattr(state, "polling", False) and time.monotonic() < deadline:
            time.sleep(0.02)
