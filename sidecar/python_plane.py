"""The Python data plane: grpc.aio servers relaying raw bytes over meshkit's balanced channels.

The fallback when no Envoy binary is available (and the plane ``workers > 1`` runs as several
processes, :mod:`sidecar.workers`). Per cluster a balanced channel (:mod:`sidecar.clusters`);
the outbound listener routes each call by its method path (:mod:`sidecar.outbound`); the
inbound listener forwards to the local app and serves ``grpc.health.v1`` (:mod:`sidecar.inbound`).

A reload builds the new clusters first (unchanged ones are kept), swaps the router in one
assignment, and closes the clusters no longer used after ``drain.grace_period``.
"""

from __future__ import annotations

import logging
from typing import Any

from health.aio import HealthService as AioHealthService
from sidecar.clusters import ClusterSet, build_router
from sidecar.config import SidecarConfig
from sidecar.dataplane import ApplyError, DataPlane, PlaneContext, StartError
from sidecar.inbound import InboundListener
from sidecar.lifecycle import ServerGroup, TaskSet
from sidecar.outbound import OutboundListener
from telemetry.clusters import ClusterCollector, clusters_snapshot
from telemetry.metrics import GrpcMetrics

__all__ = ["PythonDataPlane"]

_LOG = logging.getLogger("meshkit.sidecar")


class PythonDataPlane(DataPlane):
    """The grpc.aio relay (see the module doc)."""

    name = "python"

    def __init__(self, config: SidecarConfig, context: PlaneContext) -> None:
        self.config = config
        self.context = context
        self.clusters = ClusterSet({})
        self.outbound: OutboundListener | None = None
        self.inbound: InboundListener | None = None
        self._metrics: GrpcMetrics | None = None
        self._closing = TaskSet()
        self._stopped = False
        if config.telemetry.prometheus:
            self._metrics = GrpcMetrics(context.registry, "server")
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
        extra: dict[str, Any] = {"metrics": self._metrics, "tracer": self.context.tracer}
        try:
            if config.outbound is not None:
                router = build_router(config.outbound, self.clusters)
                self.outbound = OutboundListener(config.outbound, router, **extra)
            if config.inbound is not None:
                self.inbound = InboundListener(config.inbound, **extra)
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

    def _servers(self) -> ServerGroup:
        return ServerGroup([x.server for x in (self.outbound, self.inbound) if x is not None])

    async def apply(self, config: SidecarConfig, rebuild: frozenset[str] = frozenset()) -> str:
        """Swap in ``config``'s clusters and routes; old clusters close after the grace."""
        old_clusters = self.clusters
        try:
            clusters = ClusterSet.build(config.clusters, reuse=old_clusters, rebuild=rebuild)
        except (OSError, ValueError) as exc:
            raise ApplyError(str(exc)) from None
        if self.outbound is not None and config.outbound is not None:
            router = build_router(config.outbound, clusters)
            self.clusters = clusters
            self.outbound.swap(router)  # from here on, new calls use the new routes
        else:
            self.clusters = clusters
        self.config = config
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

    async def stop(self, grace: float | None) -> None:
        """Stop both listeners together."""
        self._stopped = True
        await self._servers().stop(grace)

    async def close(self, *, forced: bool) -> None:
        """Stop the listeners if still running, close the app channel and every cluster."""
        if not self._stopped:  # start-up failed after the servers were created
            await self.stop(None)
        if forced:
            await self._closing.cancel()
        else:
            await self._closing.wait(None)
        if self.inbound is not None:
            await self.inbound.close()
        await self.clusters.close(None)

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
