"""The Python data plane: grpc.aio servers relaying raw bytes over meshkit's balanced channels.

The fallback when no Envoy binary is available (and the plane ``workers > 1`` runs as several
processes, :mod:`sidecar.workers`). Per cluster a balanced channel (:mod:`sidecar.clusters`);
the outbound listener routes each call by its method path (:mod:`sidecar.outbound`); the
inbound listener forwards to the local app and serves ``grpc.health.v1`` (:mod:`sidecar.inbound`).

A reload builds the new clusters first (unchanged ones are kept), swaps the router in one
assignment, and closes the clusters no longer used after ``drain.grace_period``.

Each listener stops on its own (the drain stops the inbound first, the outbound once the app is
gone), watching the calls in flight its proxy handler counts. Call metrics follow
:mod:`sidecar.proxy_metrics`, as on the Envoy plane. Each cluster's endpoints are logged, one
line a cluster, when first resolved and on every change.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from health.aio import HealthService as AioHealthService
from sidecar.access_log import AccessLog
from sidecar.clusters import Cluster, ClusterSet, build_router
from sidecar.config import SidecarConfig
from sidecar.dataplane import ApplyError, CallCounts, DataPlane, Direction, PlaneContext, StartError
from sidecar.inbound import InboundListener
from sidecar.lifecycle import ServerGroup, TaskSet
from sidecar.outbound import OutboundListener
from sidecar.proxy_metrics import ProxyMetrics
from telemetry.clusters import ClusterCollector, clusters_snapshot

__all__ = ["PythonDataPlane"]

_LOG = logging.getLogger("meshkit.sidecar")


def _endpoints_text(cluster: Cluster) -> str:
    addresses = [sc.address for sc in cluster.channel.core.subchannels]
    return ", ".join(
        f"[{a.host}]:{a.port}" if ":" in a.host else f"{a.host}:{a.port}" for a in addresses
    )


class PythonDataPlane(DataPlane):
    """The grpc.aio relay (see the module doc)."""

    name = "python"

    def __init__(self, config: SidecarConfig, context: PlaneContext) -> None:
        self.config = config
        self.context = context
        self.clusters = ClusterSet({})
        self.outbound: OutboundListener | None = None
        self.inbound: InboundListener | None = None
        self._metrics: ProxyMetrics | None = None
        self._access_log: AccessLog | None = None
        self._closing = TaskSet()
        self._stopped: set[Direction] = set()
        self._endpoints_logged: weakref.WeakKeyDictionary[Cluster, str] = (
            weakref.WeakKeyDictionary()
        )
        if config.telemetry.prometheus:
            self._metrics = ProxyMetrics(
                context.registry, clusters=lambda: self.clusters.channels()
            )
            ClusterCollector(lambda: self.clusters.channels(), registry=context.registry)

    @property
    def health(self) -> AioHealthService | None:
        """The inbound listener's health service."""
        return self.inbound.health if self.inbound is not None else None

    async def start(self) -> dict[str, str]:
        """Build the clusters, bind and start the listeners."""
        config = self.config
        try:
            self.clusters = ClusterSet.build(config.clusters)
        except (OSError, ValueError) as exc:
            raise StartError(f"clusters: {exc}") from None
        self._log_endpoints(self.clusters)
        tracer = self.context.tracer
        access_log = config.telemetry.access_log
        if access_log.enabled:
            try:
                self._access_log = AccessLog(access_log.path)
            except OSError as exc:
                raise StartError(
                    f"telemetry.access_log.path: cannot open {access_log.path}: {exc.strerror}"
                ) from None
        try:
            if config.outbound is not None:
                router = build_router(config.outbound, self.clusters, self.context.method_kinds)
                self.outbound = OutboundListener(
                    config.outbound,
                    router,
                    metrics=self._metrics,
                    tracer=tracer,
                    access_log=self._access_log,
                )
            if config.inbound is not None:
                self.inbound = InboundListener(
                    config.inbound,
                    kinds=self.context.method_kinds,
                    metrics=self._metrics,
                    tracer=tracer,
                    access_log=self._access_log,
                )
        except OSError as exc:
            raise StartError(str(exc)) from None
        addresses: dict[str, str] = {}
        if self.outbound is not None:
            await self.outbound.start()
            addresses["outbound"] = self.outbound.address
        if self.inbound is not None:
            await self.inbound.start()
            addresses["inbound"] = self.inbound.address
        return addresses

    def _log_endpoints(self, clusters: ClusterSet) -> None:
        """Log each cluster's endpoints when first resolved and on every change."""
        for name in clusters:
            cluster = clusters[name]
            if cluster not in self._endpoints_logged:
                self._endpoints_logged[cluster] = ""
                cluster.channel.core.add_state_watcher(
                    lambda cluster=cluster: self._endpoints_changed(cluster)
                )
                self._endpoints_changed(cluster)

    def _endpoints_changed(self, cluster: Cluster) -> None:
        text = _endpoints_text(cluster)
        if text and text != self._endpoints_logged.get(cluster):
            self._endpoints_logged[cluster] = text
            _LOG.info("cluster %s: resolved %s", cluster.name, text)

    def _server(self, direction: Direction) -> ServerGroup:
        listener = self.outbound if direction == "outbound" else self.inbound
        return ServerGroup([listener.server] if listener is not None else [])

    async def apply(self, config: SidecarConfig, rebuild: frozenset[str] = frozenset()) -> str:
        """Swap in ``config``'s clusters and routes; old clusters close after the grace."""
        old_clusters = self.clusters
        try:
            clusters = ClusterSet.build(config.clusters, reuse=old_clusters, rebuild=rebuild)
        except (OSError, ValueError) as exc:
            raise ApplyError(str(exc)) from None
        if self.outbound is not None and config.outbound is not None:
            router = build_router(config.outbound, clusters, self.context.method_kinds)
            self.clusters = clusters
            self.outbound.swap(router)  # from here on, new calls use the new routes
        else:
            self.clusters = clusters
        self.config = config
        self._log_endpoints(clusters)
        grace = float(config.drain.grace_period)
        retired = old_clusters.retired_by(clusters)
        for cluster in retired:
            self._closing.spawn(cluster.close(grace), f"close-cluster-{cluster.name}")
        built = sorted(name for name in clusters if clusters[name] not in old_clusters.values())
        removed = sorted(name for name in old_clusters if name not in clusters)
        return (
            f"{len(clusters)} cluster(s); built: {', '.join(built) or 'none'};"
            f" removed: {', '.join(removed) or 'none'}; {len(retired)} closing within {grace} s"
        )

    async def refresh_files(self) -> None:
        """Rebuild the clusters whose TLS files rotated (channel credentials are immutable)."""
        changed = self.clusters.tls_changed()
        if changed:
            _LOG.info("TLS files changed for cluster(s) %s", ", ".join(sorted(changed)))
            try:
                await self.apply(self.config, rebuild=changed)
            except ApplyError as exc:
                _LOG.error("TLS reload failed, keeping the running channels: %s", exc)

    async def stop_inbound(self, grace: float | None) -> None:
        """The inbound server stops accepting; its calls get ``grace`` seconds."""
        self._stopped.add("inbound")
        await self._server("inbound").stop(grace)

    async def stop_outbound(self, grace: float | None) -> None:
        """The outbound server stops accepting; its calls get ``grace`` seconds."""
        self._stopped.add("outbound")
        await self._server("outbound").stop(grace)

    async def call_counts(self, direction: Direction) -> CallCounts | None:
        """Counted by the listener's proxy handler."""
        listener = self.outbound if direction == "outbound" else self.inbound
        if listener is None:
            return CallCounts()
        handler = listener.proxy
        return CallCounts(handler.active, handler.started)

    async def close(self, *, forced: bool) -> None:
        """Stop the listeners if still running, close the app channel and every cluster."""
        for direction in ("inbound", "outbound"):
            if direction not in self._stopped:  # e.g. start-up failed after binding
                await self._server(direction).stop(None)
        if forced:
            await self._closing.cancel()
        else:
            await self._closing.wait(None)
        if self.inbound is not None:
            await self.inbound.close()
        await self.clusters.close(None)
        if self._access_log is not None:
            self._access_log.close()

    def ready(self) -> tuple[bool, str]:
        """Every cluster resolved once, and the local app healthy (when inbound is on)."""
        cold = self.clusters.not_warm()
        if cold:
            return False, "no endpoints resolved yet for cluster(s): " + ", ".join(sorted(cold))
        inbound = self.inbound
        if inbound is not None and not inbound.app_healthy:
            return False, f"local app not healthy: {inbound.app_health.reason}"
        return True, "ready"

    def clusters_view(self) -> dict[str, Any]:
        """Endpoints and states of each cluster's balanced channel."""
        clusters = self.clusters
        document = clusters_snapshot(clusters.channels())
        for name, entry in document.items():
            if name in clusters and isinstance(entry, dict):
                entry["warm"] = clusters[name].warm
        return document
