"""The sidecar's call metrics: one contract, whichever data plane forwards the calls.

Families (go-grpc-prometheus names, so dashboards for Go services work; two labels more):

- ``grpc_server_*{grpc_type, grpc_service, grpc_method, direction, cluster}``: the calls the
  sidecar's listeners took. ``direction`` is ``outbound`` (the app calling the mesh) or
  ``inbound`` (the mesh calling the app); ``cluster`` is the meshkit cluster the call was
  routed to, :data:`APP_CLUSTER` for inbound calls.
- ``grpc_client_*`` with the same labels: the calls the sidecar made upstream, one per proxied
  call with the status of its last attempt and the time from its first attempt's start. Per
  attempt counts would differ between planes (Envoy's per-method stats are per downstream
  request), so retries are counted on their own:
- ``meshkit_cluster_retries_total{cluster}``: attempts after the first;
- ``meshkit_cluster_ejections_total{cluster}``: outlier-detection ejections.

A cluster's retry and ejection series appear once non-zero, on both planes (Envoy's page leaves
out the stats never written).

``grpc_server_*`` and ``grpc_client_*`` differ where the proxy itself ends a call: no route
(UNIMPLEMENTED), no endpoint (UNAVAILABLE), auth refusals, and in latency (the client side
leaves out the proxy's own time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from telemetry.metrics import GrpcMetrics, MethodMetrics

__all__ = [
    "APP_CLUSTER",
    "EJECTIONS",
    "INBOUND",
    "LABELS",
    "OUTBOUND",
    "RETRIES",
    "ProxyMetrics",
]

INBOUND: Final = "inbound"
OUTBOUND: Final = "outbound"
#: The ``cluster`` label of inbound calls: the local app.
APP_CLUSTER: Final = "app"
#: The labels the sidecar adds after go-grpc-prometheus' own.
LABELS: Final = ("direction", "cluster")
RETRIES: Final = "meshkit_cluster_retries"
EJECTIONS: Final = "meshkit_cluster_ejections"
RETRIES_HELP: Final = "Upstream attempts after a call's first (retries), per cluster."
EJECTIONS_HELP: Final = "Endpoints ejected by outlier detection, per cluster."


class _Ejections(Collector):
    """``meshkit_cluster_ejections_total`` read at scrape time from the balanced channels."""

    def __init__(self, clusters: Callable[[], Mapping[str, Any]]) -> None:
        self._clusters = clusters

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(EJECTIONS, EJECTIONS_HELP, labels=("cluster",))
        for name, channel in sorted(self._clusters().items()):
            core = getattr(channel, "core", channel)  # a BalancedChannel or its core
            ejections = float(getattr(core, "ejections_total", 0))
            if ejections:  # as Envoy's page, which leaves out the stats never written
                family.add_metric([name], ejections)
        yield family


class ProxyMetrics:
    """The Python plane's side of the contract, registered in ``registry``.

    ``clusters``: the current cluster name -> balanced channel map (read at scrape time) for
    the ejection counts."""

    def __init__(
        self, registry: CollectorRegistry, clusters: Callable[[], Mapping[str, Any]]
    ) -> None:
        self.server = GrpcMetrics(registry, "server", labels=LABELS)
        self.client = GrpcMetrics(registry, "client", labels=LABELS)
        self.retries = Counter(RETRIES, RETRIES_HELP, ("cluster",), registry=registry)
        registry.register(_Ejections(clusters))

    def scopes(self, direction: str, cluster: str) -> tuple[MethodMetrics, MethodMetrics]:
        """The server and client metrics of calls through ``direction`` to ``cluster``."""
        return self.server.scope(direction, cluster), self.client.scope(direction, cluster)
