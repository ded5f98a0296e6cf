"""The forwarding core: a ``grpc.aio`` generic handler relaying raw bytes to an upstream.

Forwarding never decodes protobuf. Every method is served with identity serializers, so request
and response messages are ``bytes`` end to end. On the wire the four RPC kinds are the same
(a stream of length-prefixed messages each way), so the stream-stream relay is always correct;
a route may declare the kind of some methods (``RpcKind`` hints in :class:`Upstream`) to
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
  defaulted per route when the caller sent none (a caller's deadline is never capped);
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

Retries (``balancers.RetryPolicy``) happen only when safe: the attempt failed with a retryable
code before any response header or message arrived, the request messages consumed so far are all
buffered (a copy is kept up to ``RetryPolicy.max_buffer_bytes``; past it the call is committed
to its attempt) and the deadline leaves room for the backoff. A failure with empty initial
metadata and no message counts as "before any header" (a trailers-only response).

This module keeps the dispatch (:class:`ProxyHandler`: route, kind, cached method handlers),
:class:`Upstream` and the channel/server options; the call path is split by concern:
:mod:`sidecar.relay` (the byte relays), :mod:`sidecar.retry_replay` (request replay, retry
waits) and :mod:`sidecar.proxy_telemetry` (per-call metrics and spans).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import trace

from balancers import RetryPolicy
from sidecar.method_kinds import MethodKinds
from sidecar.proxy_metrics import APP_CLUSTER, INBOUND, OUTBOUND, ProxyMetrics
from sidecar.proxy_telemetry import Scope, observed
from sidecar.relay import CALL_CACHE_SIZE, Relay
from telemetry.metrics import BIDI_STREAM
from telemetry.rpc_kind import RpcKind

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DROPPED_HEADERS",
    "Metadata",
    "ProxyHandler",
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


@dataclass(frozen=True)
class Upstream:
    """Where a route forwards to, and how.

    - ``name``: the cluster name, used in errors and logs;
    - ``channel``: a ``grpc.aio.Channel``-shaped object (``unary_unary``/``unary_stream``/
      ``stream_unary``/``stream_stream`` returning aio multi-callables); the owner closes it;
    - ``timeout``: seconds used when the client sent no deadline (``None``: no deadline);
    - ``retry``: a ``balancers.RetryPolicy``, or ``None`` for a single attempt;
    - ``kinds``/``default_kind``: RPC-kind hints per full method path (``/pkg.Svc/M``) and for
      the rest of the route (``None``: no hint). A wrong hint breaks calls (a unary hint on a
      streaming method drops messages), so only declare what the service definition says
      (measured on a unary call, the ``UNARY_UNARY`` path costs ~405 µs CPU against ~550 µs
      for the generic stream path: no request-pump task, one batch for the reply);
    - ``learned``: the kinds learned from the servers (:class:`~sidecar.method_kinds.MethodKinds`),
      used for methods without a hint.
    """

    name: str
    channel: Any
    timeout: float | None = None
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
            kind = learned.table.get(method)
            if kind is not None:
                return kind
            learned.miss(method)
        return RpcKind.STREAM_STREAM


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
        self._metrics = metrics
        self._direction = direction
        self._tracer = tracer
        self._instrumented = metrics is not None or tracer is not None
        self._relay = Relay(tracer=tracer, forwarded_for=forwarded_for)
        self._scopes: dict[str, Scope] = {}
        self.active = 0
        self.started = 0
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
        if len(self._handlers) >= CALL_CACHE_SIZE:
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
        instrumented = self._instrumented
        tracer = self._tracer
        scope = self._scope_of(upstream)
        # Plain closures rather than functools.partial: grpc checks every behavior with
        # inspect.iscoroutinefunction per call, which is several times slower on a partial.
        if kind is RpcKind.STREAM_STREAM or kind is RpcKind.UNARY_STREAM:
            stream_response = self._relay.stream_response

            async def relay_stream(request: Any, context: grpc.aio.ServicerContext) -> None:
                self.active += 1
                self.started += 1
                try:
                    headers = forwardable_metadata(context.invocation_metadata())
                    if not instrumented:
                        await stream_response(upstream, method, headers, kind, request, context)
                    else:
                        await observed(
                            stream_response, scope, tracer, upstream, method, headers, kind, context
                        )
                finally:
                    self.active -= 1

            # Stream-request handlers for every kind: a unary-request call reads its one
            # message itself (see sidecar.relay), as grpc.aio's unary handlers never answer a
            # request stream that ends without a complete message.
            return grpc.stream_stream_rpc_method_handler(relay_stream)
        unary_response = self._relay.unary_response

        async def relay_unary(request: Any, context: grpc.aio.ServicerContext) -> bytes | None:
            self.active += 1
            self.started += 1
            try:
                headers = forwardable_metadata(context.invocation_metadata())
                if not instrumented:
                    return await unary_response(upstream, method, headers, kind, request, context)
                result: bytes | None = await observed(
                    unary_response, scope, tracer, upstream, method, headers, kind, context
                )
                return result
            finally:
                self.active -= 1

        return grpc.stream_unary_rpc_method_handler(relay_unary)

    def _scope_of(self, upstream: Upstream) -> Scope | None:
        """The metrics of calls to ``upstream`` from this listener, made once per cluster."""
        metrics = self._metrics
        if metrics is None:
            return None
        cluster = APP_CLUSTER if self._direction == INBOUND else upstream.name
        found = self._scopes.get(cluster)
        if found is None:
            found = self._scopes[cluster] = Scope(metrics, self._direction, cluster)
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
