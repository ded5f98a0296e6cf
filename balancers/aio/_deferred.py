"""Call objects for calls that must wait for a picker (or fail before reaching an endpoint).

The fast path returns grpcio's own call object. When no endpoint is pickable yet, the call
is made of a pick task and, once picked, grpcio's call; these classes give it the ``grpc.aio``
call API meanwhile. A failed pick looks exactly like a failed RPC (``AioRpcError``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from typing import Any

import grpc
from grpc.aio import AioRpcError, Metadata

from balancers._base import PickFailed, PickInfo
from balancers._calls import aio_call_code
from balancers._core import CLOSED_DETAILS, ChannelClosed, ChannelCore
from balancers._subchannel import endpoint
from telemetry.rpc_kind import RpcKind


class DeferredCall:
    """A call waiting for an endpoint; then a thin forwarder to grpcio's call."""

    def __init__(
        self,
        core: ChannelCore,
        kind: RpcKind,
        method: str,
        serializers: tuple[Any, Any, bool],
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> None:
        core.ensure_started()  # a channel built outside a loop binds on its first call
        self._loop = asyncio.get_running_loop()
        self._core = core
        self._deadline = None if timeout is None else self._loop.time() + timeout
        self._real: Any = None
        self._error: AioRpcError | None = None
        self._locally_cancelled = False
        self._callbacks: list[Callable[[Any], None]] = []
        self._ready = self._loop.create_future()
        self._task = self._loop.create_task(
            self._pick_and_start(
                kind,
                method,
                serializers,
                request,
                metadata,
                credentials,
                wait_for_ready,
                compression,
            )
        )

    async def _pick_and_start(self, *call_args: Any) -> None:
        try:
            real = await self._start_attempt(*call_args)
        except AioRpcError as error:
            self._settle(error)
            return
        self._commit(real)

    async def _start_attempt(
        self,
        kind: RpcKind,
        method: str,
        serializers: tuple[Any, Any, bool],
        request: Any,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> Any:
        """Pick an endpoint (waiting if need be) and start grpcio's call on it.

        A pick that fails, or a deadline reached while waiting, raises ``AioRpcError``; so
        does the channel closing meanwhile, which also marks the call cancelled.
        """
        core = self._core
        info = PickInfo(method, metadata)
        try:
            while True:
                event = core.aio_picker_event()
                result = core.pick_now(info, bool(wait_for_ready))
                if result is not None:
                    break
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(event.wait(), remaining)
        except ChannelClosed:
            # grpcio cancels the calls of a channel being closed: awaiting raises CancelledError.
            self._locally_cancelled = True
            raise _rpc_error(grpc.StatusCode.CANCELLED, CLOSED_DETAILS) from None
        except PickFailed as failed:
            raise _rpc_error(failed.code, failed.details) from None
        except TimeoutError:
            raise _rpc_error(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"deadline exceeded while waiting for an endpoint of {core.target_text} "
                f"(channel {core.connectivity.name})",
            ) from None
        except asyncio.CancelledError:
            if self._error is None:
                self._fail(grpc.StatusCode.CANCELLED, "cancelled before an endpoint was picked")
            raise
        sc = endpoint(result.subchannel)
        ser, deser, registered = serializers
        remaining = self._remaining()
        real = sc.multicallable(kind, method, ser, deser, registered)(
            request,
            timeout=None if remaining is None else max(remaining, 0.0),
            metadata=metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )
        sc.picks += 1
        if result.done is not None or sc.tracks_results:
            done = result.done
            real.add_done_callback(lambda c: sc.call_done(aio_call_code(c), done))
        return real

    def _commit(self, real: Any) -> None:
        """From now on, forward everything to grpcio's call ``real``."""
        self._real = real
        for callback in self._callbacks:
            real.add_done_callback(lambda _c, cb=callback: cb(self))
        self._callbacks.clear()
        self._ready.set_result(None)

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - self._loop.time()

    def _fail(self, code: grpc.StatusCode, details: str) -> None:
        self._settle(_rpc_error(code, details))

    def _settle(self, error: AioRpcError) -> None:
        """End the call with ``error`` without any grpcio call to forward to."""
        self._error = error
        if not self._ready.done():
            self._ready.set_result(None)
        for callback in self._callbacks:
            self._loop.call_soon(callback, self)
        self._callbacks.clear()

    async def _started(self) -> Any:
        # shield: an awaiter being cancelled must not cancel the shared pick.
        await asyncio.shield(self._ready)
        if self._locally_cancelled:
            raise asyncio.CancelledError()
        if self._error is not None:
            raise self._error
        return self._real

    # -- grpc.aio.Call / RpcContext ------------------------------------------------------------

    def cancelled(self) -> bool:
        if self._real is not None:
            return bool(self._real.cancelled())
        return self._locally_cancelled

    def done(self) -> bool:
        if self._real is not None:
            return bool(self._real.done())
        return self._error is not None

    def time_remaining(self) -> float | None:
        if self._real is not None:
            return self._real.time_remaining()  # type: ignore[no-any-return]
        return self._remaining()

    def cancel(self) -> bool:
        if self._real is not None:
            return bool(self._real.cancel())
        if self._error is not None:
            return False
        self._locally_cancelled = True
        # Settle now: a task cancelled before its first step never runs its except clause.
        self._fail(grpc.StatusCode.CANCELLED, "cancelled before an endpoint was picked")
        self._task.cancel()
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._real is not None:
            self._real.add_done_callback(lambda _c: callback(self))
        elif self._error is not None:
            self._loop.call_soon(callback, self)
        else:
            self._callbacks.append(callback)

    async def initial_metadata(self) -> Metadata:
        try:
            real = await self._started()
        except (AioRpcError, asyncio.CancelledError):
            return Metadata()
        return await real.initial_metadata()

    async def trailing_metadata(self) -> Metadata:
        try:
            real = await self._started()
        except (AioRpcError, asyncio.CancelledError):
            return Metadata()
        return await real.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        try:
            real = await self._started()
        except AioRpcError as error:
            return error.code()
        except asyncio.CancelledError:
            return grpc.StatusCode.CANCELLED
        return await real.code()

    async def details(self) -> str:
        try:
            real = await self._started()
        except AioRpcError as error:
            return error.details() or ""
        except asyncio.CancelledError:
            return "cancelled" if self._error is None else self._error.details() or ""
        return await real.details()  # type: ignore[no-any-return]

    async def debug_error_string(self) -> str:
        try:
            real = await self._started()
        except AioRpcError as error:
            return error.debug_error_string() or ""
        except asyncio.CancelledError:
            return ""
        return await real.debug_error_string()  # type: ignore[no-any-return]

    async def wait_for_connection(self) -> None:
        real = await self._started()
        await real.wait_for_connection()

    # -- response side -------------------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Any]:
        return self._await_response().__await__()

    async def _await_response(self) -> Any:
        real = await self._started()
        return await real

    async def read(self) -> Any:
        real = await self._started()
        return await real.read()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        real = await self._started()
        async for message in real:
            yield message

    # -- request side --------------------------------------------------------------------------

    async def write(self, request: Any) -> None:
        real = await self._started()
        await real.write(request)

    async def done_writing(self) -> None:
        real = await self._started()
        await real.done_writing()


def _rpc_error(code: grpc.StatusCode, details: str) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details)


class DeferredUnaryUnaryCall(DeferredCall, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    """``grpc.aio.UnaryUnaryCall`` waiting for an endpoint."""


class DeferredUnaryStreamCall(DeferredCall, grpc.aio.UnaryStreamCall):  # type: ignore[misc]
    """``grpc.aio.UnaryStreamCall`` waiting for an endpoint."""


class DeferredStreamUnaryCall(DeferredCall, grpc.aio.StreamUnaryCall):  # type: ignore[misc]
    """``grpc.aio.StreamUnaryCall`` waiting for an endpoint."""


class DeferredStreamStreamCall(DeferredCall, grpc.aio.StreamStreamCall):  # type: ignore[misc]
    """``grpc.aio.StreamStreamCall`` waiting for an endpoint."""


DEFERRED_BY_KIND: Mapping[RpcKind, type[DeferredCall]] = {
    RpcKind.UNARY_UNARY: DeferredUnaryUnaryCall,
    RpcKind.UNARY_STREAM: DeferredUnaryStreamCall,
    RpcKind.STREAM_UNARY: DeferredStreamUnaryCall,
    RpcKind.STREAM_STREAM: DeferredStreamStreamCall,
}
