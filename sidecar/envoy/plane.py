"""The Envoy data plane: meshkit is the control plane, an Envoy child process forwards.

Start-up, in order:

1. resolvers for every cluster (:class:`~sidecar.envoy.endpoints.EndpointWatcher`), and a
   ``grpc.health.v1`` watch of each endpoint of a cluster with ``health_check``
   (:class:`~sidecar.envoy.endpoint_health.EndpointHealth`: EDS health status);
2. with ``inbound``: a loopback ``grpc.health.v1`` server reflecting the local app's health
   (:class:`sidecar.app_health.LocalHealth`), to which Envoy routes the inbound listener's
   health calls, so probes see what meshkit sees and the drain's NOT_SERVING;
3. the ADS server on a Unix socket in a private directory (:mod:`sidecar.envoy.xds`), holding
   the first snapshot: :func:`sidecar.envoy.translate.translate` of (config, endpoints, TLS
   files, tokens), each resource serialized once (:mod:`sidecar.envoy.protos`);
4. Envoy with a bootstrap that points at that socket (:mod:`sidecar.envoy.process`); start-up
   waits for Envoy's ``/ready`` (listeners and clusters warmed from the snapshot), then reads
   back the ports it bound (``:0`` listeners).

From then on every change is a new snapshot: a resolver's answer (EDS only), a reload (all
types), a rotated TLS or token file (SDS / LDS). The ADS server sends only the types whose
content changed; Envoy applies them without a restart and without touching calls in flight.
If Envoy dies it is restarted with back-off and fetches the current snapshot again.

Drain, one direction at a time (the listeners carry ``traffic_direction``): ``stop_inbound``
asks Envoy to drain the INBOUND listener (``/drain_listeners?inboundonly``: HTTP/2 GOAWAY, then
no new connections) and waits for its requests in flight (``http.inbound.downstream_rq_active``)
to end or ``grace`` to pass, while the outbound listener serves on; ``stop_outbound`` then
drains every listener and waits for the outbound's requests. Envoy itself stops at ``close``.
Each cluster's endpoints are logged when first resolved and on every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from health.aio import HealthService as AioHealthService
from sidecar.app_health import LocalHealth
from sidecar.auth import parse_tokens
from sidecar.config import ListenAddress, SidecarConfig
from sidecar.dataplane import (
    ApplyError,
    CallCounts,
    DataPlane,
    Direction,
    PlaneContext,
    StartError,
)
from sidecar.envoy import protos
from sidecar.envoy.admin_client import AdminError
from sidecar.envoy.bootstrap import bootstrap
from sidecar.envoy.endpoint_health import EndpointHealth
from sidecar.envoy.endpoints import EndpointWatcher
from sidecar.envoy.metrics import EnvoyCollector, meshkit_scope, read_clusters_view
from sidecar.envoy.process import EnvoyProcess, EnvoyStartError
from sidecar.envoy.translate import (
    RUNTIME,
    PlaneInputs,
    Resources,
    cluster_name,
    translate,
    unsupported,
)
from sidecar.envoy.xds import Resource, Snapshot, XdsServer
from sidecar.routing import Router
from telemetry.clusters import ClusterCollector
from telemetry.rpc_kind import RpcKind

__all__ = ["EnvoyDataPlane"]

_LOG = logging.getLogger("meshkit.sidecar.envoy")

#: The xDS node cluster of the sidecar's own Envoy (grpcio proxyless clients use other groups).
NODE_CLUSTER = "meshkit-sidecar"
#: How long ``start`` waits for Envoy to be ready with the first snapshot.
_READY_TIMEOUT = 30.0
#: How often ``stop`` looks whether Envoy's requests in flight have ended.
_DRAIN_POLL = 0.1


def _files_of(config: SidecarConfig) -> list[str]:
    paths: list[str | None] = []
    inbound = config.inbound
    if inbound is not None and inbound.tls is not None:
        paths += [inbound.tls.cert, inbound.tls.key, inbound.tls.client_ca]
    for cluster in config.clusters.values():
        if cluster.tls is not None:
            paths += [cluster.tls.ca, cluster.tls.cert, cluster.tls.key]
    return sorted({p for p in paths if p is not None})


def _read_files(config: SidecarConfig) -> tuple[dict[str, bytes], tuple[str, ...]]:
    """TLS file contents by path, and the inbound tokens; ``OSError`` names the file."""
    files: dict[str, bytes] = {}
    for path in _files_of(config):
        with open(path, "rb") as stream:
            files[path] = stream.read()
    tokens: tuple[str, ...] = ()
    if config.inbound is not None and config.inbound.auth is not None:
        with open(config.inbound.auth.tokens_file, encoding="utf-8") as stream:
            tokens = tuple(parse_tokens(stream.read()))
    return files, tokens


def _check_bindable(config: SidecarConfig) -> None:
    """Fail like the Python plane when a listener's port is taken: Envoy itself would only
    reject the listener (an LDS error) and keep running without it."""
    for path, address in config.listeners().items():
        if path == "admin.listen" or address.port == 0:
            continue
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):  # as Envoy binds its listeners
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind((address.host, address.port))
            except OSError as exc:
                raise StartError(
                    f"cannot listen on {address} (in use?): {exc.strerror or exc}"
                ) from None


class _Serializer:
    """Resource dicts -> :class:`Resource`, each serialized once per distinct content."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], tuple[str, Resource]] = {}

    def resource(self, name: str, body: Mapping[str, Any]) -> Resource:
        key_text = repr(sorted_items(body))
        type_url = str(body["@type"])
        cached = self._cache.get((type_url, name))
        if cached is not None and cached[0] == key_text:
            return cached[1]
        url, data = protos.to_any(body)
        resource = Resource(name=name, type_url=url, body=data)
        self._cache[(type_url, name)] = (key_text, resource)
        return resource

    def snapshot(self, resources: Resources) -> Snapshot:
        by_type: dict[str, list[Resource]] = {}
        for group in (
            resources.listeners,
            resources.routes,
            resources.clusters,
            resources.endpoints,
            resources.secrets,
        ):
            for name, body in group.items():
                resource = self.resource(name, body)
                by_type.setdefault(resource.type_url, []).append(resource)
        live = {(r.type_url, r.name) for rs in by_type.values() for r in rs}
        for key in [k for k in self._cache if k not in live]:
            del self._cache[key]
        return Snapshot(by_type)


