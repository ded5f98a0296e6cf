"""meshkit's config and state -> Envoy xDS resources, as pure functions.

:func:`translate` turns a :class:`~sidecar.config.SidecarConfig` plus what the control plane
knows (:class:`PlaneInputs`: resolved endpoints, TLS file contents, tokens, the address of
meshkit's health server) into :class:`Resources`: plain dicts in Envoy's proto3-JSON form,
each with its ``"@type"``, ready to be packed into ``Any`` and served over ADS. The same
inputs give equal dicts (every list built in a defined order); the resources are consistent
(every route's cluster, every EDS cluster's ``ClusterLoadAssignment`` -- empty when nothing is
resolved --, every RDS name and every SDS secret exist). :func:`static_bootstrap` inlines
them into one static Envoy config for ``envoy --mode validate`` and debugging.

Names: listeners and route configurations ``outbound`` / ``inbound``; clusters
``outbound|<cluster>`` (EDS), ``inbound|app``, ``meshkit|health``, ``meshkit|otlp``; secrets
``inbound|cert``, ``inbound|client_ca``, ``cluster|<cluster>|ca``, ``cluster|<cluster>|cert``.
A rotated file is a new version of its secret; Envoy swaps it without a restart.

What each setting means is today's meaning in the Python plane; the details are in
``_translate_clusters`` (clusters, load balancing, health, outlier detection, retries, upstream
TLS) and ``_translate_listeners`` (listeners, routes, deadlines, inbound TLS and auth,
telemetry). :func:`unsupported` names the settings Envoy cannot express. Meaningless to
Envoy, and ignored: route ``kind`` hints, cluster ``resolver`` timings, ``app_health``,
``drain``, ``admin``, ``workers`` (meshkit's own business).

The dicts hold private keys and tokens (inline secrets, the inbound routes' header
patterns): never log them. :data:`RUNTIME` holds the Envoy runtime values the resources
need; a bootstrap serving them sets it as a static layer (``static_bootstrap`` does).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from sidecar._config_values import FieldError
from sidecar.config import ServerKeepaliveConfig, SidecarConfig
from sidecar.envoy import _translate_clusters as _clusters
from sidecar.envoy import _translate_listeners as _listeners
from sidecar.envoy._translate_common import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    SECRET,
    SYSTEM_CA_BUNDLE,
    Endpoint,
    Json,
    PlaneInputs,
    Resources,
    freeze,
    socket_address,
)

__all__ = [
    "CLUSTER",
    "CLUSTER_LOAD_ASSIGNMENT",
    "LISTENER",
    "ROUTE_CONFIGURATION",
    "RUNTIME",
    "SECRET",
    "SYSTEM_CA_BUNDLE",
    "Endpoint",
    "PlaneInputs",
    "Resources",
    "cluster_name",
    "static_bootstrap",
    "translate",
    "unsupported",
]

_DEFAULT_MIN_PING = ServerKeepaliveConfig().min_ping_interval

#: Envoy runtime values the resources need (``layered_runtime`` static layer of a bootstrap).
RUNTIME = _listeners.RUNTIME

#: Envoy's name of the meshkit cluster ``name`` (``outbound|<name>``).
cluster_name = _clusters.cluster_name


def translate(config: SidecarConfig, inputs: PlaneInputs) -> Resources:
    """Every Envoy resource for ``config`` given ``inputs``.

    Raises ``ValueError`` naming the field when a TLS file named by the config has no
    contents in ``inputs.files``.
    """
    listeners: dict[str, Json] = {}
    routes: dict[str, Json] = {}
    clusters: dict[str, Json] = {}
    endpoints: dict[str, Json] = {}
    secrets: dict[str, Json] = {}
    tracing = config.telemetry.tracing
    access_log = config.telemetry.access_log

    if config.outbound is not None:
        listeners[_listeners.OUTBOUND] = _listeners.outbound_listener(
            config.outbound, tracing, access_log
        )
        routes[_listeners.OUTBOUND] = _listeners.outbound_routes(config, config.outbound)
    for name, cluster in config.clusters.items():
        envoy_name = _clusters.cluster_name(name)
        clusters[envoy_name] = _clusters.outbound_cluster(name, cluster)
        endpoints[envoy_name] = _clusters.load_assignment(
            name, cluster, inputs.endpoints.get(name, ()), inputs.endpoint_health.get(name)
        )
        for secret in _clusters.cluster_secrets(name, cluster, inputs.files):
            secrets[secret["name"]] = secret

    inbound = config.inbound
    if inbound is not None:
        listeners[_listeners.INBOUND] = _listeners.inbound_listener(inbound, tracing, access_log)
        routes[_listeners.INBOUND] = _listeners.inbound_routes(
            inbound, inputs.health_address is not None, inputs.tokens
        )
        clusters[_listeners.APP_CLUSTER] = _listeners.app_cluster(inbound)
        if inputs.health_address is not None:
            clusters[_listeners.HEALTH_CLUSTER] = _listeners.health_cluster(inputs.health_address)
        for secret in _listeners.inbound_secrets(inbound, inputs.files):
            secrets[secret["name"]] = secret

    if tracing.otlp_endpoint is not None:
        clusters[_listeners.OTLP_CLUSTER] = _listeners.otlp_cluster(
            tracing.otlp_endpoint, tracing.protocol
        )

    return Resources(
        listeners=freeze(listeners),
        routes=freeze(routes),
        clusters=freeze(clusters),
        endpoints=freeze(endpoints),
        secrets=freeze(secrets),
    )


def unsupported(config: SidecarConfig) -> list[FieldError]:
    """The settings of ``config`` Envoy cannot express, each naming its field path.

    Smaller differences that keep what a setting is for are not listed (the translation
    modules' docs say more): Envoy pings idle upstream connections, joins a repeated auth
    header's values (the Python plane reads the first), and resets a stream whose response
    had started when its default deadline passes.
    """
    return list(_problems(config))


def _problems(config: SidecarConfig) -> Iterator[FieldError]:
    listeners = (("outbound", config.outbound), ("inbound", config.inbound))
    for path, listener in listeners:
        if listener is None:
            continue
        if listener.keepalive.min_ping_interval != _DEFAULT_MIN_PING:
            # Envoy answers client pings at any rate; it has no too_many_pings policy.
            yield FieldError(
                f"{path}.keepalive.min_ping_interval",
                "Envoy accepts client pings at any rate: no minimum interval to enforce",
            )
        yield from _clusters.keepalive_problems(f"{path}.keepalive", listener.keepalive)
    for name in sorted(config.clusters):
        yield from _clusters.problems(name, config.clusters[name])


def static_bootstrap(resources: Resources, *, admin_port: int = 0) -> dict[str, Any]:
    """One static Envoy bootstrap holding ``resources`` inline (no xDS): routes inside their
    listeners, EDS clusters as STATIC with their endpoints, secrets in
    ``static_resources.secrets``, :data:`RUNTIME` as a static runtime layer. The admin
    listener is on ``127.0.0.1:admin_port``.

    For ``envoy --mode validate`` and as a readable dump; it holds keys and tokens.
    """
    listeners = []
    for name in sorted(resources.listeners):
        listener = _untyped(resources.listeners[name])
        for chain in listener.get("filter_chains", ()):
            for network_filter in chain.get("filters", ()):
                hcm = network_filter.get("typed_config", {})
                rds = hcm.pop("rds", None)
                if rds is not None:
                    hcm["route_config"] = _untyped(resources.routes[rds["route_config_name"]])
        listeners.append(listener)
    clusters = []
    for name in sorted(resources.clusters):
        cluster = _untyped(resources.clusters[name])
        if cluster.get("type") == "EDS":
            cluster["type"] = "STATIC"
            del cluster["eds_cluster_config"]
            cluster["load_assignment"] = _untyped(resources.endpoints[name])
        clusters.append(cluster)
    secrets = [_untyped(resources.secrets[name]) for name in sorted(resources.secrets)]
    static: Json = {"listeners": listeners, "clusters": clusters}
    if secrets:
        static["secrets"] = secrets
    return {
        "node": {"id": "meshkit-static", "cluster": "meshkit-static"},
        "admin": {"address": socket_address("127.0.0.1", admin_port)},
        "static_resources": _without_sds_sources(static),
        "layered_runtime": {"layers": [{"name": "meshkit", "static_layer": dict(RUNTIME)}]},
    }


def _untyped(resource: Json) -> Json:
    """A deep copy of ``resource`` without its top-level ``"@type"`` (not an ``Any`` here)."""
    body = copy.deepcopy(resource)
    body.pop("@type", None)
    return body


def _without_sds_sources(value: Any) -> Any:
    """``value`` with every ``sds_config`` removed: a secret reference without a source is
    looked up in ``static_resources.secrets``."""
    if isinstance(value, dict):
        return {k: _without_sds_sources(v) for k, v in value.items() if k != "sds_config"}
    if isinstance(value, list):
        return [_without_sds_sources(v) for v in value]
    return value
