"""Inputs, outputs and small builders shared by the translation modules (see ``translate``)."""

from __future__ import annotations

import base64
import ipaddress
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]

TYPE_PREFIX = "type.googleapis.com/"
LISTENER = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE_CONFIGURATION = TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
CLUSTER_LOAD_ASSIGNMENT = TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

#: The system CA bundle (Debian, Ubuntu, Alpine and Envoy's own images), which Envoy reads
#: itself when a TLS section names no ``ca``: Envoy has no built-in roots, and no validation
#: context at all would mean no verification.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

# Envoy's default circuit breakers (1024 connections/pending/requests per cluster) would
# reject calls the Python plane forwards; meshkit sets no such limit, so neither does Envoy.
UNLIMITED = 2**32 - 1


@dataclass(frozen=True)
class Endpoint:
    """One resolved address of a cluster: an IP address and port, or a Unix socket path
    with port 0 (EDS takes no host names: such endpoints are left out).

    ``weight`` counts for ``weighted_round_robin`` only (as in the Python balancers).
    """

    host: str
    port: int
    weight: int = 1


@dataclass(frozen=True)
class PlaneInputs:
    """What the translation needs besides the config, all read by the caller.

    - ``endpoints``: the resolved addresses per cluster name (a cluster missing here has none);
    - ``health_address``: meshkit's own ``grpc.health.v1`` server that answers the inbound
      listener's health calls (``None``: they go to the app like any call);
    - ``files``: contents of the TLS files by the paths the config names;
    - ``tokens``: the inbound tokens (they only ever appear in the inbound route
      configuration's header patterns);
    - ``endpoint_health``: per cluster name, the EDS ``health_status`` of each endpoint
      ``(host, port)`` as the control plane's health watch sees it (see
      ``sidecar.envoy.endpoint_health``); only clusters with ``health_check`` use it, and an
      endpoint missing there is sent without a status (Envoy reads that as ``UNKNOWN``:
      routable).
    """

    endpoints: Mapping[str, Sequence[Endpoint]] = field(
        default_factory=lambda: types.MappingProxyType({})
    )
    health_address: tuple[str, int] | None = None
    files: Mapping[str, bytes] = field(
        default_factory=lambda: types.MappingProxyType({}), repr=False
    )
    tokens: Sequence[str] = field(default=(), repr=False)
    endpoint_health: Mapping[str, Mapping[tuple[str, int], str]] = field(
        default_factory=lambda: types.MappingProxyType({})
    )


@dataclass(frozen=True)
class Resources:
    """Envoy resources by name, per xDS type; each a proto3-JSON dict with its ``"@type"``.

    They hold private keys and tokens: the repr shows names only.
    """

    listeners: Mapping[str, Json] = field(repr=False)
    routes: Mapping[str, Json] = field(repr=False)
    clusters: Mapping[str, Json] = field(repr=False)
    endpoints: Mapping[str, Json] = field(repr=False)
    secrets: Mapping[str, Json] = field(repr=False)

    def __repr__(self) -> str:
        groups = ("listeners", "routes", "clusters", "endpoints", "secrets")
        shown = ", ".join(f"{g}={sorted(getattr(self, g))}" for g in groups)
        return f"Resources({shown})"


def duration(seconds: float) -> str:
    """A ``google.protobuf.Duration`` in proto3 JSON: ``"5s"``, ``"0.050s"`` (ns precision)."""
    nanos = round(seconds * 1e9)
    whole, frac = divmod(nanos, 10**9)
    if not frac:
        return f"{whole}s"
    return f"{whole}.{frac:09d}".rstrip("0") + "s"


def socket_address(host: str, port: int) -> Json:
    """An ``envoy.config.core.v3.Address``."""
    return {"socket_address": {"address": host, "port_value": port}}


