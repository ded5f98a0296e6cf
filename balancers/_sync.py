"""The balanced sync ``grpc.Channel``.

The resolver and the policy run on a private event loop in a daemon thread (resolvers are
asyncio code); calls run on the caller's thread straight on grpcio's sync channel of the
picked endpoint, so a call costs one pick more than plain grpcio and no thread hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from balancers._base import Connectivity, DoneInfo, PickFailed, PickInfo
from balancers._channel_api import ChannelMethods
from balancers._core import (
    CLOSED_DETAILS,
    ChannelClosed,
    ChannelCore,
    ChannelSettings,
    channel_options,
)
from balancers._retry import RetryPolicy, deadline_details
from balancers._subchannel import (
    EndpointSubchannel,
    StateListener,
    SyncSubchannel,
    grpc_target,
)
from resolvers import Address
from telemetry.rpc_kind import RpcKind

log = logging.getLogger("meshkit.balancers")

# What grpcio's sync channel raises (ValueError) for a call on a closed channel: blocking
# calls say the first, calls returning a future or a stream the second.
CLOSED_BLOCKING = "Cannot invoke RPC on closed channel!"
CLOSED_NONBLOCKING = "Cannot invoke RPC: Channel closed!"


class PickError(grpc.RpcError, grpc.Call, grpc.Future):  # type: ignore[misc]
    """A call that failed before reaching any endpoint; shaped like grpcio's failed calls."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def __str__(self) -> str:
        return f"<PickError: status = {self._code}, details = {self._details!r}>"

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def debug_error_string(self) -> str:
        return self._details

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return self._code is grpc.StatusCode.CANCELLED

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> PickError:
        return self

    def traceback(self, timeout: float | None = None) -> None:
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        raise self