def _map_strings(value: Any, change: Callable[[str], str]) -> Any:
    """``value`` (JSON-like) with ``change`` applied to every string in it."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, Mapping):
        return {k: _map_strings(v, change) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_strings(v, change) for v in value]
    return value


def sorted_items(value: Any) -> Any:
    """A canonical, hashable view of a JSON-like value (dict order ignored)."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, sorted_items(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(sorted_items(v) for v in value)
    return value


class EnvoyDataPlane(DataPlane):
    """Envoy forwarding, driven over ADS (see the module doc)."""

    name = "envoy"

    def __init__(self, config: SidecarConfig, context: PlaneContext, *, binary: str) -> None:
        self.config = config
        self.context = context
        self.binary = binary
        self._dir = tempfile.mkdtemp(prefix="meshkit-envoy-")
        os.chmod(self._dir, 0o700)
        self._xds = XdsServer(on_nack=self._on_nack)
        self._serializer = _Serializer()
        self._watcher = EndpointWatcher(self._endpoints_changed)
        self._endpoint_health = EndpointHealth(self._endpoints_changed)
        self._envoy: EnvoyProcess | None = None
        self._health: AioHealthService | None = None
        self._health_server: grpc.aio.Server | None = None
        self._health_address: tuple[str, int] | None = None
        self._local: LocalHealth | None = None
        self._app_channel: grpc.aio.Channel | None = None
        self._files: dict[str, bytes] = {}
        self._tokens: tuple[str, ...] = ()
        self._push_pending = False
        self._stopped = False
        self._endpoints_logged: dict[str, str] = {}
        self._bound: dict[str, str] = {}
        self._routes_of: Any = None
        self._kinds: Router[str | None] = Router([])
        self._collector: EnvoyCollector | None = None
        if config.telemetry.prometheus:
            self._collector = EnvoyCollector(
                lambda: self._envoy.admin if self._envoy is not None else None,
                registry=context.registry,
                scope=meshkit_scope,
                grpc_type=self._grpc_type,
            )
            # The same meshkit_cluster_* families as the Python plane, from Envoy's view.
            ClusterCollector(documents=self.clusters_view, registry=context.registry)

    # -- views ---------------------------------------------------------------------------

    def _grpc_type(self, method: str) -> str:
        """The ``grpc_type`` label of ``method``, as the Python plane gives it: its outbound
        route's ``kind`` hint, else the kind learned for it (server reflection, descriptor
        sets), else ``bidi_stream`` (the kind is not on the wire)."""
        outbound = self.config.outbound
        kind: str | None = None
        if outbound is not None:
            if self._routes_of is not outbound:  # one router per config, not per sample
                self._routes_of = outbound
                self._kinds = Router([(r.prefix, r.kind) for r in outbound.routes])
            kind = self._kinds.match(method)
        learned = self.context.method_kinds
        if kind is None and learned is not None:
            kind = learned.kind(method)
            if kind is None:
                learned.miss(method)  # called since the last round: look again (rate-limited)
        return RpcKind(kind).grpc_type if kind else RpcKind.STREAM_STREAM.grpc_type

    def _admin_address(self) -> str | None:
        return self._envoy.admin_address if self._envoy is not None else None

    @property
    def health(self) -> AioHealthService | None:
        """The inbound health service (served to Envoy on loopback)."""
        return self._health

    def ready(self) -> tuple[bool, str]:
        """Envoy running, every cluster resolved once, the local app healthy."""
        if self._envoy is None or not self._envoy.running:
            return False, "envoy not running"
        cold = self._watcher.not_warm()
        if cold:
            return False, "no endpoints resolved yet for cluster(s): " + ", ".join(cold)
        if self._local is not None and not self._local.healthy:
            return False, f"local app not healthy: {self._local.app.reason}"
        return True, "ready"

    def clusters_view(self) -> dict[str, Any]:
        """Envoy's own view of each cluster's endpoints (health, ejection), plus whether the
        resolver answered and what it said last."""
        admin = self._envoy.admin if self._envoy is not None else None
        names = {cluster_name(name): name for name in self.config.clusters}
        document: dict[str, Any] = {}
        if admin is not None:
            envoy_view = read_clusters_view(
                admin,
                clusters={cluster_name(n): c for n, c in self.config.clusters.items()},
                health={cluster_name(n): v for n, v in self._endpoint_health.view().items()},
            )
            document = {names.get(k, k): v for k, v in envoy_view.items()}
        for name, cluster in self._watcher.clusters.items():
            entry = document.setdefault(name, {"endpoints": []})
            if isinstance(entry, dict):
                entry["warm"] = cluster.warm
                entry["target"] = cluster.config.target
                if cluster.last_error is not None:
                    entry["resolver_error"] = cluster.last_error
        return document

    def status_view(self) -> dict[str, Any]:
        """The xDS versions ACKed and the last NACK per type; Envoy's restarts."""
        status: dict[str, Any] = {"xds": _map_strings(self._xds.status(), self._redacted)}
        if self._envoy is not None:
            status["envoy"] = {
                "binary": self.binary,
                "pid": self._envoy.pid,
                "restarts": self._envoy.restarts,
            }
        return status

    # -- life ----------------------------------------------------------------------------

    async def start(self) -> dict[str, str]:
        """Resolvers, health server, ADS, Envoy; the listener addresses Envoy bound."""
        config = self.config
        _check_bindable(config)
        try:
            self._files, self._tokens = _read_files(config)
        except OSError as exc:
            raise StartError(f"cannot read {exc.filename}: {exc.strerror}") from None
        try:
            await self._watcher.update(config.clusters)
        except ValueError as exc:
            raise StartError(f"clusters: {exc}") from None
        if config.inbound is not None:
            await self._start_health(config)
        xds_address = await self._xds.start(f"unix:{os.path.join(self._dir, 'xds.sock')}")
        self._push()
        self._envoy = EnvoyProcess(
            self.binary,
            bootstrap(
                node_id=f"sidecar~{os.getpid()}",
                node_cluster=NODE_CLUSTER,
                xds_address=xds_address,
                runtime=RUNTIME,
            ),
            directory=self._dir,
            concurrency=config.workers,
            log_level=config.envoy.log_level,
            drain_time=float(config.drain.grace_period),
            registry=self.context.registry,
            on_exit=self._pin_ports,
        )
        try:
            await self._envoy.start(timeout=_READY_TIMEOUT)
        except EnvoyStartError as exc:
            raise StartError(f"envoy: {exc}") from None
        self._bound = await self._listener_addresses()
        return dict(self._bound)

    def _keep_bound_ports(self, config: SidecarConfig) -> SidecarConfig:
        """``config`` with the listen addresses the running listeners have (a reload never
        moves a listener: that needs a restart, see :mod:`sidecar.app`)."""
        for name in ("outbound", "inbound"):
            new, running = getattr(config, name), getattr(self.config, name)
            if new is not None and running is not None and new.listen != running.listen:
                replaced = dataclasses.replace(new, listen=running.listen)
                config = dataclasses.replace(config, **{name: replaced})
        return config

    def _pin_ports(self) -> None:
        """Envoy died: the next one must bind the ports the first one announced (a listener
        configured as ``:0`` would otherwise come back on another port nobody knows). Only
        now, not at start: changing a running listener's address is refused by Envoy."""
        config = self.config
        for name in ("outbound", "inbound"):
            section = getattr(config, name)
            bound = self._bound.get(name)
            if section is not None and bound is not None and section.listen.port == 0:
                listen = ListenAddress.parse(bound)
                config = dataclasses.replace(
                    config, **{name: dataclasses.replace(section, listen=listen)}
                )
        if config is not self.config:
            _LOG.info("envoy: restarting on the ports bound first: %s", self._bound)
            self.config = config
            self._push()

    async def _start_health(self, config: SidecarConfig) -> None:
        inbound = config.inbound
        assert inbound is not None
        self._health = AioHealthService()
        self._app_channel = grpc.aio.insecure_channel(
            str(inbound.app),
            options=[("grpc.max_reconnect_backoff_ms", max(1000, inbound.app_health.interval.ms))],
        )
        self._local = LocalHealth(self._app_channel, inbound.app_health, self._health)
        server = grpc.aio.server()
        self._health.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        if not port:
            raise StartError("cannot bind the health server on 127.0.0.1")
        self._health_server = server
        self._health_address = ("127.0.0.1", port)
        await self._local.start()
        await server.start()

    async def _listener_addresses(self) -> dict[str, str]:
        assert self._envoy is not None
        bound = await self._envoy.listener_addresses()
        addresses: dict[str, str] = {}
        for name in ("outbound", "inbound"):
            if getattr(self.config, name) is not None:
                address = bound.get(name)
                if address is None:
                    raise StartError(f"envoy did not bind the {name} listener: {bound}")
                addresses[name] = address
        return addresses

    def _inputs(self) -> PlaneInputs:
        endpoints = self._watcher.endpoints()
        # The health watches follow every snapshot: endpoint changes, reloads, rotated files.
        self._endpoint_health.follow(self.config.clusters, endpoints, self._files)
        return PlaneInputs(
            endpoints=endpoints,
            endpoint_health=self._endpoint_health.statuses(),
            health_address=self._health_address,
            files=self._files,
            tokens=self._tokens,
        )

    def _push(self) -> None:
        """Translate the current state and hand it to the ADS server (only changed types go
        out). Synchronous and cheap: serialized resources are cached by content."""
        started = time.perf_counter()
        resources = translate(self.config, self._inputs())
        snapshot = self._serializer.snapshot(resources)
        self._xds.set_snapshot(NODE_CLUSTER, snapshot)
        _LOG.debug("snapshot pushed in %.1f ms", (time.perf_counter() - started) * 1000)

    def _endpoints_changed(self, cluster: str) -> None:
        self._log_endpoints(cluster)
        # Resolvers of several clusters may answer in one loop turn: one push for all.
        if not self._push_pending:
            self._push_pending = True
            asyncio.get_running_loop().call_soon(self._push_soon)

    def _log_endpoints(self, name: str) -> None:
        """One line per change of a cluster's endpoints; the first answer is logged by the
        watcher itself."""
        cluster = self._watcher.clusters.get(name)
        if cluster is None:
            return
        text = ", ".join(
            f"[{e.host}]:{e.port}" if ":" in e.host else f"{e.host}:{e.port}"
            for e in cluster.endpoints
        )
        previous = self._endpoints_logged.get(name)
        self._endpoints_logged[name] = text
        if previous and text != previous:
            _LOG.info("cluster %s: resolved %s", name, text or "no endpoints")

    def _push_soon(self) -> None:
        self._push_pending = False
        if not self._stopped:
            try:
                self._push()
            except Exception:
                _LOG.exception("endpoint update could not be translated")

    def _redacted(self, text: str) -> str:
        """``text`` without the inbound tokens (Envoy quotes rejected routes whole)."""
        for token in self._tokens:
            text = text.replace(token, "<redacted>")
        return text

    def _on_nack(self, nack: Any) -> None:
        _LOG.error("envoy rejected %s", self._redacted(str(nack)))

    async def apply(self, config: SidecarConfig) -> str:
        """A new snapshot for ``config`` (Envoy is not restarted). A setting Envoy cannot
        express is refused here, as at start-up, rather than sent to be NACKed."""
        problems = unsupported(config)
        if problems:
            raise ApplyError(
                "not expressible on the Envoy plane: " + "; ".join(str(p) for p in problems)
            )
        config = self._keep_bound_ports(config)
        try:
            files, tokens = _read_files(config)
            await self._watcher.update(config.clusters)
        except (OSError, ValueError) as exc:
            raise ApplyError(str(exc)) from None
        old = self.config
        self.config, self._files, self._tokens = config, files, tokens
        try:
            self._push()
        except Exception as exc:
            self.config = old
            raise ApplyError(f"translation failed: {exc}") from exc
        return f"{len(config.clusters)} cluster(s); new xDS snapshot pushed"

    async def refresh_files(self) -> None:
        """A new snapshot when a TLS or token file changed (SDS / LDS update)."""
        try:
            files, tokens = _read_files(self.config)
        except OSError as exc:  # mid-rotation: keep what Envoy has, retry next time
            _LOG.warning("TLS or token file unreadable: %s", exc)
            return
        if (files, tokens) != (self._files, self._tokens):
            _LOG.info("TLS or token files changed: pushing new secrets")
            self._files, self._tokens = files, tokens
            self._push()

    async def stop_inbound(self, grace: float | None) -> None:
        """Drain the inbound listener; wait for its requests in flight (at most ``grace``)."""
        if self.config.inbound is not None:
            await self._stop_direction("inbound", grace)

    async def stop_outbound(self, grace: float | None) -> None:
        """Drain every listener (the inbound one is drained already); wait for the outbound
        requests in flight (at most ``grace``)."""
        await self._stop_direction("outbound", grace)

    async def _stop_direction(self, direction: Direction, grace: float | None) -> None:
        envoy = self._envoy
        if envoy is None:
            return
        if not grace:
            # At once: Envoy goes, cutting every call (any pending stop sees it gone).
            self._stopped = True
            await envoy.stop(0.0)
            return
        inbound_only = direction == "inbound"
        # Graceful first: the drain sequence (--drain-strategy immediate) sends every
        # connection of the direction a GOAWAY at once, so clients stop opening streams on
        # them; then the listeners close now rather than after --drain-time-s, as a grpc
        # server's stop() refuses new calls at once. Calls in flight go on.
        await envoy.drain(graceful=True, inbound_only=inbound_only)
        await envoy.drain(graceful=False, inbound_only=inbound_only)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._until_idle(envoy, direction), grace)

    async def _until_idle(self, envoy: EnvoyProcess, direction: Direction) -> None:
        while True:
            try:
                active, _ = await envoy.request_counts(direction)
            except AdminError:
                active = -1  # cannot tell now: wait on (the grace bounds it)
            if active == 0:
                return
            await asyncio.sleep(_DRAIN_POLL)

    async def call_counts(self, direction: Direction) -> CallCounts | None:
        """From Envoy's stats: ``http.<direction>.downstream_rq_active`` and ``_total``."""
        envoy = self._envoy
        if envoy is None or getattr(self.config, direction) is None:
            return CallCounts()
        try:
            active, started = await envoy.request_counts(direction)
        except AdminError:
            return None  # its admin does not answer now: cannot tell
        return CallCounts(active, started)

    async def close(self, *, forced: bool) -> None:
        """Stop Envoy (if still running), the ADS and health servers, the resolvers."""
        self._stopped = True
        if self._envoy is not None:
            await self._envoy.stop(0.0)
        await self._xds.stop(None)
        if self._local is not None:
            await self._local.close()
        if self._health_server is not None:
            await self._health_server.stop(None)
        if self._app_channel is not None:
            await self._app_channel.close(None)
        await self._endpoint_health.close()
        await self._watcher.close()
        shutil.rmtree(self._dir, ignore_errors=True)
