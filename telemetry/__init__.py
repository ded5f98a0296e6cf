"""Telemetry: Prometheus metrics and OpenTelemetry traces for gRPC clients and servers.

- :class:`GrpcMetrics` — go-grpc-prometheus style RPC metrics with a direct ``start``/``done``
  API for raw proxies; :class:`ClusterCollector` / :func:`clusters_snapshot` — endpoint
  states and picks of balanced channels, read at scrape time (register it for your channels).
- :func:`aio_client_interceptors`, :func:`client_interceptors` (sync channels),
  :func:`aio_server_interceptor`, :func:`server_interceptor` — interceptors built per
  channel/server (grpc is never patched process-wide), with filters
  (:func:`method_prefix`, :func:`health_check`, :func:`any_of`, :func:`all_of`, :func:`negate`).
- :func:`tracer_provider_from_settings`, :func:`extract_context`, :func:`inject_context` —
  OpenTelemetry set-up and W3C trace-context propagation through gRPC metadata.

Every metric is registered in the ``registry`` passed in (``None``: the default registry).
"""

from __future__ import annotations

from telemetry.clusters import ClusterCollector, clusters_snapshot
from telemetry.interceptors import (
    Filter,
    aio_client_interceptors,
    aio_server_interceptor,
    all_of,
    any_of,
    client_interceptors,
    health_check,
    method_prefix,
    negate,
    server_interceptor,
)
from telemetry.metrics import (
    BIDI_STREAM,
    CLIENT_STREAM,
    DEFAULT_LATENCY_BUCKETS,
    SERVER_STREAM,
    UNARY,
    GrpcMetrics,
    RpcKind,
    Side,
    code_label,
    split_method,
)
from telemetry.tracing import extract_context, inject_context, tracer_provider_from_settings

__all__ = [
    "BIDI_STREAM",
    "CLIENT_STREAM",
    "DEFAULT_LATENCY_BUCKETS",
    "SERVER_STREAM",
    "UNARY",
    "ClusterCollector",
    "Filter",
    "GrpcMetrics",
    "RpcKind",
    "Side",
    "aio_client_interceptors",
    "aio_server_interceptor",
    "all_of",
    "any_of",
    "client_interceptors",
    "clusters_snapshot",
    "code_label",
    "extract_context",
    "health_check",
    "inject_context",
    "method_prefix",
    "negate",
    "server_interceptor",
    "split_method",
    "tracer_provider_from_settings",
]
