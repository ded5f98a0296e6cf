"""Clusters: one balanced channel per configured cluster, and the routes that use them.

A :class:`Cluster` is built from its :class:`~sidecar.config.ClusterConfig`: a
``balancers.aio`` channel (TLS when configured) with the cluster's keepalive, policy, health
checking, outlier detection and resolver timings. :func:`build_router` turns the outbound routes
into a :class:`~sidecar.routing.Router` of :class:`~sidecar.proxy.Upstream` (one per route, as
the default deadline is per route; routes to one cluster share its channel). A route without a
``kind`` hint forwards each method by the kind the sidecar learned for it
(:class:`~sidecar.method_kinds.MethodKinds`); :func:`channel_factory` makes the channels it
learns over, built as the cluster's own.

A :class:`ClusterSet` is immutable once built; a reload builds a new one with
:meth:`ClusterSet.build` (``reuse=`` the running set), which keeps the running clusters whose
config did not change (their connections and balancing state survive the reload) and builds the
others, then the caller swaps routers and closes what the old set no longer shares
(:meth:`ClusterSet.retired_by`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

import balancers.aio
import health
import resolvers
from sidecar import proxy
from sidecar.config import ClusterConfig, OutboundConfig, Route
from sidecar.method_kinds import ChannelFactory, MethodKinds
from sidecar.routing import Router
from sidecar.tls import ClientTlsFiles
from telemetry.rpc_kind import RpcKind

__all__ = ["Cluster", "ClusterSet", "build_router", "channel_factory"]

_LOG = logging.getLogger(__name__)

# Upper bound of grpc's reconnect backoff toward an endpoint (its default is 120 s): a sidecar
# should notice a restarted pod within seconds, and the balancer spreads calls meanwhile.
_MAX_RECONNECT_BACKOFF_MS = 10_000


def _outlier(config: ClusterConfig) -> health.OutlierConfig | None:
    od = config.outlier_detection
    if od is None:
        return None
    return health.OutlierConfig(
        consecutive_failures=od.consecutive_failures,
        base_ejection_time=float(od.base_ejection_time),
        max_ejection_time=float(od.max_ejection_time),
        max_ejection_percent=od.max_ejection_percent,
        failure_codes=od.codes,
    )


def channel_options(config: ClusterConfig, tls: ClientTlsFiles | None) -> list[tuple[str, Any]]:
    """grpc arguments of every endpoint connection of a cluster."""
    options: list[tuple[str, Any]] = list(proxy.upstream_channel_options(keepalive_time=None))
    options += config.keepalive.to_grpc_options("client")
    # grpc-core reads its connect deadline from the "minimum reconnect backoff" argument.
    options.append(("grpc.min_reconnect_backoff_ms", config.connect_timeout.ms))
    options.append(("grpc.max_reconnect_backoff_ms", _MAX_RECONNECT_BACKOFF_MS))
    # The proxy retries itself (RetryPolicy, with its own buffering rules): grpc-core's retry
    # filter would only add per-call bookkeeping and a second copy of the request messages.
    options.append(("grpc.enable_retries", 0))
    if tls is not None:
        options += tls.channel_options()
    return options


def _client_tls(config: ClusterConfig) -> ClientTlsFiles | None:
    if config.tls is None:
        return None
    return ClientTlsFiles(
        config.tls.ca, config.tls.cert, config.tls.key, server_name=config.tls.server_name
    )


def _balanced_channel(config: ClusterConfig, tls: ClientTlsFiles | None) -> Any:
    settings: dict[str, Any] = {
        "lb_policy": config.lb_policy,
        "lb_config": dict(config.lb_config),
        "health_check_service": (
            config.health_check.service if config.health_check is not None else None
        ),
        "outlier_detection": _outlier(config),
        "resolver_options": resolvers.ResolverOptions(
            min_refresh=float(config.resolver.min_refresh),
            max_refresh=float(config.resolver.max_refresh),
        ),
    }
    options = channel_options(config, tls)
    if tls is not None:
        return balancers.aio.secure_channel(config.target, tls.credentials(), options, **settings)
    return balancers.aio.insecure_channel(config.target, options, **settings)


def channel_factory(config: ClusterConfig) -> ChannelFactory:
    """Makes a new balanced channel to the cluster of ``config`` per call, as
    :meth:`Cluster.build` does (TLS, authority, policy, health checking), for a short exchange
    such as server reflection; the caller closes it. Raises as :meth:`Cluster.build`."""
    return lambda: _balanced_channel(config, _client_tls(config))


@dataclass(eq=False)
class Cluster:
    """A named upstream: its config and its balanced channel.

    ``warm`` turns true the first time the resolver has produced endpoints and stays true: it
    gates readiness at start-up (as Envoy's cluster warming) without making the pod unready
    whenever a dependency has an outage later (that would cascade failures up the call graph).
    """

    name: str
    config: ClusterConfig
    channel: Any
    tls: ClientTlsFiles | None = None
    warm: bool = False
    _on_change: Callable[[Cluster], None] | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls, name: str, config: ClusterConfig, on_change: Callable[[Cluster], None] | None = None
    ) -> Cluster:
        """Create the channel (needs a running loop); raises ``OSError`` for unreadable TLS
        files and ``ValueError`` for a target the resolvers refuse."""
        tls = _client_tls(config)
        channel = _balanced_channel(config, tls)
        cluster = cls(name, config, channel, tls, _on_change=on_change)
        channel.core.add_state_watcher(cluster._state_changed)
        cluster._state_changed()
        return cluster

    def _state_changed(self) -> None:
        if not self.warm and self.channel.core.subchannels:
            self.warm = True
            _LOG.info("cluster %s: endpoints resolved", self.name)
        if self._on_change is not None:
            self._on_change(self)

    @property
    def connectivity(self) -> grpc.ChannelConnectivity:
        """The aggregate connectivity of the cluster's endpoints."""
        state: grpc.ChannelConnectivity = self.channel.core.connectivity
        return state

    async def close(self, grace: float | None) -> None:
        """Close the channel, letting calls in flight finish for ``grace`` seconds."""
        self._on_change = None
        try:
            await self.channel.close(grace)
        except Exception as exc:  # closing must never abort a reload or the shutdown
            _LOG.warning("cluster %s: close failed: %s", self.name, exc)


class ClusterSet(Mapping[str, Cluster]):
    """The clusters of one config generation, by name."""

    def __init__(self, clusters: Mapping[str, Cluster]) -> None:
        self._clusters = dict(clusters)

    @classmethod
    def build(
        cls,
        configs: Mapping[str, ClusterConfig],
        on_change: Callable[[Cluster], None] | None = None,
        *,
        reuse: ClusterSet | None = None,
        rebuild: frozenset[str] = frozenset(),
    ) -> ClusterSet:
        """Build every cluster, reusing those of ``reuse`` whose config is unchanged (except
        the ones named in ``rebuild``, e.g. because their TLS files changed).

        On failure the clusters built so far are closed and the error propagates.
        """
        built: dict[str, Cluster] = {}
        fresh: list[Cluster] = []
        try:
            for name, config in configs.items():
                old = reuse.get(name) if reuse is not None else None
                if old is not None and old.config == config and name not in rebuild:
                    built[name] = old
                else:
                    cluster = Cluster.build(name, config, on_change)
                    built[name] = cluster
                    fresh.append(cluster)
        except BaseException:
            for cluster in fresh:
                asyncio.get_running_loop().create_task(cluster.close(None))
            raise
        return cls(built)

    def __getitem__(self, name: str) -> Cluster:
        return self._clusters[name]

    def __iter__(self) -> Any:
        return iter(self._clusters)

    def __len__(self) -> int:
        return len(self._clusters)

    def not_warm(self) -> list[str]:
        """Names of clusters that never had endpoints yet."""
        return [name for name, cluster in self._clusters.items() if not cluster.warm]

    def channels(self) -> dict[str, Any]:
        """The balanced channels by cluster name (what the admin views read)."""
        return {name: cluster.channel for name, cluster in self._clusters.items()}

    def tls_changed(self) -> frozenset[str]:
        """Clusters whose TLS files changed on disk since their channel was built (grpcio's
        channel credentials are immutable: such a cluster needs a new channel)."""
        changed = set()
        for name, cluster in self._clusters.items():
            if cluster.tls is None:
                continue
            try:
                if cluster.tls.reload_if_changed():
                    changed.add(name)
            except OSError as exc:  # mid-rotation: keep the current channel, retry next time
                _LOG.warning("cluster %s: TLS files unreadable: %s", name, exc)
        return frozenset(changed)

    def retired_by(self, new: ClusterSet) -> list[Cluster]:
        """Clusters of this set that ``new`` does not share (to close after a swap)."""
        kept = {id(c) for c in new.values()}
        return [c for c in self._clusters.values() if id(c) not in kept]

    async def close(self, grace: float | None) -> None:
        """Close every cluster concurrently."""
        await asyncio.gather(*(c.close(grace) for c in self._clusters.values()))


def _upstream(route: Route, cluster: Cluster, kinds: MethodKinds | None) -> proxy.Upstream:
    timeout = route.timeout if route.timeout is not None else cluster.config.timeout
    return proxy.Upstream(
        cluster.name,
        cluster.channel,
        timeout=None if timeout is None else float(timeout),
        retry=None if cluster.config.retry is None else cluster.config.retry.policy(),
        default_kind=RpcKind(route.kind) if route.kind is not None else None,
        learned=kinds,
    )


def build_router(
    outbound: OutboundConfig, clusters: ClusterSet, kinds: MethodKinds | None = None
) -> Router[proxy.Upstream]:
    """The outbound router: each route's prefix to an upstream on its cluster's channel.

    A route's ``kind`` hint sets the forwarding path of its methods; without one, ``kinds``
    (what the sidecar learned) does, else the stream path (see :meth:`proxy.Upstream.kind_of`).
    """
    return Router(
        [
            (route.prefix, _upstream(route, clusters[route.cluster], kinds))
            for route in outbound.routes
        ]
    )
