"""gRPC interceptors recording Prometheus metrics and OpenTelemetry spans.

Built by factory functions, never installed process-wide: pass the result to
``grpc.aio.insecure_channel(..., interceptors=...)`` / ``grpc.aio.server(interceptors=...)``
(sync channels: ``grpc.intercept_channel(channel, *client_interceptors(...))``)::

    channel = grpc.aio.insecure_channel(target, interceptors=aio_client_interceptors(
        metrics=GrpcMetrics(registry, "client"), tracer_provider=provider,
        filter_=negate(health_check())))

Spans follow the OpenTelemetry RPC conventions: named ``pkg.Service/Method``, with
``rpc.system``, ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``, ``server.address`` /
``server.port`` (from the factories' ``server_address``) and, on servers, the caller's
``network.peer.address`` / ``network.peer.port``. A client span is an error for any non-OK
status, a server span only for the server's own faults (UNKNOWN, DEADLINE_EXCEEDED,
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS: see :data:`telemetry.tracing.SERVER_FAULT_CODES`);
the error's description is the status details as sent. The client injects W3C trace context
into the call's metadata (``traceparent``), the server extracts it, so the server span is a
child of the client span across the hop.

A filter is a predicate on the full method name (``/pkg.Service/Method``): calls it rejects get
neither metrics nor spans (and no trace context is injected for them).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable, Iterator
from typing import Any, Final

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, TracerProvider

from telemetry.metrics import GrpcMetrics
from telemetry.rpc_kind import RpcKind
from telemetry.tracing import (
    end_rpc_span,
    extract_context,
    inject_context,
    peer_attributes,
    rpc_attributes,
    server_attributes,
    status_of,
)

__all__ = [
    "Filter",
    "aio_client_interceptors",
    "aio_server_interceptor",
    "all_of",
    "any_of",
    "client_interceptors",
    "health_check",
    "method_prefix",
    "negate",
    "server_interceptor",
]

Filter = Callable[[str], bool]
"""Selects the calls to instrument from their full method name ``/pkg.Service/Method``."""

HEALTH_SERVICE_PREFIX: Final = "/grpc.health.v1.Health/"
_TRACER_NAME: Final = "meshkit.telemetry"


# -- filters ------------------------------------------------------------------------------------


def method_prefix(*prefixes: str) -> Filter:
    """Match methods whose full name starts with one of ``prefixes`` (``"/pkg.Service/"``,
    the same form as the sidecar's route prefixes)."""
    starts = tuple(prefixes)
    return lambda method: method.startswith(starts)


def health_check() -> Filter:
    """Match ``grpc.health.v1`` calls; ``negate(health_check())`` leaves probes out of the
    metrics and traces (they are frequent and say nothing about the traffic)."""
    return method_prefix(HEALTH_SERVICE_PREFIX)


def any_of(*filters: Filter) -> Filter:
    """Match when any of ``filters`` matches."""
    return lambda method: any(f(method) for f in filters)


def all_of(*filters: Filter) -> Filter:
    """Match when all of ``filters`` match."""
    return lambda method: all(f(method) for f in filters)


def negate(filter_: Filter) -> Filter:
    """Match what ``filter_`` does not."""
    return lambda method: not filter_(method)


# -- shared per-call bookkeeping ----------------------------------------------------------------

# (request_streaming, response_streaming) -> the grpc function building such a handler
_HANDLER_FACTORY: Final[dict[tuple[bool, bool], Callable[..., Any]]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}

# (request_streaming, response_streaming) -> kind
_KIND_OF: Final[dict[tuple[bool, bool], RpcKind]] = {
    (req, resp): RpcKind.of(req, resp) for req in (False, True) for resp in (False, True)
}


class _Instrumentation:
    """What one interceptor records: metrics (optional), a tracer, a filter."""

    __slots__ = ("filter", "kind", "metrics", "server", "tracer")

    def __init__(
        self,
        metrics: GrpcMetrics | None,
        tracer_provider: TracerProvider | None,
        filter_: Filter | None,
        kind: SpanKind,
        server_address: str | None = None,
    ) -> None:
        self.metrics = metrics
        self.tracer = trace.get_tracer(_TRACER_NAME, tracer_provider=tracer_provider)
        self.filter = filter_
        self.kind = kind
        # parsed once: the same attributes go on every span of this channel or server
        self.server = server_attributes(server_address)

    def wants(self, method: str) -> bool:
        return self.filter is None or self.filter(method)


def _ignore(exc: BaseException) -> None:
    pass


class _Rpc:
    """One instrumented call: its span, its start time, and finishing exactly once."""

    __slots__ = (
        "_context",
        "_finished",
        "kind",
        "method",
        "metrics",
        "on_error",
        "server",
        "span",
        "started_at",
    )

    def __init__(
        self,
        inst: _Instrumentation,
        method: str,
        kind: RpcKind,
        parent: Context | None,
        peer: str | None = None,
    ) -> None:
        self.method = method
        self.kind = kind
        self.metrics = inst.metrics
        self.server = inst.kind is SpanKind.SERVER
        self.span = inst.tracer.start_span(
            method.lstrip("/"),
            context=parent,
            kind=inst.kind,
            attributes={**rpc_attributes(method), **inst.server, **peer_attributes(peer)},
        )
        self.started_at = self.metrics.start(method, kind) if self.metrics else 0.0
        self._finished = False
        self._context: Context | None = None
        self.on_error: Callable[[BaseException], None] = _ignore

    def received(self) -> None:
        if self.metrics is not None:
            self.metrics.received(self.method, self.kind)

    def sent(self) -> None:
        if self.metrics is not None:
            self.metrics.sent(self.method, self.kind)

    def finish(self, code: grpc.StatusCode, details: str | None = None) -> None:
        # Done callbacks and exception paths can both see the end of a call; count it once.
        if self._finished:
            return
        self._finished = True
        if self.metrics is not None:
            self.metrics.done(self.method, self.kind, code, self.started_at)
        end_rpc_span(self.span, code, details, server=self.server)

    def context(self) -> Context:
        """A context with this call's span current (built once: streams attach it per step)."""
        if self._context is None:
            self._context = trace.set_span_in_context(self.span)
        return self._context


# -- asyncio client -----------------------------------------------------------------------------


def _now(coro: Coroutine[Any, Any, Any]) -> Any:
    """Result of a coroutine that completes without suspending.

    ``grpc.aio`` exposes a finished call's status only through coroutines (``code()``,
    ``details()``), but done callbacks are plain functions; once the call is done these
    coroutines return at once, so driving them one step is enough and spares a task per call.
    """
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()  # suspended: the call was not done after all
    return None


def _same(value: Any) -> Any:
    return value


def _on_client_done(
    rpc: _Rpc, unary_response: bool, read: Callable[[Any], Any] = _now
) -> Callable[[Any], None]:
    """A done callback finishing ``rpc`` with the call's status; ``read`` turns what the call's
    ``code()``/``details()`` return into values (aio: coroutines; sync: :func:`_same`)."""

    def done(call: Any) -> None:
        code = read(call.code()) or grpc.StatusCode.UNKNOWN
        if unary_response and code is grpc.StatusCode.OK:
            rpc.received()
        rpc.finish(code, read(call.details()) if code is not grpc.StatusCode.OK else None)

    return done


def _begin_client_rpc(
    inst: _Instrumentation, details: Any, kind: RpcKind
) -> tuple[_Rpc | None, list[Any]]:
    """Start a client call's span and metrics (``None`` when filtered out) and the metadata to
    send: the call's own plus the span's trace context."""
    method = details.method
    if isinstance(method, bytes):
        method = method.decode()
    if not inst.wants(method):
        return None, []
    rpc = _Rpc(inst, method, kind, None)
    pairs = list(details.metadata or ())
    inject_context(pairs, rpc.context())
    return rpc, pairs


class _AioClientBase:
    def __init__(self, inst: _Instrumentation) -> None:
        self._inst = inst

    def _begin(self, details: Any, kind: RpcKind) -> tuple[_Rpc | None, Any]:
        rpc, pairs = _begin_client_rpc(self._inst, details, kind)
        if rpc is None:
            return None, details
        new_details = grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*pairs),
            details.credentials,
            details.wait_for_ready,
        )
        return rpc, new_details

    @staticmethod
    async def _start(
        rpc: _Rpc, make_call: Callable[[], Coroutine[Any, Any, Any]], unary_response: bool
    ) -> Any:
        try:
            call = await make_call()
        except BaseException as exc:
            rpc.finish(*status_of(exc))
            raise
        call.add_done_callback(_on_client_done(rpc, unary_response))
        return call


