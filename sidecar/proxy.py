"""The forwarding core: a ``grpc.aio`` generic handler relaying raw bytes to an upstream.

Forwarding never decodes protobuf. Every method is served with identity serializers, so request
and response messages are ``bytes`` end to end. On the wire the four RPC kinds are the same
(a stream of length-prefixed messages each way), so the stream-stream relay is always correct;
a route may declare the kind of some methods (:class:`RpcKind` hints in :class:`Upstream`) to
take a cheaper path (the single request read in one step, no request-pump task, one batch for
the unary reply).

What is carried, per call:

- request metadata, minus connection-specific and transport-owned keys (:data:`DROPPED_HEADERS`
  and any ``proxy-*``/``:*`` key): ``grpc-timeout`` becomes the upstream timeout, compression
  (``grpc-encoding``/``grpc-accept-encoding``) is negotiated per hop by grpc itself, and
  ``user-agent`` is dropped because grpc-core overwrites it with the proxy channel's own.
  ``-bin`` keys travel as bytes. ``authorization`` is forwarded. Optionally
  ``x-forwarded-for`` gets the downstream peer address appended;
- the deadline, as the remaining time when the upstream call starts (``context.time_remaining``),
  optionally defaulted/capped per route;
- cancellation both ways: a client cancel cancels the handler task, which cancels the upstream
  call; an upstream failure ends the downstream call with the upstream status;
- the upstream's initial metadata (sent before the first message, also when no message
  follows), then its status code, details and trailing metadata unchanged, also when the
  upstream ends the call before it has read the request (an unknown method, an early answer):
  grpc.aio replaces such a status with its own ``INTERNAL`` when the relay's pending send
  fails, and :mod:`sidecar.relay_status` recovers the upstream's.

Flow control is end to end: one upstream message is read, then written downstream with
``await context.write`` (which completes only once HTTP/2 flow control has taken it); the
request side is the server's own lazy request iterator handed to the upstream call, so grpc's
request pump reads one downstream message per upstream write. Nothing is queued in between.

Failures the proxy causes are precise: no route -> ``UNIMPLEMENTED`` naming the path; the
upstream unreachable (``UNAVAILABLE`` before any response header) -> ``UNAVAILABLE`` whose
details name the upstream; deadline -> ``DEADLINE_EXCEEDED``; anything unexpected -> ``INTERNAL``
with a one-line log, never a traceback to the client and never more than that call affected;
a unary-request call (by its kind hint) whose request ends without a complete message ->
``INTERNAL`` at once (grpc.aio's unary handlers would never answer it).

Retries (:class:`RetryPolicy`) happen only when safe: the attempt failed with a retryable code
before any response header or message arrived, the request messages consumed so far are all
buffered (a copy is kept up to ``RetryPolicy.max_buffer_bytes``; past it the call is committed
to its attempt) and the deadline leaves room for the backoff. A failure with empty initial
metadata and no message counts as "before any header" (a trailers-only response).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import Counter

from sidecar.method_kinds import MethodKinds
from sidecar.proxy_metrics import APP_CLUSTER, INBOUND, OUTBOUND, ProxyMetrics
from sidecar.relay_status import StatusGuard
from telemetry.metrics import BIDI_STREAM, CLIENT_STREAM, SERVER_STREAM, UNARY, MethodMetrics
from telemetry.metrics import RpcKind as GrpcType
from telemetry.tracing import (
    ClientAttempt,
    end_rpc_span,
    extract_context,
    inject_context,
    peer_attributes,
    rpc_attributes,
    start_client_attempt,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DROPPED_HEADERS",
    "Metadata",
    "ProxyHandler",
    "RetryPolicy",
    "RpcKind",
    "Upstream",
    "forwardable_metadata",
    "rejecting_handler",
    "server_options",
    "upstream_channel_options",
]

_LOG = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, "str | bytes"]]

#: Larger than grpc's 4 MiB default on purpose: a proxy must not impose a lower limit than the
#: endpoints it joins (they enforce their own); it bounds the memory of one buffered message.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Request metadata keys never forwarded (besides ``proxy-*`` and pseudo-headers ``:*``).
DROPPED_HEADERS = frozenset(
    {
        # HTTP hop-by-hop (RFC 9110 7.6.1); forbidden in HTTP/2 anyway
        "connection",
        "keep-alive",
        "transfer-encoding",
        "upgrade",
        "te",
        "host",
        # owned by the transport of each hop
        "content-type",
        "content-length",
        "user-agent",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "grpc-status",
        "grpc-message",
    }
)

_EOF = grpc.aio.EOF
_CALL_CACHE_SIZE = 4096

_Relay = Callable[..., Awaitable[Any]]


class RpcKind(enum.Enum):
    """The RPC kind of a method, a hint for a cheaper forwarding path.

    Measured on a unary call: the ``UNARY_UNARY`` path costs the proxy ~405 µs CPU per call
    against ~550 µs for the generic stream path (grpc's request pump task and separate
    write/half-close batches), the same as a bare unary-only relay.
    """

    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"


# The ``grpc_type`` label of each forwarding path. Without a kind hint the proxy cannot tell a
# unary call from a bidi one on the wire, so unhinted methods are counted as ``bidi_stream``.
_GRPC_TYPES: dict[RpcKind, GrpcType] = {
    RpcKind.UNARY_UNARY: UNARY,
    RpcKind.UNARY_STREAM: SERVER_STREAM,
    RpcKind.STREAM_UNARY: CLIENT_STREAM,
    RpcKind.STREAM_STREAM: BIDI_STREAM,
}


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often to retry a failed upstream attempt.

    ``max_attempts`` counts the first attempt. Backoff before retry ``n`` (1-based) is uniform
    in ``[0, min(max_backoff, initial_backoff * backoff_multiplier**(n-1))]`` (full jitter) and
    never runs past the call's deadline. ``max_buffer_bytes`` caps the copy of the request
    stream kept for replay (a client-streaming call longer than that is not retried).
    """

    max_attempts: int = 3
    retryable_codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    backoff_multiplier: float = 2.0
    max_buffer_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        """Validate; errors name the field."""
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: must be >= 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff:
            raise ValueError("initial_backoff/max_backoff: need 0 <= initial <= max")
        if self.backoff_multiplier < 1:
            raise ValueError(f"backoff_multiplier: must be >= 1, got {self.backoff_multiplier}")
        if self.max_buffer_bytes < 0:
            raise ValueError(f"max_buffer_bytes: must be >= 0, got {self.max_buffer_bytes}")
        object.__setattr__(self, "retryable_codes", frozenset(self.retryable_codes))

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the second attempt)."""
        growth = self.backoff_multiplier ** (retry - 1)
        ceiling = min(self.max_backoff, self.initial_backoff * growth)
        return random.uniform(0.0, ceiling)


@dataclass(frozen=True)
class Upstream:
    """Where a route forwards to, and how.

    - ``name``: the cluster name, used in errors and logs;
    - ``channel``: a ``grpc.aio.Channel``-shaped object (``unary_unary``/``unary_stream``/
      ``stream_unary``/``stream_stream`` returning aio multi-callables); the owner closes it;
    - ``timeout``: seconds used when the client sent no deadline (``None``: no deadline);
    - ``max_timeout``: cap on any deadline sent upstream (``None``: no cap);
    - ``retry``: a :class:`RetryPolicy`, or ``None`` for a single attempt;
    - ``kinds``/``default_kind``: RPC-kind hints per full method path (``/pkg.Svc/M``) and for
      the rest of the route (``None``: no hint). A wrong hint breaks calls (a unary hint on a
      streaming method drops messages), so only declare what the service definition says;
    - ``learned``: the kinds learned from the servers (:class:`~sidecar.method_kinds.MethodKinds`),
      used for methods without a hint.
    """

    name: str
    channel: Any
    timeout: float | None = None
    max_timeout: float | None = None
    retry: RetryPolicy | None = None
    kinds: Mapping[str, RpcKind] = field(default_factory=dict)
    default_kind: RpcKind | None = None
    learned: MethodKinds | None = None

    def kind_of(self, method: str) -> RpcKind:
        """The forwarding path for ``method``: its hint, else its learned kind, else
        ``STREAM_STREAM`` (correct for every kind). A method no server described asks the
        learner to look again (rate-limited there), so a kind learned later takes effect."""
        if self.kinds:
            hinted = self.kinds.get(method)
            if hinted is not None:
                return hinted
        if self.default_kind is not None:
            return self.default_kind
        learned = self.learned
        if learned is not None:
            name = learned.table.get(method)
            if name is not None:
                return _KIND_NAMED[name]
            learned.miss(method)
        return RpcKind.STREAM_STREAM


#: :class:`RpcKind` by its value (a dict lookup; the enum's own is slower on the call path).
_KIND_NAMED: dict[str, RpcKind] = {kind.value: kind for kind in RpcKind}


def forwardable_metadata(metadata: Metadata | None) -> tuple[tuple[str, str | bytes], ...]:
    """``metadata`` without the keys a proxy must not forward (see :data:`DROPPED_HEADERS`)."""
    if not metadata:
        return ()
    dropped = DROPPED_HEADERS
    return tuple(
        [kv for kv in metadata if kv[0] not in dropped and not kv[0].startswith((":", "proxy-"))]
    )


def rejecting_handler(code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A method handler ending the call with ``code``/``details`` without reading requests.

    Stream-stream so it fits any RPC kind on the wire and never waits for a request message
    (a bidi client may be waiting for the server to speak first).
    """

    async def reject(_requests: object, context: grpc.aio.ServicerContext) -> None:
        context.set_code(code)
        context.set_details(details)

    return grpc.stream_stream_rpc_method_handler(reject)


