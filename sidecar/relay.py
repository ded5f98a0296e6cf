"""The byte relays of the Python plane: one upstream exchange per attempt, its response
relayed downstream as it comes (unary and streamed response paths), retried by
:mod:`sidecar.retry_replay` while nothing was answered, the final status of a streaming request
read through a :class:`~sidecar.relay_status.StatusGuard`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace

from sidecar.proxy_telemetry import CallStats, end_attempt
from sidecar.relay_status import StatusGuard
from sidecar.retry_replay import AttemptFailed, RequestReplay, attempt_timeout, retry_wait
from telemetry.rpc_kind import RpcKind
from telemetry.tracing import ClientAttempt, start_client_attempt

if TYPE_CHECKING:
    from sidecar.proxy import Metadata, Upstream

__all__ = ["CALL_CACHE_SIZE", "Relay"]

# The proxy's logger: the relay's lines keep one name whichever module writes them.
_LOG = logging.getLogger("sidecar.proxy")

#: Bound of the per-method caches (method paths come from the network).
CALL_CACHE_SIZE = 4096
_EOF = grpc.aio.EOF


async def _single_request(context: grpc.aio.ServicerContext) -> bytes:
    """The one request message of a unary-request call.

    A request stream that ends without a complete message (none sent, or the last one cut
    short: grpc-core drops a partial message at end of stream without an error) is aborted
    ``INTERNAL`` at once, as grpc-java does ("Half-closed without a request"); grpc.aio's own
    unary handlers would leave such a call unanswered until its deadline.
    """
    message = await context.read()
    if message is _EOF:
        await context.abort(
            grpc.StatusCode.INTERNAL, "proxy: the request ended without a complete message"
        )
    return message  # type: ignore[no-any-return]


async def _counted_requests(
    context: grpc.aio.ServicerContext, stats: CallStats
) -> AsyncIterator[bytes]:
    """The downstream request stream, counted: what grpc's own request iterator does (one
    ``read()`` per message), in its place rather than stacked on it."""
    read = context.read
    while True:
        message = await read()
        if message is _EOF:
            return
        stats.requests += 1
        yield message


def _raise_if_caller_gone(context: grpc.aio.ServicerContext) -> None:
    """Raise ``CancelledError`` when the caller's call has already ended (it cancelled, or its
    deadline passed, which usually is why the upstream attempt failed too): a status sent now
    fails inside grpc-core, which logs it as an error with a traceback. Ending the handler as
    cancelled is what grpc does itself for such a call."""
    remaining = context.time_remaining()
    if context.cancelled() or (remaining is not None and remaining <= 0):
        raise asyncio.CancelledError()


class Relay:
    """Forwards one call to its upstream: :meth:`unary_response` for the unary-response kinds,
    :meth:`stream_response` for the streamed ones. ``tracer`` makes a CLIENT span per attempt;
    ``forwarded_for`` appends the downstream peer to ``x-forwarded-for``."""

    def __init__(self, *, tracer: trace.Tracer | None, forwarded_for: bool) -> None:
        self._tracer = tracer
        self._forwarded_for = forwarded_for
        self._callables: dict[tuple[Any, str, RpcKind], Any] = {}

    def _callable(self, channel: Any, method: str, kind: RpcKind) -> Any:
        key = (channel, method, kind)
        found = self._callables.get(key)
        if found is None:
            found = getattr(channel, kind.value)(method)
            if len(self._callables) >= CALL_CACHE_SIZE:
                self._callables.clear()  # method paths come from the network: stay bounded
            self._callables[key] = found
        return found

    def _headers(self, headers: Metadata, context: grpc.aio.ServicerContext) -> Metadata:
        if not self._forwarded_for:
            return headers
        peer = context.peer()  # "ipv4:1.2.3.4:5678" / "ipv6:[::1]:5678"
        host = peer.partition(":")[2].rpartition(":")[0].strip("[]") or peer
        previous = [v for k, v in headers if k == "x-forwarded-for" and isinstance(v, str)]
        value = ", ".join([*previous, host])
        return (*(kv for kv in headers if kv[0] != "x-forwarded-for"), ("x-forwarded-for", value))

    @staticmethod
    def _timeout(upstream: Upstream, context: grpc.aio.ServicerContext) -> float | None:
        remaining: float | None = context.time_remaining()
        return upstream.timeout if remaining is None else remaining

    # -- outcomes ---------------------------------------------------------------------------

    @staticmethod
    def _status_of(
        upstream: Upstream, error: grpc.aio.AioRpcError, answered: bool
    ) -> tuple[grpc.StatusCode, str]:
        code: grpc.StatusCode = error.code()
        details: str = error.details() or ""
        if code is grpc.StatusCode.UNAVAILABLE and not answered:
            details = f"upstream {upstream.name!r} unavailable: {details}"
        return code, details

    @staticmethod
    def _internal(context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> None:
        _LOG.warning("proxying %s failed: %s: %s", method, type(exc).__name__, exc)
        context.set_code(grpc.StatusCode.INTERNAL)
        context.set_details(f"proxy: forwarding failed ({type(exc).__name__})")

    # -- unary response (unary-unary, stream-unary) ------------------------------------------

    async def unary_response(
        self,
        upstream: Upstream,
        method: str,
        headers: Metadata,
        kind: RpcKind,
        request: Any,
        context: grpc.aio.ServicerContext,
        stats: CallStats | None = None,
    ) -> bytes | None:
        if kind is RpcKind.UNARY_UNARY:
            request = await _single_request(context)
            if stats is not None:
                stats.requests = 1
        attempts = self._attempts(upstream, method, headers, kind, request, context, stats)
        streaming = attempts.streaming
        while True:
            call, span = attempts.start()
            if call is None:
                return None
            guard = StatusGuard(call) if streaming else None
            try:
                response = await call
                end_attempt(span, grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as raised:
                error = raised if guard is None else await guard.resolve(call, raised)
                if error is None:  # the upstream ended OK; grpc.aio lost its reply
                    end_attempt(span, grpc.StatusCode.OK)
                    self._internal(context, method, raised)
                    return None
                end_attempt(span, error.code(), error.details() or "")
                initial = error.initial_metadata()
                failure = AttemptFailed(error, answered=bool(initial))
                if (attempts.replay is None or attempts.replay.replayable) and await retry_wait(
                    upstream.retry, upstream.name, attempts.attempt, failure, attempts.deadline
                ):
                    continue
                _raise_if_caller_gone(context)
                if initial:
                    await context.send_initial_metadata(initial)
                code, details = self._status_of(upstream, error, failure.answered)
                await context.abort(code, details, tuple(error.trailing_metadata() or ()))
                return None  # not reached: abort raises
            except asyncio.CancelledError:
                call.cancel()
                end_attempt(span, grpc.StatusCode.CANCELLED, "cancelled by the caller")
                raise
            except Exception as exc:
                call.cancel()
                end_attempt(span, grpc.StatusCode.INTERNAL, repr(exc))
                self._internal(context, method, exc)
                return None
            initial = await call.initial_metadata()
            if initial:
                await context.send_initial_metadata(initial)
            if guard is None:
                trailing = tuple(await call.trailing_metadata())
            else:
                trailing = await guard.trailing_metadata(call)
            if trailing:
                context.set_trailing_metadata(trailing)
            if stats is not None:
                stats.responses = 1
            return response  # type: ignore[no-any-return]

    # -- streamed response (unary-stream, stream-stream) ---------------------------------------

    async def stream_response(
        self,
        upstream: Upstream,
        method: str,
        headers: Metadata,
        kind: RpcKind,
        request: Any,
        context: grpc.aio.ServicerContext,
        stats: CallStats | None = None,
    ) -> None:
        if kind is RpcKind.UNARY_STREAM:
            request = await _single_request(context)
            if stats is not None:
                stats.requests = 1
        attempts = self._attempts(upstream, method, headers, kind, request, context, stats)
        streaming = attempts.streaming
        while True:
            call, span = attempts.start()
            if call is None:
                return None
            try:
                await self._relay_call(call, context, streaming, stats)
                end_attempt(span, grpc.StatusCode.OK)
                return
            except AttemptFailed as failure:
                end_attempt(span, failure.error.code(), failure.error.details() or "")
                if (attempts.replay is None or attempts.replay.replayable) and await retry_wait(
                    upstream.retry, upstream.name, attempts.attempt, failure, attempts.deadline
                ):
                    continue
                error = failure.error
                trailing = error.trailing_metadata()
                if trailing:
                    context.set_trailing_metadata(tuple(trailing))
                _raise_if_caller_gone(context)
                code, details = self._status_of(upstream, error, failure.answered)
                context.set_code(code)
                context.set_details(details)
                return
            except asyncio.CancelledError:
                call.cancel()
                end_attempt(span, grpc.StatusCode.CANCELLED, "cancelled by the caller")
                raise
            except Exception as exc:
                call.cancel()
                end_attempt(span, grpc.StatusCode.INTERNAL, repr(exc))
                self._internal(context, method, exc)
                return

    def _attempts(
        self,
        upstream: Upstream,
        method: str,
        headers: Metadata,
        kind: RpcKind,
        request: Any,
        context: grpc.aio.ServicerContext,
        stats: CallStats | None,
    ) -> _Attempts:
        """What every attempt of one call shares: deadline, headers, the multicallable and,
        for a streaming request with a retry policy, the replay buffer."""
        timeout = self._timeout(upstream, context)
        streaming = kind.request_streaming
        replay = (
            RequestReplay(context, upstream.retry.max_buffer_bytes, stats)
            if streaming and upstream.retry is not None
            else None
        )
        if streaming and replay is None and stats is not None:
            request = _counted_requests(context, stats)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        return _Attempts(
            self,
            upstream,
            method,
            self._headers(headers, context),
            self._callable(upstream.channel, method, kind),
            request,
            context,
            stats,
            streaming,
            replay,
            deadline,
        )

    def _start(
        self,
        multicallable: Any,
        request: Any,
        deadline: float | None,
        headers: Metadata,
        upstream: Upstream,
        context: grpc.aio.ServicerContext,
        method: str,
        attempt: int,
        stats: CallStats | None,
        guarded: bool = False,
    ) -> tuple[Any, ClientAttempt | None]:
        """The upstream call of attempt ``attempt`` (from 1), or ``None`` (status set) when its
        channel is closed: its cluster was retired by a reload and closed after the grace.
        Nothing was sent, so the caller may safely retry, as gRPC's UNAVAILABLE says.

        With a tracer the attempt has its CLIENT span (returned too), which sends its
        ``traceparent`` upstream and ends with the call's status: by itself when the call is
        done, or, ``guarded`` (a streaming request, whose status a :class:`StatusGuard` must
        read: grpc.aio may report a replacement first), by the caller with the status it
        resolved."""
        if stats is not None and attempt == 1:
            stats.client_started = time.perf_counter()
        span = None
        if self._tracer is not None:
            span = start_client_attempt(
                self._tracer, method, None, attempt, headers, cluster=upstream.name
            )
            headers = span.headers
        try:
            call = multicallable(request, timeout=attempt_timeout(deadline), metadata=headers)
        except grpc.aio.UsageError:
            if span is not None:
                span.end(grpc.StatusCode.UNAVAILABLE, "cluster replaced by a config reload")
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details(f"cluster {upstream.name}: replaced by a config reload")
            return None, None
        if stats is not None:
            stats.attempts = attempt
        if span is not None and not guarded:
            span.end_when_done(call)
        return call, span

    @staticmethod
    async def _relay_call(
        call: Any, context: grpc.aio.ServicerContext, streaming: bool, stats: CallStats | None
    ) -> None:
        """Relay headers, messages and trailers of ``call``; raise
        :class:`~sidecar.retry_replay.AttemptFailed` on error.

        Nothing is sent downstream until the upstream has answered something (headers or a
        message), so a failure before that leaves the call retryable. ``streaming`` (the call
        has a streaming request) reads the final status through a :class:`StatusGuard`.
        The messages relayed are added to ``stats`` once, at the end.
        """
        guard = StatusGuard(call) if streaming else None
        initial = await call.initial_metadata()
        answered = bool(initial)
        relayed = 0
        try:
            if answered:
                await context.send_initial_metadata(initial)
            # The async iterator rather than read(): read() refuses to return messages once the
            # call looks done, and grpc.aio marks it done when a send fails, so a reply the
            # upstream sent before ending the call would be lost, and grpc-core would hold the
            # real status back until that reply is consumed (relay_status explains the rest).
            async for message in call:
                answered = True
                await context.write(message)
                relayed += 1
        except grpc.aio.AioRpcError as raised:
            error = raised if guard is None else await guard.resolve(call, raised)
            if error is not None:
                raise AttemptFailed(error, answered) from None
        finally:
            if stats is not None:
                stats.responses += relayed
        if guard is None:
            trailing = tuple(await call.trailing_metadata())
        else:
            trailing = await guard.trailing_metadata(call)
        if trailing:
            context.set_trailing_metadata(trailing)


class _Attempts:
    """The attempts of one call: :meth:`start` begins the next one (see ``Relay._start``)."""

    __slots__ = (
        "attempt",
        "context",
        "deadline",
        "headers",
        "method",
        "multicallable",
        "relay",
        "replay",
        "request",
        "stats",
        "streaming",
        "upstream",
    )

    def __init__(
        self,
        relay: Relay,
        upstream: Upstream,
        method: str,
        headers: Metadata,
        multicallable: Any,
        request: Any,
        context: grpc.aio.ServicerContext,
        stats: CallStats | None,
        streaming: bool,
        replay: RequestReplay | None,
        deadline: float | None,
    ) -> None:
        self.relay = relay
        self.upstream = upstream
        self.method = method
        self.headers = headers
        self.multicallable = multicallable
        self.request = request
        self.context = context
        self.stats = stats
        self.streaming = streaming
        self.replay = replay
        self.deadline = deadline
        self.attempt = 0

    def start(self) -> tuple[Any, ClientAttempt | None]:
        """The next attempt's upstream call and span (``None`` call: the channel is closed)."""
        self.attempt += 1
        if self.replay is not None:
            self.request = self.replay.next_attempt()
        return self.relay._start(
            self.multicallable,
            self.request,
            self.deadline,
            self.headers,
            self.upstream,
            self.context,
            self.method,
            self.attempt,
            self.stats,
            guarded=self.streaming,
        )
