"""Prometheus metrics for gRPC calls and for balanced clusters.

Names and labels follow go-grpc-prometheus (``grpc_server_handled_total{grpc_type,grpc_service,
grpc_method,grpc_code}`` ...) so the existing dashboards and alerts for Go services work on
meshkit unchanged; ``grpc_code`` therefore uses Go's spelling (``OK``, ``Unavailable``,
``DeadlineExceeded``), not Python's ``StatusCode`` names.

Every metric is registered in the ``registry`` given to the constructor (``None`` means
prometheus_client's default ``REGISTRY``), so tests and embedders own their registries.
"""

from __future__ import annotations

import time
from typing import Final, Literal

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from telemetry.rpc_kind import GrpcType, RpcKind

__all__ = [
    "BIDI_STREAM",
    "CLIENT_STREAM",
    "DEFAULT_LATENCY_BUCKETS",
    "SERVER_STREAM",
    "UNARY",
    "GrpcMetrics",
    "GrpcType",
    "MethodMetrics",
    "RpcKind",
    "Side",
    "code_label",
    "split_method",
]

Side = Literal["client", "server"]

#: The ``grpc_type`` label values (``RpcKind.grpc_type``). The metric methods take an
#: :class:`RpcKind`; one of these labels is still accepted in its place.
UNARY: Final = "unary"
CLIENT_STREAM: Final = "client_stream"
SERVER_STREAM: Final = "server_stream"
BIDI_STREAM: Final = "bidi_stream"

# A local gRPC hop costs ~100 µs and a deadline is rarely above 10 s: roughly 2.5x steps
# between the two keep the bucket count (and the exposition size per method) small.
DEFAULT_LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# Go's codes.Code.String(), so that queries like grpc_code!="OK" or ="Unavailable" match.
_GO_CODE_NAMES: Final[dict[grpc.StatusCode, str]] = {
    code: "".join(part.capitalize() for part in code.name.split("_")) for code in grpc.StatusCode
}
_GO_CODE_NAMES[grpc.StatusCode.OK] = "OK"
_GO_CODE_NAMES[grpc.StatusCode.CANCELLED] = "Canceled"

UNKNOWN_LABEL: Final = "unknown"


def code_label(code: grpc.StatusCode) -> str:
    """The ``grpc_code`` label of ``code``, spelled as Go does (``DeadlineExceeded``)."""
    return _GO_CODE_NAMES[code]


def split_method(full_method: str) -> tuple[str, str]:
    """Split ``/pkg.Service/Method`` into ``("pkg.Service", "Method")``.

    Malformed names give ``"unknown"`` parts rather than raising: the name comes from the
    peer, and a metric must never fail a call.
    """
    service, sep, method = full_method.lstrip("/").rpartition("/")
    if not sep or not service or not method:
        return UNKNOWN_LABEL, UNKNOWN_LABEL
    return service, method


class _MethodSeries:
    """The label children of one (method, kind), resolved once: ``labels()`` takes a lock and
    builds a tuple on every call, which the proxy hot path should not pay."""

    __slots__ = (
        "_handled",
        "_handled_parent",
        "_labels",
        "handling",
        "received",
        "sent",
        "started",
    )

    def __init__(
        self,
        metrics: GrpcMetrics,
        kind: GrpcType,
        service: str,
        method: str,
        scope: tuple[str, ...] = (),
    ) -> None:
        self._labels = (kind, service, method, *scope)
        self.started = metrics.started.labels(*self._labels)
        self.handling = metrics.handling_seconds.labels(*self._labels)
        self.received = metrics.msg_received.labels(*self._labels)
        self.sent = metrics.msg_sent.labels(*self._labels)
        self._handled_parent = metrics.handled
        self._handled: dict[grpc.StatusCode, Counter] = {}

    def handled(self, code: grpc.StatusCode) -> Counter:
        child = self._handled.get(code)
        if child is None:
            child = self._handled_parent.labels(*self._labels, _GO_CODE_NAMES[code])
            self._handled[code] = child
        return child