def server_options(
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_concurrent_streams: int | None = None,
    min_client_ping_interval: float = 10.0,
    permit_keepalive_without_calls: bool = True,
    keepalive_time: float | None = None,
    keepalive_timeout: float = 20.0,
    max_connection_idle: float | None = None,
    max_connection_age: float | None = None,
    max_connection_age_grace: float | None = None,
) -> list[tuple[str, int]]:
    """Options for the proxy's listening ``grpc.aio.server(options=...)``.

    A sidecar's clients are local apps whose keepalive settings it does not control, so it
    accepts client pings down to ``min_client_ping_interval`` (grpc's default is 5 min, which
    answers a 30 s client keepalive with GOAWAY ``too_many_pings``), also on idle connections.
    ``keepalive_time`` makes the server ping clients (``None``: grpc's 2 h default).
    ``max_connection_age`` (with grace) makes long-lived clients re-resolve and rebalance.
    """
    ms = 1000
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.http2.min_ping_interval_without_data_ms", int(min_client_ping_interval * ms)),
        ("grpc.keepalive_permit_without_calls", int(permit_keepalive_without_calls)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout * ms)),
    ]
    if max_concurrent_streams is not None:
        options.append(("grpc.max_concurrent_streams", max_concurrent_streams))
    if keepalive_time is not None:
        options.append(("grpc.keepalive_time_ms", int(keepalive_time * ms)))
    if max_connection_idle is not None:
        options.append(("grpc.max_connection_idle_ms", int(max_connection_idle * ms)))
    if max_connection_age is not None:
        options.append(("grpc.max_connection_age_ms", int(max_connection_age * ms)))
    if max_connection_age_grace is not None:
        options.append(("grpc.max_connection_age_grace_ms", int(max_connection_age_grace * ms)))
    return options


