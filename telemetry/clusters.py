"""Cluster state of balanced channels as Prometheus metrics and as JSON.

Read at scrape time (:class:`ClusterCollector`) and on request (:func:`clusters_snapshot`)
from the balanced channels' public ``snapshot()`` (safe from another thread, such as an HTTP
server's, while the event loop works: see ``balancers.aio.BalancedChannel.snapshot``), so the
call path pays nothing for it.

Anything with a ``snapshot()`` returning that document works, so this module imports no other
meshkit package.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = ["ENDPOINT_STATES", "ClusterCollector", "Clusters", "clusters_snapshot"]

_LOG = logging.getLogger(__name__)

Clusters = Callable[[], Mapping[str, Any]]
"""Returns the balanced channels by cluster name (objects with a ``snapshot()``)."""

#: States an endpoint can be in while it belongs to a cluster. Every one is reported, 0 when
#: empty, so a dashboard's series do not appear and vanish as endpoints move between them.
ENDPOINT_STATES: tuple[grpc.ChannelConnectivity, ...] = (
    grpc.ChannelConnectivity.IDLE,
    grpc.ChannelConnectivity.CONNECTING,
    grpc.ChannelConnectivity.READY,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE,
)
_CHANNEL_STATES = (*ENDPOINT_STATES, grpc.ChannelConnectivity.SHUTDOWN)


def clusters_snapshot(clusters: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/clusters`` document: per cluster its target, ``lb_policy``, aggregate state,
    ``ejections_total`` and endpoints (``address``, ``state``, ``reason``, ``health``,
    ``ejected``, ``picks``): each channel's ``snapshot()``.

    A cluster that cannot be read is shown with an ``error`` rather than failing the page.
    """
    out: dict[str, Any] = {}
    for name, channel in sorted(clusters.items()):
        try:
            out[name] = dict(channel.snapshot())
        except Exception as exc:
            _LOG.warning("reading cluster %s failed: %r", name, exc)
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


class ClusterCollector(Collector):
    """Scrape-time Prometheus metrics of balanced clusters.

    - ``meshkit_cluster_info{cluster,target,lb_policy}`` 1;
    - ``meshkit_cluster_connectivity{cluster,state}``: 1 for the cluster's aggregate state,
      0 for the others;
    - ``meshkit_cluster_endpoints{cluster,state}``: endpoints per state (the state the picker
      sees: a connected endpoint failing health checks or ejected is ``TRANSIENT_FAILURE``);
    - ``meshkit_cluster_endpoints_healthy{cluster}``: endpoints the picker may choose (READY);
    - ``meshkit_cluster_endpoints_ejected{cluster}``: endpoints ejected by outlier detection;
    - ``meshkit_cluster_endpoint_picks_total{cluster,endpoint}``: calls sent to each endpoint
      (restarts from 0 when an endpoint leaves the cluster and comes back).

    Registered in ``registry`` when one is given, never in the global default by itself.
    """

    def __init__(
        self,
        clusters: Clusters | None = None,
        *,
        registry: CollectorRegistry | None = None,
        documents: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        """Keep ``clusters`` (called on each scrape, from the scraping thread), or
        ``documents``: a callable returning ``/clusters`` documents (the shape of
        :func:`clusters_snapshot`) for a data plane that is not a balanced channel, such
        as Envoy's view of its clusters. Exactly one of the two."""
        if (clusters is None) == (documents is None):
            raise TypeError("ClusterCollector takes clusters or documents, not both")
        if clusters is not None:
            read = clusters
            self._documents: Callable[[], Mapping[str, Any]] = lambda: clusters_snapshot(read())
        else:
            assert documents is not None
            self._documents = documents
        if registry is not None:
            registry.register(self)

    @staticmethod
    def _families() -> tuple[
        InfoMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
    ]:
        return (
            InfoMetricFamily(
                "meshkit_cluster",
                "A configured cluster: its target and load-balancing policy.",
                labels=("cluster", "target", "lb_policy"),
            ),
            GaugeMetricFamily(
                "meshkit_cluster_connectivity",
                "Aggregate connectivity of a cluster: 1 for the current state, 0 for the others.",
                labels=("cluster", "state"),
            ),
            GaugeMetricFamily(
                "meshkit_cluster_endpoints",
                "Endpoints of a cluster by state, as the picker sees them.",
                labels=("cluster", "state"),
            ),
            GaugeMetricFamily(
                "meshkit_cluster_endpoints_healthy",
                "Endpoints of a cluster the picker may choose (READY, healthy, not ejected).",
                labels=("cluster",),
            ),
            GaugeMetricFamily(
                "meshkit_cluster_endpoints_ejected",
                "Endpoints of a cluster ejected by outlier detection.",
                labels=("cluster",),
            ),
            CounterMetricFamily(
                "meshkit_cluster_endpoint_picks",
                "Calls the balancer sent to each endpoint of a cluster.",
                labels=("cluster", "endpoint"),
            ),
        )

    def describe(self) -> Iterable[Metric]:
        """The families without samples: lets the registry check names without a scrape."""
        return self._families()

    def collect(self) -> Iterator[Metric]:
        """Read every cluster now; a cluster that cannot be read is skipped (and logged)."""
        info, connectivity, endpoints, healthy, ejected, picks = self._families()
        try:
            documents = dict(self._documents())
        except Exception as exc:
            _LOG.warning("listing clusters for metrics failed: %r", exc)
            documents = {}
        for name, document in sorted(documents.items()):
            if not isinstance(document, Mapping) or "error" in document:
                continue  # already logged by whoever built the document
            try:
                self._add(name, document, info, connectivity, endpoints, healthy, ejected, picks)
            except Exception as exc:
                _LOG.warning("reading cluster %s for metrics failed: %r", name, exc)
        yield from (info, connectivity, endpoints, healthy, ejected, picks)

    @staticmethod
    def _add(
        name: str,
        document: Mapping[str, Any],
        info: InfoMetricFamily,
        connectivity: GaugeMetricFamily,
        endpoints: GaugeMetricFamily,
        healthy: GaugeMetricFamily,
        ejected: GaugeMetricFamily,
        picks: CounterMetricFamily,
    ) -> None:
        # Read everything first, so a failure adds no partial samples for this cluster.
        target = str(document.get("target") or "")
        policy = str(document.get("lb_policy") or "")
        current = str(document.get("state"))
        by_state = {state.name: 0 for state in ENDPOINT_STATES}
        picks_by_address: dict[str, int] = {}
        n_ejected = 0
        for endpoint in document.get("endpoints", ()):
            state = str(endpoint["state"])
            by_state[state] = by_state.get(state, 0) + 1
            n_ejected += bool(endpoint.get("ejected"))
            # Addresses are unique in a cluster; summing keeps the exposition valid regardless.
            address = str(endpoint["address"])
            picks_by_address[address] = picks_by_address.get(address, 0) + int(
                endpoint.get("picks") or 0
            )

        info.add_metric([name, target, policy], {})
        for state in _CHANNEL_STATES:
            connectivity.add_metric([name, state.name], 1.0 if state.name == current else 0.0)
        for state_name, n in by_state.items():
            endpoints.add_metric([name, state_name], n)
        healthy.add_metric([name], by_state[grpc.ChannelConnectivity.READY.name])
        ejected.add_metric([name], n_ejected)
        for address, n in sorted(picks_by_address.items()):
            picks.add_metric([name, address], n)