class MethodMetrics:
    """The RPC metrics of one scope (e.g. ``direction="outbound", cluster="backend"``) of a
    :class:`GrpcMetrics` with extra labels: the same ``start`` / ``done`` / ``received`` /
    ``sent`` API, with the scope's label values fixed. Made by :meth:`GrpcMetrics.scope`;
    resolve it once per route or upstream, not per call."""

    __slots__ = ("_metrics", "_overflow", "_scope", "_series")

    def __init__(self, metrics: GrpcMetrics, scope: tuple[str, ...]) -> None:
        self._metrics = metrics
        self._scope = scope
        # Keyed by kind and by its label (same table): one lookup per call either way.
        self._series: dict[str, dict[str, _MethodSeries]] = {}
        for kind in RpcKind:
            self._series[kind] = self._series[kind.grpc_type] = {}
        self._overflow: dict[str, _MethodSeries] = {}

    def _get(self, method: str, kind: RpcKind | GrpcType) -> _MethodSeries:
        by_method = self._series[kind]
        series = by_method.get(method)
        if series is None:
            label = kind.grpc_type if isinstance(kind, RpcKind) else kind
            metrics = self._metrics
            if metrics.reserve_method(method):
                series = _MethodSeries(metrics, label, *split_method(method), self._scope)
                by_method[method] = series
            else:
                series = self._overflow.get(label)
                if series is None:
                    unknown = (UNKNOWN_LABEL, UNKNOWN_LABEL)
                    series = _MethodSeries(metrics, label, *unknown, self._scope)
                    self._overflow[label] = series
        return series

    def start(self, method: str, kind: RpcKind | GrpcType = RpcKind.UNARY_UNARY) -> float:
        """Count a started RPC; returns the start time to pass to :meth:`done`."""
        self._get(method, kind).started.inc()
        return time.perf_counter()

    def done(
        self, method: str, kind: RpcKind | GrpcType, code: grpc.StatusCode, started_at: float
    ) -> None:
        """Count a finished RPC with its status and observe its latency since ``started_at``."""
        series = self._get(method, kind)
        series.handled(code).inc()
        series.handling.observe(time.perf_counter() - started_at)

    def received(self, method: str, kind: RpcKind | GrpcType, n: int = 1) -> None:
        """Count ``n`` messages received (requests on a server, responses on a client)."""
        self._get(method, kind).received.inc(n)

    def sent(self, method: str, kind: RpcKind | GrpcType, n: int = 1) -> None:
        """Count ``n`` messages sent (responses on a server, requests on a client)."""
        self._get(method, kind).sent.inc(n)


class GrpcMetrics:
    """go-grpc-prometheus style RPC metrics for one side (``client`` or ``server``).

    The direct API (``start`` / ``done`` / ``received`` / ``sent``) is what the interceptors use
    and what a raw proxy calls without any interceptor::

        t0 = metrics.start("/pkg.Svc/Get", RpcKind.UNARY_UNARY)
        ...
        metrics.done("/pkg.Svc/Get", RpcKind.UNARY_UNARY, grpc.StatusCode.OK, t0)

    Method names come from peers, so at most ``max_methods`` distinct names get their own
    series; later ones are counted under ``grpc_service="unknown", grpc_method="unknown"`` to
    bound the cardinality a misbehaving client can create.

    ``labels``: extra label names after ``grpc_method`` (the sidecar's ``direction`` and
    ``cluster``). Their values are fixed per :meth:`scope`; the direct API above is then not
    available (it has no values for them). The method cap counts names across all scopes.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        side: Side = "server",
        *,
        buckets: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS,
        max_methods: int = 1000,
        labels: tuple[str, ...] = (),
    ) -> None:
        if side not in ("client", "server"):
            raise ValueError(f"side must be 'client' or 'server', not {side!r}")
        reg = REGISTRY if registry is None else registry
        self.extra_labels = tuple(labels)
        labels = ("grpc_type", "grpc_service", "grpc_method", *labels)
        self.side: Side = side
        self.started = Counter(
            f"grpc_{side}_started",
            f"Total number of RPCs started on the {side}.",
            labels,
            registry=reg,
        )
        self.handled = Counter(
            f"grpc_{side}_handled",
            f"Total number of RPCs completed on the {side}, regardless of success or failure.",
            (*labels, "grpc_code"),
            registry=reg,
        )
        self.handling_seconds = Histogram(
            f"grpc_{side}_handling_seconds",
            f"Histogram of RPC handling latency (seconds) on the {side}.",
            labels,
            buckets=buckets,
            registry=reg,
        )
        self.msg_received = Counter(
            f"grpc_{side}_msg_received",
            f"Total number of RPC stream messages received on the {side}.",
            labels,
            registry=reg,
        )
        self.msg_sent = Counter(
            f"grpc_{side}_msg_sent",
            f"Total number of RPC stream messages sent on the {side}.",
            labels,
            registry=reg,
        )
        self._max_methods = max_methods
        self._methods: set[str] = set()
        self._scopes: dict[tuple[str, ...], MethodMetrics] = {}
        self._unscoped = MethodMetrics(self, ())
        # The direct API: bound methods of the empty scope (no extra per-call hop).
        self.start = self._unscoped.start
        self.done = self._unscoped.done
        self.received = self._unscoped.received
        self.sent = self._unscoped.sent

    def scope(self, *values: str) -> MethodMetrics:
        """The metrics of one value per extra label (in ``labels`` order), made once."""
        if len(values) != len(self.extra_labels):
            raise ValueError(f"scope needs values for {self.extra_labels}, got {values!r}")
        found = self._scopes.get(values)
        if found is None:
            found = self._scopes[values] = MethodMetrics(self, values)
        return found

    def reserve_method(self, method: str) -> bool:
        """Whether ``method`` gets series of its own (the ``max_methods`` cap)."""
        if method in self._methods:
            return True
        if len(self._methods) >= self._max_methods:
            return False
        self._methods.add(method)
        return True
