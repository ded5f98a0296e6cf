"""Instrumentation of the Python plane's proxied calls: per-call counts, the metrics of
a (direction, cluster) and the SERVER span around a call, on ``telemetry``'s metrics and
tracing (the families are :mod:`sidecar.proxy_metrics`' contract).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter

from sidecar.proxy_metrics import OUTBOUND, ProxyMetrics
from telemetry.metrics import MethodMetrics
from telemetry.rpc_kind import GrpcType, RpcKind
from telemetry.tracing import (
    ClientAttempt,
    end_rpc_span,
    extract_context,
    inject_context,
    peer_attributes,
    rpc_attributes,
)

if TYPE_CHECKING:
    from sidecar.proxy import Metadata, Upstream

__all__ = ["CallStats", "RelayPath", "Scope", "call_end_code", "end_attempt", "observed"]

#: A relay path of :class:`sidecar.relay.Relay` (``unary_response``/``stream_response``).
RelayPath = Callable[..., Awaitable[Any]]


class CallStats:
    """One instrumented call's counts, plain attributes bumped on the relay path and added to
    the metrics once when the call ends (a Prometheus ``inc`` takes a lock)."""

    __slots__ = ("attempts", "client_started", "requests", "responses")

    def __init__(self) -> None:
        self.attempts = 0  # upstream calls started
        self.client_started = 0.0  # perf_counter() at the first attempt's start
        self.requests = 0
        self.responses = 0


class Scope:
    """The metrics of the calls of one (direction, cluster), resolved once."""

    __slots__ = ("client", "retried", "server")

    def __init__(self, metrics: ProxyMetrics, direction: str, cluster: str) -> None:
        self.server, self.client = metrics.scopes(direction, cluster)
        self.retried: Callable[[], Counter] | None = None
        # Retries are per outbound cluster (the local app is called once), as on Envoy; the
        # series appears with the first retry, as Envoy's (its unused stats are left out).
        if direction == OUTBOUND and cluster:
            self.retried = functools.partial(metrics.retries.labels, cluster)

    def record(
        self,
        method: str,
        grpc_type: GrpcType,
        code: grpc.StatusCode,
        started: float,
        stats: CallStats,
    ) -> None:
        """Count one ended call: the server side always, the client side when an upstream
        attempt started (counted at the end, as Envoy does), retries when there were some."""
        server: MethodMetrics = self.server
        server.done(method, grpc_type, code, started)
        requests, responses = stats.requests, stats.responses
        if requests:
            server.received(method, grpc_type, requests)
        if responses:
            server.sent(method, grpc_type, responses)
        if not stats.attempts:
            return
        client: MethodMetrics = self.client
        client.start(method, grpc_type)
        client.done(method, grpc_type, code, stats.client_started)
        if requests:
            client.sent(method, grpc_type, requests)
        if responses:
            client.received(method, grpc_type, responses)
        if stats.attempts > 1 and self.retried is not None:
            self.retried().inc(stats.attempts - 1)


def end_attempt(span: ClientAttempt | None, code: grpc.StatusCode, details: str = "") -> None:
    """End an attempt's CLIENT span (if traced) with the status the relay resolved; a span
    already ended by its call keeps that status (only the first end counts)."""
    if span is not None:
        span.end(code, details if code is not grpc.StatusCode.OK else "")


async def observed(
    relay: RelayPath,
    scope: Scope | None,
    tracer: trace.Tracer | None,
    upstream: Upstream,
    method: str,
    headers: Metadata,
    kind: RpcKind,
    context: grpc.aio.ServicerContext,
) -> Any:
    """``relay`` with metrics (``scope``) and the SERVER span (``tracer``) around it.

    The relay reads the requests itself, counting them (so no request iterator is given),
    and counts attempts and responses in a :class:`CallStats`. The final code is read
    back from the context (``set_code``/``abort`` record it); cancellation is
    ``DEADLINE_EXCEEDED`` once the deadline has passed, ``CANCELLED`` otherwise.
    """
    grpc_type = kind.grpc_type
    stats = CallStats()
    started = scope.server.start(method, grpc_type) if scope is not None else 0.0
    span: trace.Span | None = None
    if tracer is not None:
        span, headers = _start_span(tracer, method, headers, context)
    error: BaseException | None = None
    try:
        return await relay(upstream, method, headers, kind, None, context, stats)
    except BaseException as exc:
        error = exc
        raise
    finally:
        code = call_end_code(context, error)
        if scope is not None:
            scope.record(method, grpc_type, code, started, stats)
        if span is not None:
            end_rpc_span(span, code, context.details(), server=True)


def call_end_code(
    context: grpc.aio.ServicerContext, error: BaseException | None
) -> grpc.StatusCode:
    """The status a handled call ended with: a cancelled handler is DEADLINE_EXCEEDED when the
    caller's deadline has passed, else CANCELLED; otherwise the status set on the context
    (UNKNOWN when an exception escaped without one, OK when none was set)."""
    if isinstance(error, asyncio.CancelledError):
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    code = context.code()
    if code is not None:
        return code
    return grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK


def _start_span(
    tracer: trace.Tracer, method: str, headers: Metadata, context: grpc.aio.ServicerContext
) -> tuple[trace.Span, Metadata]:
    # The forwardable headers still hold the caller's traceparent/tracestate/baggage.
    span = tracer.start_span(
        method.lstrip("/") or method, context=extract_context(headers), kind=SpanKind.SERVER
    )
    if not span.get_span_context().trace_flags.sampled:
        return span, headers  # not recorded: forward the caller's context unchanged
    span.set_attributes({**rpc_attributes(method), **peer_attributes(context.peer())})
    # The attempts' CLIENT spans take this span as parent from the forwarded headers.
    forwarded = inject_context(list(headers), trace.set_span_in_context(span))
    return span, tuple(forwarded)