async def _count_async(items: AsyncIterable[Any], count: Callable[[], None]) -> Any:
    async for item in items:
        count()
        yield item


def _count_sync(items: Iterable[Any], count: Callable[[], None]) -> Iterator[Any]:
    for item in items:
        count()
        yield item


def _count_requests(rpc: _Rpc, requests: Any) -> Any:
    if hasattr(requests, "__aiter__"):
        return _count_async(requests, rpc.sent)
    return _count_sync(requests, rpc.sent)


class _AioUnaryUnary(_AioClientBase, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        rpc, details = self._begin(details, RpcKind.UNARY_UNARY)
        if rpc is None:
            return await continuation(details, request)
        rpc.sent()
        return await self._start(rpc, lambda: continuation(details, request), True)


class _AioUnaryStream(_AioClientBase, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        rpc, details = self._begin(details, RpcKind.UNARY_STREAM)
        if rpc is None:
            return await continuation(details, request)
        rpc.sent()
        call = await self._start(rpc, lambda: continuation(details, request), False)
        if rpc.metrics is None:
            return call
        # grpc.aio wraps a returned iterator so the caller still gets the call's API.
        return _count_async(call, rpc.received)


class _AioStreamUnary(_AioClientBase, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        rpc, details = self._begin(details, RpcKind.STREAM_UNARY)
        if rpc is None:
            return await continuation(details, request_iterator)
        requests = _count_requests(rpc, request_iterator) if rpc.metrics else request_iterator
        # Never await the call's end here: with call.write() the caller's writes wait for this
        # interceptor to return.
        return await self._start(rpc, lambda: continuation(details, requests), True)


class _AioStreamStream(_AioClientBase, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        rpc, details = self._begin(details, RpcKind.STREAM_STREAM)
        if rpc is None:
            return await continuation(details, request_iterator)
        requests = _count_requests(rpc, request_iterator) if rpc.metrics else request_iterator
        call = await self._start(rpc, lambda: continuation(details, requests), False)
        if rpc.metrics is None:
            return call
        return _count_async(call, rpc.received)


def aio_client_interceptors(
    metrics: GrpcMetrics | None = None,
    tracer_provider: TracerProvider | None = None,
    filter_: Filter | None = None,
    *,
    server_address: str | None = None,
) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a ``grpc.aio`` channel, one per call type (grpc.aio needs that).

    ``metrics`` should be a ``GrpcMetrics(side="client")``; ``None`` records no metrics.
    ``tracer_provider=None`` uses the global one (a no-op unless the application set one).
    ``server_address`` (the channel's target: ``host:port`` or a gRPC target) gives the spans
    ``server.address`` / ``server.port``: grpc does not tell interceptors where a call goes.
    """
    inst = _Instrumentation(metrics, tracer_provider, filter_, SpanKind.CLIENT, server_address)
    return [
        _AioUnaryUnary(inst),
        _AioUnaryStream(inst),
        _AioStreamUnary(inst),
        _AioStreamStream(inst),
    ]


# -- sync client --------------------------------------------------------------------------------


class _SyncCallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    """``details`` with other metadata (grpc's own class is abstract)."""

    def __init__(self, details: Any, metadata: tuple[Any, ...]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _CountingCall:
    """A response-streaming call counting the messages read from it; otherwise the call."""

    __slots__ = ("_call", "_count")

    def __init__(self, call: Any, count: Callable[[], None]) -> None:
        self._call = call
        self._count = count

    def __iter__(self) -> _CountingCall:
        return self

    def __next__(self) -> Any:
        item = next(self._call)
        self._count()
        return item

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _SyncClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """All four call types: a sync channel takes one interceptor for several."""

    def __init__(self, inst: _Instrumentation) -> None:
        self._inst = inst

    def _intercept(self, continuation: Any, details: Any, request: Any, kind: RpcKind) -> Any:
        request_streaming = kind.request_streaming
        unary_response = not kind.response_streaming
        rpc, pairs = _begin_client_rpc(self._inst, details, kind)
        if rpc is None:
            return continuation(details, request)
        if not request_streaming:
            rpc.sent()
        elif rpc.metrics is not None:
            request = _count_sync(request, rpc.sent)
        try:
            call = continuation(_SyncCallDetails(details, tuple(pairs)), request)
        except BaseException as exc:
            rpc.finish(*status_of(exc))
            raise
        # Called at once when the call is already over (a blocking unary call), else when it is.
        call.add_done_callback(_on_client_done(rpc, unary_response, _same))
        if unary_response or rpc.metrics is None:
            return call
        return _CountingCall(call, rpc.received)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._intercept(continuation, details, request, RpcKind.UNARY_UNARY)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._intercept(continuation, details, request, RpcKind.UNARY_STREAM)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._intercept(continuation, details, requests, RpcKind.STREAM_UNARY)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._intercept(continuation, details, requests, RpcKind.STREAM_STREAM)


def client_interceptors(
    metrics: GrpcMetrics | None = None,
    tracer_provider: TracerProvider | None = None,
    filter_: Filter | None = None,
    *,
    server_address: str | None = None,
) -> list[
    grpc.UnaryUnaryClientInterceptor
    | grpc.UnaryStreamClientInterceptor
    | grpc.StreamUnaryClientInterceptor
    | grpc.StreamStreamClientInterceptor
]:
    """The same as :func:`aio_client_interceptors` for a sync ``grpc.Channel``: pass them to
    ``grpc.intercept_channel(channel, *interceptors)`` or ``balancers.insecure_channel(...,
    interceptors=...)``.

    A call is recorded when it ends (a streaming response: when the call finishes, not when
    its iterator is created).
    """
    inst = _Instrumentation(metrics, tracer_provider, filter_, SpanKind.CLIENT, server_address)
    return [_SyncClientInterceptor(inst)]


# -- asyncio server -----------------------------------------------------------------------------


def _server_error_status(context: Any, exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status an aio handler's exception ends its call with, read as it is raised."""
    code: grpc.StatusCode | None = context.code()
    if code is not None and code is not grpc.StatusCode.OK:
        # context.abort() sets code and details, then raises an exception whose text is
        # grpc's "Locally aborted.", not what the client receives: read the context.
        return code, context.details() or ""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        # grpc cancels the handler both when the client cancels and when the deadline passes
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
        return grpc.StatusCode.CANCELLED, "cancelled"
    # what grpc sends for an unhandled exception
    return grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}"


def _finish_when_done(rpc: _Rpc, context: Any) -> None:
    """End ``rpc`` when grpc is done with the call, not when the handler returns.

    A streaming handler may return normally when its client cancelled (grpc ends the request
    stream first and cancels the handler after), and the exception, if any, is classified
    when raised: a deadline is only recognisable then (no time left).
    """
    failure: list[tuple[grpc.StatusCode, str]] = []

    def on_error(exc: BaseException) -> None:
        if not failure:
            failure.append(_server_error_status(context, exc))

    def on_done(ctx: Any) -> None:
        if failure:
            rpc.finish(*failure[0])
        else:
            rpc.finish(ctx.code() or grpc.StatusCode.OK, ctx.details() or None)

    rpc.on_error = on_error
    context.add_done_callback(on_done)


def _wrap_handler(inst: _Instrumentation, handler: Any, method: str, metadata: Any) -> Any:
    if handler.request_streaming:
        behavior = handler.stream_stream if handler.response_streaming else handler.stream_unary
    else:
        behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary
    is_gen = inspect.isasyncgenfunction(behavior)
    if not (is_gen or inspect.iscoroutinefunction(behavior)):
        return handler  # a sync handler run in grpc's thread pool; see server_interceptor
    kind = _KIND_OF[(handler.request_streaming, handler.response_streaming)]
    parent = extract_context(metadata)

    def begin(request_or_iterator: Any, context: Any) -> tuple[_Rpc, Any]:
        rpc = _Rpc(inst, method, kind, parent, context.peer())
        _finish_when_done(rpc, context)
        if not handler.request_streaming:
            rpc.received()
            return rpc, request_or_iterator
        return rpc, _count_async(request_or_iterator, rpc.received)

    if not handler.response_streaming or not is_gen:
        # A unary response, or a coroutine streaming with context.write() (those messages
        # are not counted; the rest is).
        async def run(request: Any, context: Any) -> Any:
            rpc, request = begin(request, context)
            token = otel_context.attach(rpc.context())
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                rpc.on_error(exc)
                raise
            finally:
                otel_context.detach(token)
            if not handler.response_streaming:
                rpc.sent()
            return response

        make = _HANDLER_FACTORY[(handler.request_streaming, handler.response_streaming)]
        return make(run, handler.request_deserializer, handler.response_serializer)

    # One generator layer, not a generator delegating to another: grpc closes this one when
    # the client goes away.
    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        rpc, request = begin(request, context)
        responses = behavior(request, context)
        try:
            while True:
                # Attached per step, not across the yield: the span is current only while
                # the handler's own code runs.
                token = otel_context.attach(rpc.context())
                try:
                    response = await responses.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    otel_context.detach(token)
                rpc.sent()
                yield response
        except BaseException as exc:
            rpc.on_error(exc)
            raise
        finally:
            await responses.aclose()

    make = _HANDLER_FACTORY[(handler.request_streaming, True)]
    return make(stream, handler.request_deserializer, handler.response_serializer)


class _AioServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, inst: _Instrumentation) -> None:
        self._inst = inst

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self._inst.wants(method):
            return handler
        return _wrap_handler(self._inst, handler, method, handler_call_details.invocation_metadata)


def aio_server_interceptor(
    metrics: GrpcMetrics | None = None,
    tracer_provider: TracerProvider | None = None,
    filter_: Filter | None = None,
    *,
    server_address: str | None = None,
) -> grpc.aio.ServerInterceptor:
    """A ``grpc.aio`` server interceptor; ``metrics`` should be ``GrpcMetrics(side="server")``.

    The server span is current while the handler runs, so the handler's own spans (and its
    outgoing calls through :func:`aio_client_interceptors`) become its children.
    ``server_address`` (``host:port`` the clients use) gives ``server.address`` /
    ``server.port``; the caller's address comes from grpc (``network.peer.*``).
    """
    return _AioServerInterceptor(
        _Instrumentation(metrics, tracer_provider, filter_, SpanKind.SERVER, server_address)
    )


# -- sync server --------------------------------------------------------------------------------


def _sync_server_status(
    context: Any, exc: BaseException | None
) -> tuple[grpc.StatusCode, str | None]:
    code: grpc.StatusCode | None = context.code()
    if code is not None and (exc is None or code is not grpc.StatusCode.OK):
        # abort() sets code and details, then raises an exception with no text of its own
        return code, context.details() or None
    if isinstance(exc, GeneratorExit) or not context.is_active():
        # the call went away: its deadline passed, or the client cancelled
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
        return grpc.StatusCode.CANCELLED, "cancelled"
    if exc is None:
        return grpc.StatusCode.OK, None
    return grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}"


def _wrap_sync_handler(inst: _Instrumentation, handler: Any, method: str, metadata: Any) -> Any:
    req_stream, resp_stream = handler.request_streaming, handler.response_streaming
    if req_stream:
        behavior = handler.stream_stream if resp_stream else handler.stream_unary
    else:
        behavior = handler.unary_stream if resp_stream else handler.unary_unary
    kind = _KIND_OF[(req_stream, resp_stream)]
    parent = extract_context(metadata)

    def begin(request: Any, context: Any) -> tuple[_Rpc, Any]:
        rpc = _Rpc(inst, method, kind, parent, context.peer())
        if not req_stream:
            rpc.received()
            return rpc, request
        return rpc, _count_sync(request, rpc.received)

    def unary_response(request: Any, context: Any) -> Any:
        rpc, request = begin(request, context)
        token = otel_context.attach(rpc.context())
        try:
            response = behavior(request, context)
        except BaseException as exc:
            rpc.finish(*_sync_server_status(context, exc))
            raise
        finally:
            otel_context.detach(token)
        code, details = _sync_server_status(context, None)
        if code is grpc.StatusCode.OK:
            rpc.sent()
        rpc.finish(code, details)
        return response

    def stream_response(request: Any, context: Any) -> Iterator[Any]:
        rpc, request = begin(request, context)
        try:
            for response in _attached(rpc, behavior(request, context)):
                rpc.sent()
                yield response
        except BaseException as exc:
            rpc.finish(*_sync_server_status(context, exc))
            raise
        rpc.finish(*_sync_server_status(context, None))

    if resp_stream:
        make = _HANDLER_FACTORY[(req_stream, True)]
        return make(stream_response, handler.request_deserializer, handler.response_serializer)
    make = _HANDLER_FACTORY[(req_stream, False)]
    return make(unary_response, handler.request_deserializer, handler.response_serializer)


def _attached(rpc: _Rpc, responses: Iterable[Any]) -> Iterator[Any]:
    """Iterate ``responses`` with the span current only while the handler's code runs."""
    iterator = iter(responses)
    while True:
        token = otel_context.attach(rpc.context())
        try:
            response = next(iterator)
        except StopIteration:
            return
        finally:
            otel_context.detach(token)
        yield response


class _SyncServerInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, inst: _Instrumentation) -> None:
        self._inst = inst

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self._inst.wants(method):
            return handler
        return _wrap_sync_handler(
            self._inst, handler, method, handler_call_details.invocation_metadata
        )


def server_interceptor(
    metrics: GrpcMetrics | None = None,
    tracer_provider: TracerProvider | None = None,
    filter_: Filter | None = None,
    *,
    server_address: str | None = None,
) -> grpc.ServerInterceptor:
    """The same as :func:`aio_server_interceptor` for a thread-pool ``grpc.server``.

    A sync handler is not interrupted when its client cancels, so such calls count with the
    status the handler returns.
    """
    return _SyncServerInterceptor(
        _Instrumentation(metrics, tracer_provider, filter_, SpanKind.SERVER, server_address)
    )
