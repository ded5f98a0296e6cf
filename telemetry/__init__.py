"""Telemetry: Prometheus metrics and OpenTelemetry traces for gRPC clients and servers.

- :class:`GrpcMetrics` — go-grpc-prometheus style RPC metrics with a direct ``start``/``done``
  API for raw proxies; :class:`ClusterCollector` / :func:`clusters_snapshot` — endpoint
  states and picks of balanced channels, read at scrape time (register it for your channels).
- :class:`RpcKind` — the four call kinds (``RpcKind.UNARY_STREAM``...), the one type every
  meshkit package uses; ``kind.grpc_type`` is its ``grpc_type`` label (:data:`GrpcType`).
- :func:`client_interceptors` / :func:`server_interceptor` (``grpc`` channels and servers) and
  their ``grpc.aio`` twins of the same names in :mod:`telemetry.aio` — interceptors built per
  channel/server (grpc is never patched process-wide), with filters
  (:func:`method_prefix`, :func:`health_check`, :func:`any_of`, :func:`all_of`, :func:`negate`).
- :func:`tracer_provider_from_settings`, :func:`extract_context`, :func:`inject_context` —
  OpenTelemetry set-up and W3C trace-context propagation through gRPC metadata.

Every metric is registered in the ``registry`` passed in (``None``: the default registry).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from telemetry.clusters import ClusterCollector, clusters_snapshot
from telemetry.interceptors import (
    Filter,
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
    GrpcType,
    Side,
    code_label,
    split_method,
)
from telemetry.rpc_kind import RpcKind
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
    "GrpcType",
    "RpcKind",
    "Side",
    "aio",
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

from telemetry import aio

#: Former names (before ``telemetry.aio``), importable for one release with a warning.
_DEPRECATED = {
    "aio_client_interceptors": ("telemetry.aio.client_interceptors", aio.client_interceptors),
    "aio_server_interceptor": ("telemetry.aio.server_interceptor", aio.server_interceptor),
}

if TYPE_CHECKING:
    aio_client_interceptors = aio.client_interceptors  # deprecated
    aio_server_interceptor = aio.server_interceptor  # deprecated
else:  # hidden from type checkers, which would otherwise accept any name of this module

    def __getattr__(name: str) -> Any:
        """Former names, still importable for one release with a ``DeprecationWarning``."""
        if name in _DEPRECATED:
            new, value = _DEPRECATED[name]
            warnings.warn(f"telemetry.{name} is deprecated; use {new}", DeprecationWarning, 2)
            return value
        raise AttributeError(f"module 'telemetry' has no attribute {name!r}")