def is_ip(host: str) -> bool:
    """True for an IPv4 or IPv6 literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def typed(type_name: str, **fields: Any) -> Json:
    """A message for an ``Any`` field: ``{"@type": ..., **fields}``."""
    return {"@type": TYPE_PREFIX + type_name, **fields}


def http2_upstream(keepalive: tuple[float, float] | None) -> Json:
    """``typed_extension_protocol_options`` making a cluster speak HTTP/2 (gRPC), with
    HTTP/2 PING keepalive ``(interval, timeout)`` when given."""
    http2: Json = {}
    if keepalive is not None:
        http2["connection_keepalive"] = {
            "interval": duration(keepalive[0]),
            "timeout": duration(keepalive[1]),
        }
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            explicit_http_config={"http2_protocol_options": http2},
        )
    }


def unlimited_circuit_breakers(retry_budget: Json | None = None) -> Json:
    """Circuit breakers with no connection/request limits; retries bounded by
    ``retry_budget`` if given, else unbounded too.

    Envoy's default ``max_retries`` (3 concurrent retries per cluster) would fail, under load,
    the transparent retries every route makes of calls that never reached the upstream (the
    Python plane re-picks those without a limit); a cluster with a retry policy bounds its
    retries with the budget instead (Envoy ignores ``max_retries`` when a budget is set).
    """
    threshold: Json = {
        "priority": "DEFAULT",
        "max_connections": UNLIMITED,
        "max_pending_requests": UNLIMITED,
        "max_requests": UNLIMITED,
    }
    if retry_budget is not None:
        threshold["retry_budget"] = retry_budget
    else:
        threshold["max_retries"] = UNLIMITED
    return {"thresholds": [threshold]}


def static_cluster(name: str, host: str, port: int, *, connect_timeout: float = 5.0) -> Json:
    """A cluster of one fixed address speaking HTTP/2: STATIC for an IP, STRICT_DNS for a
    name (Envoy resolves it; EDS cannot carry names)."""
    cluster: Json = {
        "@type": CLUSTER,
        "name": name,
        "type": "STATIC" if is_ip(host) else "STRICT_DNS",
        "connect_timeout": duration(connect_timeout),
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": unlimited_circuit_breakers(),
        "typed_extension_protocol_options": http2_upstream(None),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": socket_address(host, port)}}]}
            ],
        },
    }
    if not is_ip(host):
        # IPv4 first: "localhost" and most collectors answer there (Envoy's AUTO tries v6)
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    return cluster


def ads() -> Json:
    """A config source: xDS over the bootstrap's ADS stream, API v3 (a new dict each time,
    so no two resources share one)."""
    return {"ads": {}, "resource_api_version": "V3"}


def sds(name: str) -> Json:
    """An SDS secret reference fetched over ADS."""
    return {"name": name, "sds_config": ads()}


def _data_source(files: Mapping[str, bytes], path: str, where: str) -> Json:
    try:
        content = files[path]
    except KeyError:
        raise ValueError(f"{where}: no contents given for {path}") from None
    return {"inline_bytes": base64.b64encode(content).decode("ascii")}


def certificate_secret(
    name: str, files: Mapping[str, bytes], cert: str, key: str, where: str
) -> Json:
    """A ``Secret`` holding a certificate chain and its private key (file contents inline)."""
    return {
        "@type": SECRET,
        "name": name,
        "tls_certificate": {
            "certificate_chain": _data_source(files, cert, f"{where}.cert"),
            "private_key": _data_source(files, key, f"{where}.key"),
        },
    }


def ca_secret(name: str, files: Mapping[str, bytes], ca: str, where: str) -> Json:
    """A ``Secret`` holding trusted CA certificates (a validation context)."""
    return {
        "@type": SECRET,
        "name": name,
        "validation_context": {"trusted_ca": _data_source(files, ca, where)},
    }


def freeze(resources: Mapping[str, Json]) -> Mapping[str, Json]:
    """A read-only mapping of ``resources`` in name order."""
    return types.MappingProxyType({name: resources[name] for name in sorted(resources)})
