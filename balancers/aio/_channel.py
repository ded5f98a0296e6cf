"""The balanced ``grpc.aio.Channel``: generated stubs take it unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from balancers._base import READY, Connectivity, PickFailed, PickInfo
from balancers._calls import aio_call_code
from balancers._channel_api import ChannelMethods
from balancers._core import ChannelClosed, ChannelCore, ChannelSettings, channel_options
from balancers._subchannel import (
    AioSubchannel,
    EndpointSubchannel,
    StateListener,
    endpoint,
    grpc_target,
)
from balancers.aio._deferred import DEFERRED_BY_KIND
from balancers.aio._retrying import RETRYING_BY_KIND
from resolvers import Address
from telemetry.rpc_kind import RpcKind

CLOSED_MESSAGE = "Channel is closed."
"""What ``grpc.aio`` says (in a ``grpc.aio.UsageError``) about a call on a closed channel."""


def closed_error() -> grpc.aio.UsageError:
    """The error ``grpc.aio`` raises for a call on a closed channel."""
    return grpc.aio.UsageError(CLOSED_MESSAGE)


class _MultiCallable:
    """Pick, then call grpcio's own multicallable on the picked endpoint."""

    __slots__ = ("_core", "_info", "_kind", "_method", "_serializers")

    def __init__(
        self, core: ChannelCore, kind: RpcKind, method: str, ser: Any, deser: Any, registered: bool
    ) -> None:
        self._core = core
        self._kind = kind
        self._method = method
        self._serializers = (ser, deser, registered)
        self._info = PickInfo(method)

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        core = self._core
        info = self._info if metadata is None else PickInfo(self._method, metadata)
        try:
            result = core.pick_now(info, bool(wait_for_ready))
        except ChannelClosed:
            raise closed_error() from None
        except PickFailed:
            result = None  # the deferred call turns the same pick into an AioRpcError
        if result is None:
            return DEFERRED_BY_KIND[self._kind](
                core,
                self._kind,
                self._method,
                self._serializers,
                request,
                timeout,
                metadata,
                credentials,
                wait_for_ready,
                compression,
            )
        sc = endpoint(result.subchannel)
        ser, deser, registered = self._serializers
        call = sc.multicallable(self._kind, self._method, ser, deser, registered)(
            request,
            timeout=timeout,
            metadata=metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        sc.picks += 1
        done = result.done
        if done is not None or sc.tracks_results:
            call.add_done_callback(lambda c: sc.call_done(aio_call_code(c), done))
        return call


class _UnaryUnary(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()


class _UnaryStream(_MultiCallable, grpc.aio.UnaryStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()


class _StreamUnary(_MultiCallable, grpc.aio.StreamUnaryMultiCallable):  # type: ignore[misc]
    """``request`` is the request iterator (or None, to ``write()`` instead)."""

    __slots__ = ()


class _StreamStream(_MultiCallable, grpc.aio.StreamStreamMultiCallable):  # type: ignore[misc]
    """``request`` is the request iterator (or None, to ``write()`` instead)."""

    __slots__ = ()


class _RetryingMultiCallable(_MultiCallable):
    """A unary-request multicallable under the channel's retry policy."""

    __slots__ = ()

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        if self._core.closed:
            raise closed_error()
        return RETRYING_BY_KIND[self._kind](
            self._core,
            self._kind,
            self._method,
            self._serializers,
            request,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
            compression,
        )


class _RetryingUnaryUnary(_RetryingMultiCallable, grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __slots__ = ()


class _RetryingUnaryStream(_RetryingMultiCallable, grpc.aio.UnaryStreamMultiCallable):  # type: ignore[misc]
    __slots__ = ()


class BalancedChannel(ChannelMethods, grpc.aio.Channel):  # type: ignore[misc]
    """A ``grpc.aio.Channel`` whose calls are spread over the endpoints a resolver finds.

    Build it with :func:`balancers.aio.insecure_channel` or :func:`balancers.aio.secure_channel`.
    Built while an event loop runs, it binds to that loop and starts resolving at once; built
    with none running (at import time, in a sync constructor), it binds to the loop of its
    first use: a call, ``async with``, ``channel_ready()``, ``wait_for_state_change()`` or
    ``get_state(try_to_connect=True)``. Once bound, it serves that loop only.

    As with ``grpc.aio``, a call on a closed channel raises ``grpc.aio.UsageError``, and a call
    still waiting for an endpoint when the channel closes is cancelled.
    """

    _multicallable_types: Mapping[RpcKind, type] = {
        RpcKind.UNARY_UNARY: _UnaryUnary,
        RpcKind.UNARY_STREAM: _UnaryStream,
        RpcKind.STREAM_UNARY: _StreamUnary,
        RpcKind.STREAM_STREAM: _StreamStream,
    }

    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        options: Sequence[tuple[str, Any]] | None,
        settings: ChannelSettings,
        compression: grpc.Compression | None = None,
        interceptors: Sequence[Any] | None = None,
    ) -> None:
        self._credentials = credentials
        self._compression = compression
        self._interceptors = list(interceptors) if interceptors else None
        self._core = ChannelCore(target, self._make_subchannel, settings)
        self._multicallable_owner = self._core
        if settings.retry is not None:  # request-streaming calls are never retried
            self._multicallable_types = {
                **self._multicallable_types,
                RpcKind.UNARY_UNARY: _RetryingUnaryUnary,
                RpcKind.UNARY_STREAM: _RetryingUnaryStream,
            }
        self._options = channel_options(options, self._core.target)
        self._state_event: asyncio.Event | None = None  # made on the loop, when awaited
        self._core.add_state_watcher(self._on_core_state)
        if _loop_running():
            self._core.start()

    def _make_subchannel(
        self,
        address: Address,
        listener: StateListener,
        *,
        loop: asyncio.AbstractEventLoop,
        health_service: str | None,
        on_done: Any,
    ) -> EndpointSubchannel:
        target = grpc_target(address)
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(
                target, self._options, self._compression, self._interceptors
            )
        else:
            channel = grpc.aio.secure_channel(
                target, self._credentials, self._options, self._compression, self._interceptors
            )
        return AioSubchannel(
            address, channel, listener, loop=loop, health_service=health_service, on_done=on_done
        )

    def _on_core_state(self) -> None:
        event, self._state_event = self._state_event, None
        if event is not None:
            event.set()

    async def _next_state(self) -> None:
        if self._state_event is None:
            self._state_event = asyncio.Event()
        await self._state_event.wait()

    @property
    def core(self) -> ChannelCore:
        """The resolver/policy core (endpoints and their states, for admin and tests)."""
        return self._core

    def snapshot(self) -> dict[str, Any]:
        """Target, policy, state and endpoints as plain data, from any thread (see
        :meth:`ChannelCore.snapshot <balancers._core.ChannelCore.snapshot>`)."""
        return self._core.snapshot()

    # -- grpc.aio.Channel ----------------------------------------------------------------------

    def get_state(self, try_to_connect: bool = False) -> Connectivity:
        """The aggregate connectivity of the endpoints (gRPC's rule); IDLE until bound.

        ``try_to_connect`` binds the channel to the running loop, if one runs.
        """
        if try_to_connect and not self._core.started and _loop_running():
            self._core.ensure_started()
        return self._core.connectivity

    async def wait_for_state_change(self, last_observed_state: Connectivity) -> None:
        """Return once the state differs from ``last_observed_state``.

        Raises ``grpc.aio.UsageError`` if the channel is or gets closed, as ``grpc.aio`` does.
        """
        self._bind()
        while self._core.connectivity == last_observed_state and not self._core.closed:
            await self._next_state()
        if self._core.closed:
            raise closed_error()

    async def channel_ready(self) -> None:
        """Return once some endpoint is READY; ``grpc.aio.UsageError`` once closed."""
        self._bind()
        while self._core.connectivity is not READY:
            if self._core.closed:
                raise closed_error()
            await self._next_state()

    async def close(self, grace: float | None = None) -> None:
        """Refuse new calls, end those waiting for an endpoint, stop resolving and close every
        endpoint, letting calls in flight finish for ``grace`` seconds (None: cancel them)."""
        await self._core.aclose(grace)

    def _bind(self) -> None:
        if self._core.closed:
            raise closed_error()
        self._core.ensure_started()

    async def __aenter__(self) -> BalancedChannel:
        self._core.ensure_started()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(None)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
