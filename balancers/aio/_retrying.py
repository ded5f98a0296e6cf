"""Call objects for unary-request calls under a :class:`balancers.RetryPolicy`.

A retrying call is a deferred call (see ``_deferred``) whose grpcio call is chosen only once
an attempt is *committed*: it succeeded, or the server answered something (headers, or for
unary-stream the first message), or it failed in a way not to retry. Until then, every failed
attempt is retried on a fresh pick after a backoff, within the call's deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
from grpc.aio import EOF, AioRpcError

from balancers._core import ChannelCore
from balancers._retry import RetryPolicy, deadline_details
from balancers.aio._deferred import DeferredCall
from telemetry.rpc_kind import RpcKind

_NOTHING: Any = object()


class _RetryingCall(DeferredCall):
    """A unary-request call retried by the channel's policy until an attempt is committed."""

    def __init__(self, core: ChannelCore, *args: Any) -> None:
        self._attempt: Any = None
        self._first: Any = _NOTHING
        super().__init__(core, *args)

    async def _pick_and_start(self, *call_args: Any) -> None:
        policy: RetryPolicy = self._core.settings.retry  # type: ignore[assignment]
        attempt = 0
        try:
            while True:
                attempt += 1
                real = None
                try:
                    real = self._attempt = await self._start_attempt(*call_args)
                    error = await self._outcome(real)
                except AioRpcError as failed:
                    error = failed
                if (
                    error is None
                    or self._core.closed  # a closing channel ends its calls, never retries
                    or not policy.should_retry(
                        error.code(), bool(error.initial_metadata()), attempt
                    )
                ):
                    if real is None:
                        self._settle(error)
                    else:
                        self._commit(real)
                    return
                delay = policy.backoff(attempt)
                remaining = self._remaining()
                if remaining is not None and delay >= remaining:
                    await asyncio.sleep(max(remaining, 0.0))
                    self._fail(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        deadline_details(error.code(), error.details()),
                    )
                    return
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if self._attempt is not None:
                self._attempt.cancel()
            if self._core.closed:  # the close cancelled the attempt: the call is cancelled
                self._locally_cancelled = True
            if not self._ready.done():
                self._fail(grpc.StatusCode.CANCELLED, "cancelled")
            raise

    async def _outcome(self, real: Any) -> AioRpcError | None:
        """Wait until ``real`` may be committed (None) or has failed (its error)."""
        try:
            await real
        except AioRpcError as error:
            return error
        return None

    def cancel(self) -> bool:
        if self._real is not None:
            return bool(self._real.cancel())
        if self._error is not None:
            return False
        self._locally_cancelled = True
        self._fail(grpc.StatusCode.CANCELLED, "cancelled before an attempt was committed")
        if self._attempt is not None:
            self._attempt.cancel()
        self._task.cancel()
        return True

    async def _committed(self) -> Any:
        """The committed grpcio call, for the response side: cancelling the awaiter cancels it."""
        try:
            return await self._started()
        except asyncio.CancelledError:
            self.cancel()
            raise

    async def _await_response(self) -> Any:
        real = await self._committed()
        return await real


class RetryingUnaryUnaryCall(_RetryingCall, grpc.aio.UnaryUnaryCall):  # type: ignore[misc]
    """``grpc.aio.UnaryUnaryCall`` retried until it succeeds or must fail."""


class RetryingUnaryStreamCall(_RetryingCall, grpc.aio.UnaryStreamCall):  # type: ignore[misc]
    """``grpc.aio.UnaryStreamCall`` retried until the server answers (headers or a message).

    Awaiting ``initial_metadata()`` returns once an attempt is committed: when the server sent
    custom headers, on the first message, or at the end of the call.
    """

    async def _outcome(self, real: Any) -> AioRpcError | None:
        try:
            if not await real.initial_metadata():
                self._first = await real.read()  # a message, or EOF
        except AioRpcError as error:
            return error
        return None

    async def read(self) -> Any:
        real = await self._committed()
        first, self._first = self._first, _NOTHING
        if first is not _NOTHING:
            return first
        return await real.read()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            message = await self.read()
            if message is EOF:
                return
            yield message


RETRYING_BY_KIND: Mapping[RpcKind, type[RetryingUnaryUnaryCall | RetryingUnaryStreamCall]] = {
    RpcKind.UNARY_UNARY: RetryingUnaryUnaryCall,
    RpcKind.UNARY_STREAM: RetryingUnaryStreamCall,
}
