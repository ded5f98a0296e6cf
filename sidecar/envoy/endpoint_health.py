"""Endpoint health for Envoy's EDS, watched by the control plane.

For every cluster with ``health_check``, :class:`EndpointHealth` watches each resolved endpoint
with meshkit's own ``grpc.health.v1/Watch`` watcher (:func:`health.aio.watch_health`, the one
the Python plane's balanced channel runs: backoff, SERVICE_UNKNOWN and UNIMPLEMENTED rules)
and reports each endpoint's state as an EDS ``health_status``:

- SERVING -> ``HEALTHY``; anything else, or the stream broken -> ``UNHEALTHY``;
- no answer yet -> no status (Envoy reads ``UNKNOWN``: routable). The Python plane holds calls
  for a pending endpoint until the picker changes; Envoy cannot hold them, and would fail them
  ("no healthy upstream") when every endpoint is new, so a new endpoint is routable until it
  answers. An endpoint that cannot be reached is ``UNHEALTHY`` (its stream fails), not pending;
- no health service on the server (UNIMPLEMENTED: checking off) -> ``HEALTHY`` while its
  connection holds, ``UNHEALTHY`` while it cannot connect, watched again once reconnected.

Why the control plane and not Envoy's active health check: a Watch stream hears NOT_SERVING
the moment a backend starts to drain, where Envoy's periodic ``Check`` misses a short
NOT_SERVING period and keeps sending calls to a backend that is stopping (see
``_translate_clusters``). A verdict change calls ``on_change(cluster)``; the plane then pushes
a new EDS snapshot, which Envoy applies without touching calls in flight.

Each watch has its own ``grpc.aio`` channel to the endpoint's address with the cluster's TLS
(the same file contents Envoy gets over SDS), the name its certificate must carry, the
``:authority`` Envoy sends, its keepalive and connect timeout. Bounded: one watch per
(cluster, endpoint), stopped when the endpoint leaves the cluster, restarted when the
cluster's health service, TLS or authority change, all stopped by :meth:`close`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from health import HealthVerdict
from health.aio import watch_health
from sidecar.config import ClusterConfig
from sidecar.envoy._translate_clusters import authority, server_host
from sidecar.envoy._translate_common import Endpoint

__all__ = ["HEALTHY", "UNHEALTHY", "EndpointHealth", "WatchSettings", "endpoint_target"]

_LOG = logging.getLogger("meshkit.sidecar.endpoint_health")

#: ``envoy.config.core.v3.HealthStatus`` names sent in EDS.
HEALTHY = "HEALTHY"
UNHEALTHY = "UNHEALTHY"

#: Longest wait between Watch streams that fail without an answer (an endpoint down); also
#: the cap of the channel's reconnect backoff, as the Python plane's (``sidecar.clusters``).
MAX_BACKOFF = 10.0

Key = tuple[str, int]
"""An endpoint by ``(host, port)`` (port 0: a Unix socket path)."""


@dataclass(frozen=True)
class WatchSettings:
    """What the watches of one cluster are built from; a change restarts them."""

    service: str
    authority: str | None = None
    tls: bool = False
    server_name: str | None = None
    root_certificates: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)
    certificate_chain: bytes | None = field(default=None, repr=False)
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, config: ClusterConfig, files: Mapping[str, bytes]) -> WatchSettings | None:
        """The settings for cluster ``config`` (``None`` without ``health_check``);
        ``files``: TLS file contents by path."""
        if config.health_check is None:
            return None
        options: list[tuple[str, Any]] = list(config.keepalive.to_grpc_options("client"))
        # grpc-core reads its connect deadline from the "minimum reconnect backoff" argument.
        options.append(("grpc.min_reconnect_backoff_ms", config.connect_timeout.ms))
        options.append(("grpc.max_reconnect_backoff_ms", int(MAX_BACKOFF * 1000)))
        tls = config.tls

        def read(path: str | None) -> bytes | None:
            return files.get(path) if path is not None else None

        return cls(
            service=config.health_check.service,
            authority=authority(config),
            tls=tls is not None,
            server_name=server_host(config) if tls is not None else None,
            root_certificates=read(tls.ca) if tls is not None else None,
            private_key=read(tls.key) if tls is not None else None,
            certificate_chain=read(tls.cert) if tls is not None else None,
            options=tuple(options),
        )

    def channel(self, endpoint: Key) -> grpc.aio.Channel:
        """A new channel to ``endpoint`` with these settings."""
        options = list(self.options)
        if self.authority is not None:
            options.append(("grpc.default_authority", self.authority))
        target = endpoint_target(*endpoint)
        if not self.tls:
            return grpc.aio.insecure_channel(target, options)
        if self.server_name is not None:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        credentials = grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )
        return grpc.aio.secure_channel(target, credentials, options)


def endpoint_target(host: str, port: int) -> str:
    """The grpc target of one endpoint: ``host:port``, ``[v6]:port``, ``unix:path``."""
    if port == 0:
        return f"unix:{host}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class _Watch:
    settings: WatchSettings
    task: asyncio.Task[None] | None = None
    #: The EDS status to send (``None``: no answer yet) and why.
    status: str | None = None
    health: str = "pending"
    reason: str = "no health answer yet"
    #: Replaced or removed: its late verdicts are ignored.
    stopped: bool = False


class EndpointHealth:
    """One health watch per endpoint of each cluster with ``health_check`` (module doc)."""

    def __init__(self, on_change: Callable[[str], None], *, max_backoff: float = MAX_BACKOFF):
        self._on_change = on_change
        self._max_backoff = max_backoff
        self._watches: dict[str, dict[Key, _Watch]] = {}
        self._closed = False

    def follow(
        self,
        configs: Mapping[str, ClusterConfig],
        endpoints: Mapping[str, Sequence[Endpoint]],
        files: Mapping[str, bytes],
    ) -> None:
        """Watch exactly the endpoints of ``endpoints`` whose cluster in ``configs`` has
        ``health_check``: start the missing watches, stop the others (needs a running loop)."""
        if self._closed:
            return
        wanted: dict[str, tuple[WatchSettings, set[Key]]] = {}
        for name, config in configs.items():
            settings = WatchSettings.of(config, files)
            if settings is not None:
                keys = {(e.host, e.port) for e in endpoints.get(name, ())}
                wanted[name] = (settings, keys)
        # A watch restarted for new settings (a rotated certificate) keeps its last verdict
        # until the new one answers: a drained endpoint must not turn routable meanwhile.
        carried: dict[tuple[str, Key], _Watch] = {}
        for name in list(self._watches):
            watches = self._watches[name]
            settings, keys = wanted.get(name, (None, set()))
            for key in list(watches):
                if key not in keys or watches[key].settings != settings:
                    old = watches.pop(key)
                    self._stop(old)
                    if key in keys:
                        carried[(name, key)] = old
            if not watches:
                del self._watches[name]
        for name, (settings, keys) in wanted.items():
            watches = self._watches.setdefault(name, {})
            for key in keys - set(watches):
                watch = _Watch(settings)
                last = carried.get((name, key))
                if last is not None:
                    watch.status, watch.health, watch.reason = last.status, last.health, last.reason
                watch.task = asyncio.get_running_loop().create_task(
                    self._run(name, key, watch), name=f"health {name} {endpoint_target(*key)}"
                )
                watches[key] = watch

    def statuses(self) -> dict[str, dict[Key, str]]:
        """The EDS ``health_status`` of each watched endpoint that answered, per cluster."""
        return {
            name: {key: w.status for key, w in watches.items() if w.status is not None}
            for name, watches in self._watches.items()
        }

    def view(self) -> dict[str, dict[str, tuple[str, str]]]:
        """Per cluster, each watched endpoint (``host:port``, ``[v6]:port``, ``unix:path``) ->
        (``healthy`` / ``unhealthy`` / ``pending``, why), for ``/clusters``."""
        return {
            name: {endpoint_target(*key): (w.health, w.reason) for key, w in watches.items()}
            for name, watches in self._watches.items()
        }

    def watching(self) -> int:
        """How many endpoint watches run."""
        return sum(len(watches) for watches in self._watches.values())

    async def close(self) -> None:
        """Stop every watch and close its channel."""
        self._closed = True
        watches = [w for ws in self._watches.values() for w in ws.values()]
        self._watches = {}
        for watch in watches:
            watch.stopped = True
        tasks = [w.task for w in watches if w.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    @staticmethod
    def _stop(watch: _Watch) -> None:
        watch.stopped = True
        if watch.task is not None:
            watch.task.cancel()  # the task closes its channel

    def _set(self, name: str, watch: _Watch, status: str, health: str, reason: str) -> None:
        if watch.stopped:
            return
        changed = status != watch.status
        watch.status, watch.health, watch.reason = status, health, reason
        if changed:
            self._on_change(name)

    async def _run(self, name: str, key: Key, watch: _Watch) -> None:
        label = f"cluster {name} endpoint {endpoint_target(*key)}"
        channel = watch.settings.channel(key)

        def on_verdict(verdict: HealthVerdict, reason: str) -> None:
            if verdict is HealthVerdict.PENDING:
                return
            if verdict in (HealthVerdict.HEALTHY, HealthVerdict.DISABLED):
                if watch.status != HEALTHY:
                    _LOG.info("%s healthy: %s", label, reason)
                self._set(name, watch, HEALTHY, "healthy", reason)
            else:
                if watch.status != UNHEALTHY:
                    _LOG.info("%s unhealthy: %s", label, reason)
                self._set(name, watch, UNHEALTHY, "unhealthy", reason)

        try:
            while True:
                try:
                    await watch_health(
                        channel,
                        watch.settings.service,
                        on_verdict,
                        initial_backoff=min(1.0, self._max_backoff),
                        max_backoff=self._max_backoff,
                        label=label,
                    )
                    # No health service: healthy while connected; watched again on reconnect.
                    await _until_reconnected(channel, on_verdict)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # never leave a verdict frozen: say so, start over
                    _LOG.error("%s: health watch failed: %r", label, exc)
                    on_verdict(HealthVerdict.UNHEALTHY, f"health watch failed: {exc!r}")
                    await asyncio.sleep(self._max_backoff)
        finally:
            await channel.close(None)


async def _until_reconnected(
    channel: grpc.aio.Channel, on_verdict: Callable[[HealthVerdict, str], None]
) -> None:
    """Follow ``channel`` (a server without a health service) until its connection was lost
    and is back: ``TRANSIENT_FAILURE`` is unhealthy, ``READY`` healthy."""
    connectivity = grpc.ChannelConnectivity
    lost = False
    while True:
        state = channel.get_state(try_to_connect=True)
        if state is connectivity.READY:
            if lost:
                return
            on_verdict(HealthVerdict.DISABLED, "connected (no health service)")
        else:
            lost = True
            if state is connectivity.TRANSIENT_FAILURE:
                on_verdict(HealthVerdict.UNHEALTHY, "cannot connect")
        await channel.wait_for_state_change(state)