class _SyncMultiCallable:
    """Pick on the caller's thread, then call grpcio's sync multicallable.

    Every grpcio verb takes the same arguments, so each is written once here and the four
    call types below pick the verbs their grpcio interface has.
    """

    def __init__(
        self,
        owner: BalancedChannel,
        kind: RpcKind,
        method: str,
        ser: Any,
        deser: Any,
        registered: bool,
    ) -> None:
        self._owner = owner
        self._kind = kind
        self._method = method
        self._ser = ser
        self._deser = deser
        self._registered = registered
        self._info = PickInfo(method)

    def _start(
        self, timeout: float | None, metadata: Any, wait_for_ready: bool | None
    ) -> tuple[SyncSubchannel, Callable[[DoneInfo], None] | None, float | None, Any]:
        info = self._info if metadata is None else PickInfo(self._method, metadata)
        sc, done, remaining = self._owner._pick(info, timeout, bool(wait_for_ready))
        real = sc.multicallable(self._kind, self._method, self._ser, self._deser, self._registered)
        return sc, done, remaining, real

    def _blocking(self, with_call: bool, request: Any, **kwargs: Any) -> Any:
        try:
            sc, done, kwargs["timeout"], real = self._start(
                kwargs["timeout"], kwargs["metadata"], kwargs["wait_for_ready"]
            )
        except ChannelClosed:
            raise ValueError(CLOSED_BLOCKING) from None
        try:
            result = real.with_call(request, **kwargs)
        except grpc.RpcError as error:
            sc.release()
            sc.call_done(error.code(), done)
            raise
        sc.release()
        sc.call_done(grpc.StatusCode.OK, done)
        return result if with_call else result[0]

    def _nonblocking(self, verb: str, request: Any, **kwargs: Any) -> Any:
        try:
            sc, done, kwargs["timeout"], real = self._start(
                kwargs["timeout"], kwargs["metadata"], kwargs["wait_for_ready"]
            )
        except ChannelClosed:
            raise ValueError(CLOSED_NONBLOCKING) from None
        except PickError as error:
            return error  # a finished future / a stream whose iteration raises, like grpcio's
        call = getattr(real, verb)(request, **kwargs)

        def finished(c: Any) -> None:
            sc.release()
            sc.call_done(c.code(), done)

        call.add_done_callback(finished)
        return call

    def _call_blocking(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._blocking(
            False,
            request,
            timeout=timeout,
            metadata=metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )

    def _with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._blocking(
            True,
            request,
            timeout=timeout,
            metadata=metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )

    def _future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._nonblocking(
            "future",
            request,
            timeout=timeout,
            metadata=metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )

    def _stream(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._nonblocking(
            "__call__",
            request,
            timeout=timeout,
            metadata=metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
            compression=compression,
        )


class _SyncUnaryUnary(_SyncMultiCallable, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    __call__ = _SyncMultiCallable._call_blocking
    with_call = _SyncMultiCallable._with_call
    future = _SyncMultiCallable._future


class _SyncUnaryStream(_SyncMultiCallable, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
    __call__ = _SyncMultiCallable._stream


class _SyncStreamUnary(_SyncMultiCallable, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    """``request`` is the request iterator."""

    __call__ = _SyncMultiCallable._call_blocking
    with_call = _SyncMultiCallable._with_call
    future = _SyncMultiCallable._future


class _SyncStreamStream(_SyncMultiCallable, grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    """``request`` is the request iterator."""

    __call__ = _SyncMultiCallable._stream


class _SyncRetryingUnaryUnary(_SyncUnaryUnary):
    """``__call__``/``with_call`` retried by the channel's policy; ``future()`` is one attempt."""

    def _blocking(self, with_call: bool, request: Any, **kwargs: Any) -> Any:
        core = self._owner._core
        policy: RetryPolicy = core.settings.retry  # type: ignore[assignment]
        timeout = kwargs["timeout"]
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                return super()._blocking(with_call, request, **kwargs)
            except grpc.RpcError as error:
                if core.closed or not policy.should_retry(
                    error.code(), bool(error.initial_metadata()), attempt
                ):
                    raise
                kwargs["timeout"] = _backoff(policy, attempt, deadline, error)


def _backoff(policy: RetryPolicy, attempt: int, deadline: float | None, error: Any) -> float | None:
    """Sleep before the next attempt; its timeout, or PickError when the deadline falls first."""
    delay = policy.backoff(attempt)
    if deadline is None:
        time.sleep(delay)
        return None
    remaining = deadline - time.monotonic()
    if delay >= remaining:
        time.sleep(max(remaining, 0.0))
        raise PickError(
            grpc.StatusCode.DEADLINE_EXCEEDED, deadline_details(error.code(), error.details())
        ) from None
    time.sleep(delay)
    return deadline - time.monotonic()


class _SyncRetryingUnaryStream(_SyncUnaryStream):
    """Unary-stream calls retried by the channel's policy until their first message."""

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        kwargs = {
            "timeout": timeout,
            "metadata": metadata,
            "credentials": credentials,
            "wait_for_ready": wait_for_ready,
            "compression": compression,
        }
        return _RetryingStream(self, request, kwargs)


class _RetryingStream(grpc.Call, grpc.Future):  # type: ignore[misc]
    """A unary-stream call that starts a new attempt while no message has come back.

    Attempts are retried as the stream is iterated: until the first message (or the end),
    a retryable failure without response headers starts a new attempt instead of raising.
    Callbacks added before that apply to the committed attempt. ``cancel()`` stops retrying.
    """

    def __init__(self, owner: _SyncMultiCallable, request: Any, kwargs: dict[str, Any]) -> None:
        self._owner = owner
        self._request = request
        self._kwargs = kwargs
        timeout = kwargs["timeout"]
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._core = owner._owner._core
        self._policy: RetryPolicy = self._core.settings.retry  # type: ignore[assignment]
        self._attempt = 1
        self._committed = False
        self._cancelled = False
        self._pending: list[Callable[[Any], None]] = []
        self._call = owner._stream(request, **kwargs)

    def _commit(self) -> None:
        self._committed = True
        for fn in self._pending:
            self._call.add_done_callback(lambda _c, fn=fn: fn(self))
        self._pending.clear()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        while not self._committed:
            try:
                message = next(self._call)
            except StopIteration:
                self._commit()
                raise
            except grpc.RpcError as error:
                if (
                    self._cancelled
                    or self._core.closed
                    or not self._policy.should_retry(
                        error.code(), bool(error.initial_metadata()), self._attempt
                    )
                ):
                    self._commit()
                    raise
                try:
                    self._kwargs["timeout"] = _backoff(
                        self._policy, self._attempt, self._deadline, error
                    )
                except PickError as expired:
                    self._call = expired
                    self._commit()
                    raise
                if self._cancelled:
                    self._commit()
                    raise
                self._attempt += 1
                self._call = self._owner._stream(self._request, **self._kwargs)
                continue
            self._commit()
            return message
        return next(self._call)

    def cancel(self) -> bool:
        self._cancelled = True
        return bool(self._call.cancel())

    def cancelled(self) -> bool:
        return self._cancelled or bool(self._call.cancelled())

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        if self._committed:
            self._call.add_done_callback(lambda _c: fn(self))
        else:
            self._pending.append(fn)

    # -- the current attempt's grpc.Call / grpc.Future -------------------------------------

    def code(self) -> grpc.StatusCode:
        return self._call.code()

    def details(self) -> str:
        return self._call.details()  # type: ignore[no-any-return]

    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata()

    def is_active(self) -> bool:
        return self._call.is_active()  # type: ignore[no-any-return]

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()  # type: ignore[no-any-return]

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return self._call.add_callback(callback)  # type: ignore[no-any-return]

    def running(self) -> bool:
        return self._call.running()  # type: ignore[no-any-return]

    def done(self) -> bool:
        return self._call.done()  # type: ignore[no-any-return]

    def result(self, timeout: float | None = None) -> Any:
        return self._call.result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        return self._call.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        return self._call.traceback(timeout)


class BalancedChannel(ChannelMethods, grpc.Channel):  # type: ignore[misc]
    """A ``grpc.Channel`` whose calls are spread over the endpoints a resolver finds.

    Build it with :func:`balancers.insecure_channel` or :func:`balancers.secure_channel`.
    As with grpcio, a call on a closed channel raises ``ValueError``, and a call still waiting
    for an endpoint when the channel closes fails with CANCELLED.
    """

    _multicallable_types: Mapping[RpcKind, type] = {
        RpcKind.UNARY_UNARY: _SyncUnaryUnary,
        RpcKind.UNARY_STREAM: _SyncUnaryStream,
        RpcKind.STREAM_UNARY: _SyncStreamUnary,
        RpcKind.STREAM_STREAM: _SyncStreamStream,
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
        self._interceptors = list(interceptors or ())
        # [callback, the state it was last given]: grpcio's bookkeeping, for transitions only.
        self._subscribers: list[list[Any]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"meshkit-channel {target}", daemon=True
        )
        self._thread.start()
        self._closed = False
        self._multicallable_owner = self
        if settings.retry is not None:  # request-streaming calls are never retried
            self._multicallable_types = {
                **self._multicallable_types,
                RpcKind.UNARY_UNARY: _SyncRetryingUnaryUnary,
                RpcKind.UNARY_STREAM: _SyncRetryingUnaryStream,
            }
        try:
            self._core = ChannelCore(target, self._make_subchannel, settings)
            self._core.add_state_watcher(self._deliver)
            self._options = channel_options(options, self._core.target)
            self._run(self._start_core())
        except BaseException:
            self._stop_loop()
            raise

    async def _start_core(self) -> None:
        self._core.start()

    def _run(self, coro: Any, timeout: float | None = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

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
            channel = grpc.insecure_channel(target, self._options, self._compression)
        else:
            channel = grpc.secure_channel(
                target, self._credentials, self._options, self._compression
            )
        if self._interceptors:
            channel = grpc.intercept_channel(channel, *self._interceptors)
        return SyncSubchannel(
            address, channel, listener, loop=loop, health_service=health_service, on_done=on_done
        )

    def _deliver(self) -> None:
        """Give each subscriber the current state unless it already has it (on the loop)."""
        state = self._core.connectivity
        due = []
        with self._lock:
            for entry in self._subscribers:
                if entry[1] is not state:
                    entry[1] = state
                    due.append(entry[0])
        for callback in due:
            try:
                callback(state)
            except Exception:  # grpcio logs a failing subscriber and goes on, so do we
                log.exception("connectivity subscriber of %s raised", self._core.target_text)

    @property
    def core(self) -> ChannelCore:
        """The resolver/policy core (endpoints and their states, for admin and tests)."""
        return self._core

    def snapshot(self) -> dict[str, Any]:
        """Target, policy, state and endpoints as plain data, from any thread (see
        :meth:`ChannelCore.snapshot <balancers._core.ChannelCore.snapshot>`)."""
        return self._core.snapshot()

    def _pick(
        self, info: PickInfo, timeout: float | None, wait_for_ready: bool
    ) -> tuple[SyncSubchannel, Callable[[DoneInfo], None] | None, float | None]:
        core = self._core
        deadline = None if timeout is None else time.monotonic() + timeout
        waited = False
        while True:
            generation = core.generation
            try:
                result = core.pick_now(info, wait_for_ready)
            except ChannelClosed:
                if not waited:
                    raise  # closed before the call: the verbs raise grpcio's ValueError
                # Closed while the call waited: grpcio cancels its calls in flight.
                raise PickError(grpc.StatusCode.CANCELLED, CLOSED_DETAILS) from None
            except PickFailed as failed:
                raise PickError(failed.code, failed.details) from None
            if result is not None:
                sc = result.subchannel
                assert isinstance(sc, SyncSubchannel)
                if sc.acquire():
                    sc.picks += 1
                    remaining = None if deadline is None else deadline - time.monotonic()
                    return sc, result.done, remaining
                continue  # removed since the picker was built: a newer picker is coming
            remaining = None if deadline is None else deadline - time.monotonic()
            waited = True
            if (remaining is not None and remaining <= 0) or not core.wait_for_picker_sync(
                generation, remaining
            ):
                raise PickError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"deadline exceeded while waiting for an endpoint of {core.target_text} "
                    f"(channel {core.connectivity.name})",
                )

    # -- grpc.Channel --------------------------------------------------------------------------

    def subscribe(
        self, callback: Callable[[Connectivity], None], try_to_connect: bool = False
    ) -> None:
        """Call ``callback(state)`` with the current aggregate connectivity, then once per
        change of it (transitions only), as grpcio does.

        Callbacks run on the channel's own thread, never the caller's, one at a time and in
        order; keep them short (they hold up the resolver and the policy).
        """
        with self._lock:
            self._subscribers.append([callback, None])
        with contextlib.suppress(RuntimeError):  # the loop is closed: so is the channel
            self._loop.call_soon_threadsafe(self._deliver)

    def unsubscribe(self, callback: Callable[[Connectivity], None]) -> None:
        """Stop calling ``callback``."""
        with self._lock:
            for index, entry in enumerate(self._subscribers):
                if entry[0] == callback:
                    del self._subscribers[index]
                    return

    def close(self) -> None:
        """Refuse new calls, close every endpoint (cancelling calls in flight, as grpcio
        does) and stop the channel's thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._core.aclose())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> BalancedChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