def upstream_channel_options(
    *,
    keepalive_time: float | None = 300.0,
    keepalive_timeout: float = 20.0,
    keepalive_without_calls: bool = False,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    local_subchannel_pool: bool = False,
) -> list[tuple[str, int]]:
    """Options for an upstream channel (``grpc.aio.insecure_channel(target, options=...)``).

    Keepalive defaults to 300 s: a default grpc server refuses pings more often than every
    5 minutes (GOAWAY ``too_many_pings``), so anything lower must be agreed with the upstream
    (configure it explicitly then). ``None`` disables keepalive pings.
    ``local_subchannel_pool`` keeps this channel's connections to itself instead of sharing
    grpc's process-wide pool (useful for per-cluster credentials and for tests).
    """
    ms = 1000
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if keepalive_time is not None:
        if keepalive_time <= 0:
            raise ValueError(f"keepalive_time: must be > 0 seconds, got {keepalive_time}")
        options += [
            ("grpc.keepalive_time_ms", int(keepalive_time * ms)),
            ("grpc.keepalive_timeout_ms", int(keepalive_timeout * ms)),
            ("grpc.keepalive_permit_without_calls", int(keepalive_without_calls)),
        ]
    if local_subchannel_pool:
        options.append(("grpc.use_local_subchannel_pool", 1))
    return options


