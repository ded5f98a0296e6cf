"""The balanced ``grpc.aio.Channel``: generated stubs take it unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc

from balancers._base import READY, SHUTDOWN, Connectivity, PickFailed, PickInfo
from balancers._calls import aio_call_code
from balancers._channel_api import ChannelMethods
from balancers._core import ChannelCore, ChannelSettings, channel_options
from balancers._subchannel import (
    AioSubchannel,
    StateListener,
    Subchannel,
    grpc_target,
)
from balancers.aio._deferred import DEFERRED_BY_KIND
from balancers.aio._retrying import RETRYING_BY_KIND
from resolvers import Address


class _MultiCallable:
    """Pick, then call grpcio's own multicallable on the picked endpoint."""

    __slots__ = ("_core", "_info", "_kind", "_method", "_serializers")

    def __init__(
        self, core: ChannelCore, kind: int, method: str, ser: Any, deser: Any, registered: bool
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
        sc = result.subchannel
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
        if done is not None or sc._on_done is not None:
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
    Needs a running event loop at construction, like ``grpc.aio`` channels in practice.
    """

    _multicallable_types = (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)

    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        options: Sequence[tuple[str, Any]] | None,
        settings: ChannelSettings,
        compression: grpc.Compression | None = None,
        interceptors: Sequence[Any] | None = None,
    ) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # The resolver and the endpoint watchers are tasks on this loop: there must be one.
            raise RuntimeError(
                "balancers.aio channels need a running event loop: create them inside async "
                "code (e.g. in main()), or use the sync balancers.insecure_channel"
            ) from None
        self._credentials = credentials
        self._compression = compression
        self._interceptors = list(interceptors) if interceptors else None
        self._core = ChannelCore(target, self._make_subchannel, settings, loop)
        self._multicallable_owner = self._core
        if settings.retry is not None:  # request-streaming calls are never retried
            self._multicallable_types = (
                _RetryingUnaryUnary,
                _RetryingUnaryStream,
                _StreamUnary,
                _StreamStream,
            )
        self._options = channel_options(options, self._core.target)
        self._state_event = asyncio.Event()
        self._core.add_state_watcher(self._on_core_state)
        self._core.start()

    def _make_subchannel(
        self,
        address: Address,
        listener: StateListener,
        *,
        loop: asyncio.AbstractEventLoop,
        health_service: str | None,
        on_done: Any,
    ) -> Subchannel:
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
        event, self._state_event = self._state_event, asyncio.Event()
        event.set()

    @property
    def core(self) -> ChannelCore:
        """The resolver/policy core (endpoints and their states, for admin and tests)."""
        return self._core

    # -- grpc.aio.Channel ----------------------------------------------------------------------

    def get_state(self, try_to_connect: bool = False) -> Connectivity:
        """The aggregate connectivity of the endpoints (gRPC's rule)."""
        return self._core.connectivity

    async def wait_for_state_change(self, last_observed_state: Connectivity) -> None:
        """Return once the state differs from ``last_observed_state``."""
        while self._core.connectivity == last_observed_state:
            await self._state_event.wait()

    async def channel_ready(self) -> None:
        """Return once some endpoint is READY."""
        while self._core.connectivity is not READY:
            if self._core.connectivity is SHUTDOWN:
                raise RuntimeError("channel closed")
            await self._state_event.wait()

    async def close(self, grace: float | None = None) -> None:
        """Stop resolving and close every endpoint, letting calls finish for ``grace`` s."""
        if grace:
            await asyncio.gather(
                *(sc.channel.close(grace) for sc in self._core.subchannels),
                return_exceptions=True,
            )
        await self._core.aclose()

    async def __aenter__(self) -> BalancedChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(None)
