"""Cluster endpoints from meshkit's own resolvers, for Envoy's EDS.

Envoy never resolves a name itself here: every cluster is EDS, and its endpoints come from the
same resolvers the in-process channels use (``static``, ``dns`` with TTL refresh, ``dns+srv``
with weights, entry-point plugins). :class:`EndpointWatcher` runs one resolver per cluster
and calls ``on_change`` with the cluster's name whenever its address list changes; a failing
resolver keeps its last good list (the resolver contract), so a DNS outage never empties a
cluster.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import resolvers
from resolvers import Address, Resolver, ResolverOptions, ResolverState
from sidecar.config import ClusterConfig
from sidecar.envoy.translate import Endpoint

__all__ = ["ClusterEndpoints", "EndpointWatcher"]

_LOG = logging.getLogger("meshkit.sidecar.endpoints")


#: Bound on looking up the host names a ``static:`` target lists (EDS takes addresses only).
_NAME_LOOKUP_TIMEOUT = 5.0


def _endpoint(address: Address) -> Endpoint:
    if address.network == "unix":
        return Endpoint(address.host, 0, max(1, address.weight))
    return Endpoint(address.host, address.port, max(1, address.weight))


async def _to_ips(addresses: tuple[Address, ...]) -> tuple[Address, ...]:
    """``addresses`` with host names looked up (system resolver, bounded in time).

    Only fixed-list targets (``static:///localhost:8080``) carry names: Envoy's EDS takes IP
    addresses, and the ``dns:`` resolvers already hand out addresses. A name that does not
    resolve is dropped with a warning.
    """
    loop = asyncio.get_running_loop()
    out: list[Address] = []
    for address in addresses:
        if address.network == "unix" or address.is_ip:
            out.append(address)
            continue
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM),
                _NAME_LOOKUP_TIMEOUT,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            _LOG.warning("cannot look up %s: %s", address.host, exc)
            continue
        for ip in sorted({str(info[4][0]) for info in infos}):
            out.append(Address(ip, address.port, address.attributes))
    return tuple(out)


@dataclass
class ClusterEndpoints:
    """One cluster's resolver and what it last said."""

    name: str
    config: ClusterConfig
    endpoints: tuple[Endpoint, ...] = ()
    #: Whether the resolver has produced endpoints at least once: gates readiness at start-up
    #: (as Envoy's cluster warming) and stays true, so a later outage of a dependency does
    #: not make this pod unready too.
    warm: bool = False
    last_error: str | None = None
    note: str | None = None
    #: Replaced by a reload or closed: its resolver's late answers are ignored.
    retired: bool = False
    resolver: Resolver | None = field(default=None, repr=False)


class _Listener:
    def __init__(self, watcher: EndpointWatcher, cluster: ClusterEndpoints) -> None:
        self._watcher = watcher
        self._cluster = cluster

    def update_state(self, state: ResolverState) -> None:
        self._watcher._update(self._cluster, state)

    def report_error(self, error: Exception) -> None:
        if self._cluster.last_error != str(error):
            _LOG.warning("cluster %s: resolver: %s", self._cluster.name, error)
        self._cluster.last_error = str(error)


class EndpointWatcher:
    """One resolver per cluster; ``on_change(name)`` after each change of a cluster's list."""

    def __init__(self, on_change: Callable[[str], None]) -> None:
        self._on_change = on_change
        self.clusters: dict[str, ClusterEndpoints] = {}
        self._lookups: set[asyncio.Task[None]] = set()

    def endpoints(self) -> dict[str, tuple[Endpoint, ...]]:
        """The current endpoints of every cluster."""
        return {name: cluster.endpoints for name, cluster in self.clusters.items()}

    def not_warm(self) -> list[str]:
        """Clusters whose resolver has not answered yet."""
        return sorted(name for name, cluster in self.clusters.items() if not cluster.warm)

    async def update(self, configs: Mapping[str, ClusterConfig]) -> None:
        """Follow ``configs``: start resolvers for new or changed clusters, stop the rest.

        Raises ``ValueError`` (a target its resolver refuses) before changing anything.
        """
        fresh: dict[str, ClusterEndpoints] = {}
        for name, config in configs.items():
            old = self.clusters.get(name)
            if (
                old is None
                or old.config.target != config.target
                or (old.config.resolver != config.resolver)
            ):
                fresh[name] = ClusterEndpoints(name, config)
        started: list[ClusterEndpoints] = []
        try:
            for cluster in fresh.values():
                cluster.resolver = resolvers.build(
                    cluster.config.target,
                    _Listener(self, cluster),
                    ResolverOptions(
                        min_refresh=float(cluster.config.resolver.min_refresh),
                        max_refresh=float(cluster.config.resolver.max_refresh),
                    ),
                )
                started.append(cluster)
        except BaseException:
            for cluster in started:
                cluster.retired = True
                if cluster.resolver is not None:
                    await cluster.resolver.aclose()
            raise
        retired = [c for n, c in self.clusters.items() if n not in configs or n in fresh]
        for name, config in configs.items():
            if name not in fresh:
                self.clusters[name].config = config
        for name in [n for n in self.clusters if n not in configs]:
            del self.clusters[name]
        self.clusters.update(fresh)
        for cluster in retired:
            cluster.retired = True
            if cluster.resolver is not None:
                await cluster.resolver.aclose()

    def _update(self, cluster: ClusterEndpoints, state: ResolverState) -> None:
        if all(a.network == "unix" or a.is_ip for a in state.addresses):
            self._apply(cluster, state)
            return
        task = asyncio.get_running_loop().create_task(self._lookup(cluster, state))
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    async def _lookup(self, cluster: ClusterEndpoints, state: ResolverState) -> None:
        addresses = await _to_ips(state.addresses)
        self._apply(cluster, ResolverState(addresses, state.note))

    def _apply(self, cluster: ClusterEndpoints, state: ResolverState) -> None:
        if cluster.retired:
            return  # a late answer of a replaced resolver
        endpoints = tuple(
            sorted({_endpoint(a) for a in state.addresses}, key=lambda e: (e.host, e.port))
        )
        cluster.last_error = None
        cluster.note = state.note or None
        changed = endpoints != cluster.endpoints
        if not cluster.warm:
            _LOG.info(
                "cluster %s: resolved %s",
                cluster.name,
                ", ".join(f"{e.host}:{e.port}" for e in endpoints)
                or f"no endpoints ({state.note or 'empty answer'})",
            )
        cluster.warm = cluster.warm or bool(endpoints)
        cluster.endpoints = endpoints
        if changed:
            self._on_change(cluster.name)

    async def close(self) -> None:
        """Stop every resolver."""
        for task in list(self._lookups):
            task.cancel()
        clusters, self.clusters = self.clusters, {}
        for cluster in clusters.values():
            cluster.retired = True
            if cluster.resolver is not None:
                await cluster.resolver.aclose()