class _RequestReplay:
    """Feeds the downstream request stream to successive attempts, keeping a copy for replay.

    Only one ``context.read()`` is ever outstanding: when an attempt is abandoned while its
    request pump is inside a read, the next attempt's generator waits for that read, whose
    message the abandoned generator hands over through the buffer. Once the copy grows past
    ``cap`` it is dropped and ``replayable`` turns false for the rest of the call.
    """

    __slots__ = (
        "_cap",
        "_context",
        "_reading",
        "_size",
        "_stats",
        "_waiters",
        "attempt",
        "buffer",
        "eof",
    )

    def __init__(
        self, context: grpc.aio.ServicerContext, cap: int, stats: _CallStats | None = None
    ) -> None:
        self._context = context
        self._stats = stats
        self._cap = cap
        self._size = 0
        self._reading = False
        self._waiters: list[asyncio.Future[None]] = []
        self.buffer: list[bytes] | None = []
        self.eof = False
        self.attempt = 0

    @property
    def replayable(self) -> bool:
        return self.buffer is not None

    def next_attempt(self) -> AsyncIterator[bytes]:
        self.attempt += 1
        return self._messages(self.attempt)

    async def _read(self) -> Any:
        self._reading = True
        try:
            return await self._context.read()
        finally:
            self._reading = False
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _messages(self, attempt: int) -> AsyncIterator[bytes]:
        index = 0
        while attempt == self.attempt:
            buffer = self.buffer
            if buffer is not None and index < len(buffer):
                index += 1
                yield buffer[index - 1]
                continue
            if self.eof:
                return
            if self._reading:  # an abandoned attempt's pump owns the read: wait for it
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
                continue
            message = await self._read()
            if message is _EOF:
                self.eof = True
                return
            if self._stats is not None:
                self._stats.requests += 1
            if self.buffer is not None:
                self.buffer.append(message)
                self._size += len(message)
                index += 1
                if attempt == self.attempt and self._size > self._cap:
                    self.buffer = None  # too long to replay: commit to this attempt
            if attempt != self.attempt:
                return  # abandoned meanwhile: the message went to the buffer for the next one
            yield message


class _Failed(Exception):
    """An attempt's failure, with whether the upstream had answered anything."""

    def __init__(self, error: grpc.aio.AioRpcError, answered: bool) -> None:
        super().__init__(error.code())
        self.error = error
        self.answered = answered


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
    context: grpc.aio.ServicerContext, stats: _CallStats
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


class _CallStats:
    """One instrumented call's counts, plain attributes bumped on the relay path and added to
    the metrics once when the call ends (a Prometheus ``inc`` takes a lock)."""

    __slots__ = ("attempts", "client_started", "requests", "responses")

    def __init__(self) -> None:
        self.attempts = 0  # upstream calls started
        self.client_started = 0.0  # perf_counter() at the first attempt's start
        self.requests = 0
        self.responses = 0


class _Scope:
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
        stats: _CallStats,
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


def _raise_if_caller_gone(context: grpc.aio.ServicerContext) -> None:
    """Raise ``CancelledError`` when the caller's call has already ended (it cancelled, or its
    deadline passed, which usually is why the upstream attempt failed too): a status sent now
    fails inside grpc-core, which logs it as an error with a traceback. Ending the handler as
    cancelled is what grpc does itself for such a call."""
    remaining = context.time_remaining()
    if context.cancelled() or (remaining is not None and remaining <= 0):
        raise asyncio.CancelledError()


def _end_attempt(span: ClientAttempt | None, code: grpc.StatusCode, details: str = "") -> None:
    """End an attempt's CLIENT span (if traced) with the status the relay resolved; a span
    already ended by its call keeps that status (only the first end counts)."""
    if span is not None:
        span.end(code, details if code is not grpc.StatusCode.OK else "")


class ProxyHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Forwards every method to ``upstream_for(method)`` as raw bytes.

    ``upstream_for(method) -> Upstream | None`` is called per call (a
    :class:`~sidecar.routing.Router` of upstreams fits, it caches); ``None`` answers
    ``UNIMPLEMENTED`` naming the path. ``authenticate(metadata) -> None | details`` (e.g.
    ``TokenAuth(...).check``) runs first; details mean ``UNAUTHENTICATED``.
    ``forwarded_for`` appends the downstream peer to ``x-forwarded-for``.
    Add it with ``server.add_generic_rpc_handlers((handler,))``.

    ``metrics`` (:class:`~sidecar.proxy_metrics.ProxyMetrics`) counts each call as its
    contract says, labelled ``direction`` (the listener's, :data:`OUTBOUND` or
    :data:`INBOUND`) and ``cluster`` (the upstream's name; :data:`APP_CLUSTER` inbound; ``""``
    for a call refused before it had a route): ``grpc_server_*`` around the whole call, calls
    the proxy refuses included (as ``bidi_stream``); ``grpc_client_*`` around the upstream
    exchange, from the first attempt's start to the final status; messages both ways;
    attempts after the first in ``meshkit_cluster_retries_total``. ``grpc_type`` comes from
    the upstream's kind for the method (``bidi_stream`` when unknown).

    ``tracer`` makes one SERVER span per proxied call, child of the ``traceparent`` the caller
    sent, and under it one CLIENT span per upstream attempt, whose context is the
    ``traceparent`` sent upstream when it is sampled (otherwise the caller's headers go
    upstream untouched). Without metrics or tracer, calls take the uninstrumented path.

    ``active`` / ``started``: the calls in flight now and started so far (refused ones
    included), what a drain watches.
    """

    def __init__(
        self,
        upstream_for: Callable[[str], Upstream | None],
        *,
        authenticate: Callable[[Metadata], str | None] | None = None,
        forwarded_for: bool = False,
        metrics: ProxyMetrics | None = None,
        direction: str = OUTBOUND,
        tracer: trace.Tracer | None = None,
    ) -> None:
        """Keep the callables; nothing is started."""
        self._upstream_for = upstream_for
        self._authenticate = authenticate
        self._forwarded_for = forwarded_for
        self._metrics = metrics
        self._direction = direction
        self._tracer = tracer
        self._instrumented = metrics is not None or tracer is not None
        self._scopes: dict[str, _Scope] = {}
        self.active = 0
        self.started = 0
        self._callables: dict[tuple[Any, str, RpcKind], Any] = {}
        self._handlers: dict[str, tuple[Upstream, RpcKind, grpc.RpcMethodHandler]] = {}

    # -- dispatch -------------------------------------------------------------------------

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        """The method handler for one incoming call (grpc calls this per call)."""
        method: str = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        if self._authenticate is not None:
            details = self._authenticate(metadata or ())
            if details is not None:
                return self._reject(method, grpc.StatusCode.UNAUTHENTICATED, details)
        try:
            upstream = self._upstream_for(method)
        except Exception as exc:
            _LOG.error("routing %s failed: %r", method, exc)
            return self._reject(method, grpc.StatusCode.INTERNAL, f"proxy: routing {method} failed")
        if upstream is None:
            return self._reject(
                method, grpc.StatusCode.UNIMPLEMENTED, f"proxy: no route for {method}"
            )
        # The kind is looked up per call: one learned after this handler was cached (server
        # reflection answering late) takes effect on the next call, without a reload.
        kind = upstream.kind_of(method)
        cached = self._handlers.get(method)
        if cached is not None and cached[0] is upstream and cached[1] is kind:
            return cached[2]
        handler = self._method_handler(upstream, method, kind)
        if len(self._handlers) >= _CALL_CACHE_SIZE:
            self._handlers.clear()  # method paths come from the network: stay bounded
        self._handlers[method] = (upstream, kind, handler)
        return handler

    def _method_handler(
        self, upstream: Upstream, method: str, kind: RpcKind
    ) -> grpc.RpcMethodHandler:
        """The handler of every call to ``method`` routed to ``upstream``.

        Built once per (method, upstream) and reused: grpc asks :meth:`service` per call, and
        a fresh closure plus ``RpcMethodHandler`` per call was measurable. The request
        metadata is read from the call's context inside the handler. A reload yields new
        :class:`Upstream` objects, so a cached handler never outlives its route.
        """
        # Chosen here, once per handler, so a call pays for instrumentation only when it is on.
        observed = self._observed if self._instrumented else None
        scope = self._scope_of(upstream)
        # Plain closures rather than functools.partial: grpc checks every behavior with
        # inspect.iscoroutinefunction per call, which is several times slower on a partial.
        if kind is RpcKind.STREAM_STREAM or kind is RpcKind.UNARY_STREAM:
            stream_response = self._stream_response

            async def relay_stream(request: Any, context: grpc.aio.ServicerContext) -> None:
                self.active += 1
                self.started += 1
                try:
                    headers = forwardable_metadata(context.invocation_metadata())
                    if observed is None:
                        await stream_response(upstream, method, headers, kind, request, context)
                    else:
                        await observed(
                            stream_response, scope, upstream, method, headers, kind, context
                        )
                finally:
                    self.active -= 1

            # Stream-request handlers for every kind: a unary-request call reads its one
            # message itself (_single_request), as grpc.aio's unary handlers never answer a
            # request stream that ends without a complete message.
            return grpc.stream_stream_rpc_method_handler(relay_stream)
        unary_response = self._unary_response

        async def relay_unary(request: Any, context: grpc.aio.ServicerContext) -> bytes | None:
            self.active += 1
            self.started += 1
            try:
                headers = forwardable_metadata(context.invocation_metadata())
                if observed is None:
                    return await unary_response(upstream, method, headers, kind, request, context)
                result: bytes | None = await observed(
                    unary_response, scope, upstream, method, headers, kind, context
                )
                return result
            finally:
                self.active -= 1

        return grpc.stream_unary_rpc_method_handler(relay_unary)

    def _scope_of(self, upstream: Upstream) -> _Scope | None:
        """The metrics of calls to ``upstream`` from this listener, made once per cluster."""
        metrics = self._metrics
        if metrics is None:
            return None
        cluster = APP_CLUSTER if self._direction == INBOUND else upstream.name
        found = self._scopes.get(cluster)
        if found is None:
            found = self._scopes[cluster] = _Scope(metrics, self._direction, cluster)
        return found

    def _reject(self, method: str, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
        self.started += 1
        metrics = self._metrics
        if metrics is not None:
            # Refused before any route: no cluster yet, except inbound (always the app).
            cluster = APP_CLUSTER if self._direction == INBOUND else ""
            server = metrics.server.scope(self._direction, cluster)
            server.done(method, BIDI_STREAM, code, server.start(method, BIDI_STREAM))
        return rejecting_handler(code, details)

    # -- instrumentation ----------------------------------------------------------------------

    async def _observed(
        self,
        relay: _Relay,
        scope: _Scope | None,
        upstream: Upstream,
        method: str,
        headers: Metadata,
        kind: RpcKind,
        context: grpc.aio.ServicerContext,
    ) -> Any:
        """``relay`` with metrics (``scope``) and the SERVER span around it.

        The relay reads the requests itself, counting them (so no request iterator is given),
        and counts attempts and responses in a :class:`_CallStats`. The final code is read
        back from the context (``set_code``/``abort`` record it); cancellation is
        ``DEADLINE_EXCEEDED`` once the deadline has passed, ``CANCELLED`` otherwise.
        """
        grpc_type = _GRPC_TYPES[kind]
        stats = _CallStats()
        started = scope.server.start(method, grpc_type) if scope is not None else 0.0
        span: trace.Span | None = None
        if self._tracer is not None:
            span, headers = self._start_span(self._tracer, method, headers, context)
        code: grpc.StatusCode | None = None
        try:
            return await relay(upstream, method, headers, kind, None, context, stats)
        except asyncio.CancelledError:
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            if code is None:
                code = context.code() or grpc.StatusCode.OK
            if scope is not None:
                scope.record(method, grpc_type, code, started, stats)
            if span is not None:
                end_rpc_span(span, code, context.details(), server=True)

    @staticmethod
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

    def _callable(self, channel: Any, method: str, kind: RpcKind) -> Any:
        key = (channel, method, kind)
        found = self._callables.get(key)
        if found is None:
            found = getattr(channel, kind.value)(method)
            if len(self._callables) >= _CALL_CACHE_SIZE:
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
        if remaining is None:
            remaining = upstream.timeout
        cap = upstream.max_timeout
        if cap is not None and (remaining is None or remaining > cap):
            remaining = cap
        return remaining

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

    async def _retry_wait(
        self, upstream: Upstream, attempt: int, failure: _Failed, deadline: float | None
    ) -> bool:
        """Sleep the backoff and return True if attempt ``attempt + 1`` may start."""
        policy = upstream.retry
        if (
            policy is None
            or failure.answered
            or attempt >= policy.max_attempts
            or failure.error.code() not in policy.retryable_codes
        ):
            return False
        delay = policy.backoff(attempt)
        if deadline is not None and asyncio.get_running_loop().time() + delay >= deadline:
            return False
        _LOG.debug("retrying on %s after %s (attempt %d)", upstream.name, failure, attempt + 1)
        await asyncio.sleep(delay)
        return True

    @staticmethod
    def _attempt_timeout(deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return deadline - asyncio.get_running_loop().time()

    # -- unary response (unary-unary, stream-unary) ------------------------------------------

    async def _unary_response(
        self,
        upstream: Upstream,
        method: str,
        headers: Metadata,
        kind: RpcKind,
        request: Any,
        context: grpc.aio.ServicerContext,
        stats: _CallStats | None = None,
    ) -> bytes | None:
        if kind is RpcKind.UNARY_UNARY:
            request = await _single_request(context)
            if stats is not None:
                stats.requests = 1
        timeout = self._timeout(upstream, context)
        headers = self._headers(headers, context)
        multicallable = self._callable(upstream.channel, method, kind)
        streaming = kind is RpcKind.STREAM_UNARY
        replay = (
            _RequestReplay(context, upstream.retry.max_buffer_bytes, stats)
            if streaming and upstream.retry is not None
            else None
        )
        if streaming and replay is None and stats is not None:
            request = _counted_requests(context, stats)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        attempt = 0
        while True:
            attempt += 1
            if replay is not None:
                request = replay.next_attempt()
            call, span = self._start(
                multicallable,
                request,
                deadline,
                headers,
                upstream,
                context,
                method,
                attempt,
                stats,
                guarded=streaming,
            )
            if call is None:
                return None
            guard = StatusGuard(call) if streaming else None
            try:
                response = await call
                _end_attempt(span, grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as raised:
                error = raised if guard is None else await guard.resolve(call, raised)
                if error is None:  # the upstream ended OK; grpc.aio lost its reply
                    _end_attempt(span, grpc.StatusCode.OK)
                    self._internal(context, method, raised)
                    return None
                _end_attempt(span, error.code(), error.details() or "")
                initial = error.initial_metadata()
                failure = _Failed(error, answered=bool(initial))
                if (replay is None or replay.replayable) and await self._retry_wait(
                    upstream, attempt, failure, deadline
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
                _end_attempt(span, grpc.StatusCode.CANCELLED, "cancelled by the caller")
                raise
            except Exception as exc:
                call.cancel()
                _end_attempt(span, grpc.StatusCode.INTERNAL, repr(exc))
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

    async def _stream_response(
        self,
        upstream: Upstream,
        method: str,
        headers: Metadata,
        kind: RpcKind,
        request: Any,
        context: grpc.aio.ServicerContext,
        stats: _CallStats | None = None,
    ) -> None:
        if kind is RpcKind.UNARY_STREAM:
            request = await _single_request(context)
            if stats is not None:
                stats.requests = 1
        timeout = self._timeout(upstream, context)
        headers = self._headers(headers, context)
        multicallable = self._callable(upstream.channel, method, kind)
        streaming = kind is RpcKind.STREAM_STREAM
        replay = (
            _RequestReplay(context, upstream.retry.max_buffer_bytes, stats)
            if streaming and upstream.retry is not None
            else None
        )
        if streaming and replay is None and stats is not None:
            request = _counted_requests(context, stats)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        attempt = 0
        while True:
            attempt += 1
            if replay is not None:
                request = replay.next_attempt()
            call, span = self._start(
                multicallable,
                request,
                deadline,
                headers,
                upstream,
                context,
                method,
                attempt,
                stats,
                guarded=streaming,
            )
            if call is None:
                return None
            try:
                await self._relay(call, context, streaming, stats)
                _end_attempt(span, grpc.StatusCode.OK)
                return
            except _Failed as failure:
                _end_attempt(span, failure.error.code(), failure.error.details() or "")
                if (replay is None or replay.replayable) and await self._retry_wait(
                    upstream, attempt, failure, deadline
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
                _end_attempt(span, grpc.StatusCode.CANCELLED, "cancelled by the caller")
                raise
            except Exception as exc:
                call.cancel()
                _end_attempt(span, grpc.StatusCode.INTERNAL, repr(exc))
                self._internal(context, method, exc)
                return

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
        stats: _CallStats | None,
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
            call = multicallable(request, timeout=self._attempt_timeout(deadline), metadata=headers)
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
    async def _relay(
        call: Any, context: grpc.aio.ServicerContext, streaming: bool, stats: _CallStats | None
    ) -> None:
        """Relay headers, messages and trailers of ``call``; raise :class:`_Failed` on error.

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
                raise _Failed(error, answered) from None
        finally:
            if stats is not None:
                stats.responses += relayed
        if guard is None:
            trailing = tuple(await call.trailing_metadata())
        else:
            trailing = await guard.trailing_metadata(call)
        if trailing:
            context.set_trailing_metadata(trailing)
