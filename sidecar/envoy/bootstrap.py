"""Envoy's bootstrap: the only config Envoy reads from a file; everything else comes over ADS.

Pure functions returning plain dicts (the JSON form of ``envoy.config.bootstrap.v3.Bootstrap``
for Envoy 1.40), checked by ``envoy --mode validate`` in the tests:

- ``admin`` on loopback or a unix socket only: it can drain, reconfigure and kill Envoy.
- ``dynamic_resources``: listeners and clusters (and through them routes and endpoints) over one
  ADS stream to the sidecar's xDS server, the static cluster ``meshkit_xds``.
- The ADS stream re-connects with a 0.1 s .. 1 s jittered back-off, set on
  ``envoy_grpc.retry_policy`` (the field Envoy 1.40 honours for xDS streams). Envoy's default,
  0.5 s doubling to 30 s, measured here: after an xDS server restart (down 1-4 s) the stream
  came back 0.3-24 s later (the delay grows over restarts); with this setting within
  0.6 s every time.
- ``stats_config``: tag extraction that turns the ``grpc_stats`` filter's per-method names
  (``cluster.<c>.grpc.<pkg.Service>.<Method>.<stat>``) into labels ``grpc_service``,
  ``grpc_method``, ``grpc_code`` in ``/stats/prometheus`` (Envoy's default extractor splits a
  dotted service name at its first dot), and the grpc latency histogram on meshkit's bucket
  bounds from 1 ms up (Envoy records that histogram in whole milliseconds). Histograms reach
  ``/stats`` only when Envoy flushes stats; ``stats_flush_interval`` is 1 s rather than 5 s so a
  scrape lags at most a second (``stats_flush_on_admin`` would lag a whole scrape interval:
  the flush a scrape triggers completes after that scrape's answer).
- ``overload_manager``: a global downstream connection limit (Envoy warns at start-up without
  one, and an unbounded accept loop is how a flood takes a sidecar down).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Final

from telemetry.metrics import DEFAULT_LATENCY_BUCKETS

__all__ = [
    "DEFAULT_MAX_DOWNSTREAM_CONNECTIONS",
    "GRPC_LATENCY_BUCKETS_MS",
    "STATS_FLUSH_INTERVAL",
    "XDS_CLUSTER",
    "bootstrap",
    "socket_address",
    "stats_config",
]

#: The static cluster that reaches the sidecar's xDS server.
XDS_CLUSTER: Final = "meshkit_xds"

#: How often Envoy merges histograms into what ``/stats`` shows (see the module doc).
STATS_FLUSH_INTERVAL: Final = "1s"

#: Envoy's own sizing guidance for an edge proxy is ~50k connections per instance; a sidecar
#: has far fewer peers, and this only stops an accept flood.
DEFAULT_MAX_DOWNSTREAM_CONNECTIONS: Final = 50_000

#: ``grpc_stats`` records ``upstream_rq_time`` in whole milliseconds: bounds under 1 ms would
#: all hold the same calls, so meshkit's buckets start at 1 ms here (same ``le`` values above).
GRPC_LATENCY_BUCKETS_MS: Final[tuple[float, ...]] = tuple(
    round(bound * 1000, 6) for bound in DEFAULT_LATENCY_BUCKETS if bound >= 0.001
)

_TYPE = "type.googleapis.com/"
_HTTP2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}

# Tag extractors run on the full stat name: group 1 is cut from the name, group 2 is the value.
# The grpc_stats filter names are cluster.<cluster>.grpc.<service>.<method>.<stat>, where
# <service> has dots (pkg.Service), <method> has none, and <stat> is success|failure|total|
# request_message_count|response_message_count|upstream_rq_time or a numeric grpc-status.
# With the three cut out, the names left are cluster.grpc.<stat> and cluster.grpc (per code).
_GRPC = r"^cluster\.[^.]+\.grpc"
_GRPC_TAGS: Final[tuple[tuple[str, str], ...]] = (
    ("grpc_service", _GRPC + r"(\.(.+))\.[^.]+\.[^.]+$"),
    ("grpc_method", _GRPC + r"\..+(\.([^.]+))\.[^.]+$"),
    ("grpc_code", _GRPC + r"\..+\.[^.]+(\.(\d+))$"),
)
_GRPC_LATENCY = _GRPC + r"\..+\.upstream_rq_time$"


def socket_address(host: str, port: int) -> dict[str, Any]:
    """An Envoy ``Address`` for ``host:port``."""
    return {"socket_address": {"address": host, "port_value": port}}


def _split(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected ip:port, [ipv6]:port or a unix socket path, got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: the host must be an IP address") from None
    number = int(port)
    if number > 65535:
        raise ValueError(f"{text!r}: port out of range")
    return host, number


def _unix_path(text: str) -> str | None:
    if text.startswith("unix:"):
        return text[len("unix:") :].removeprefix("//")
    return text if text.startswith("/") else None


def _address(text: str, *, loopback_only: bool, mode: int | None = None) -> dict[str, Any]:
    path = _unix_path(text)
    if path is not None:
        pipe: dict[str, Any] = {"path": path}
        if mode is not None:
            pipe["mode"] = mode
        return {"pipe": pipe}
    host, port = _split(text)
    if loopback_only and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{text!r} is not a loopback address")
    return socket_address(host, port)


def stats_config() -> dict[str, Any]:
    """The ``stats_config`` meshkit's metrics rely on (see the module doc); also for static
    bootstraps in tests."""
    return {
        "use_all_default_tags": True,
        "stats_tags": [{"tag_name": name, "regex": regex} for name, regex in _GRPC_TAGS],
        "histogram_bucket_settings": [
            {
                "match": {"safe_regex": {"regex": _GRPC_LATENCY}},
                "buckets": list(GRPC_LATENCY_BUCKETS_MS),
            }
        ],
    }


def _overload_manager(max_connections: int) -> dict[str, Any]:
    monitor = "envoy.resource_monitors.global_downstream_max_connections"
    return {
        "resource_monitors": [
            {
                "name": monitor,
                "typed_config": {
                    "@type": _TYPE + "envoy.extensions.resource_monitors.downstream_connections"
                    ".v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": max_connections,
                },
            }
        ]
    }


def _xds_cluster(address: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": XDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _HTTP2_OPTIONS,
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def _seconds(value: float) -> str:
    return f"{value:.3f}s"


def bootstrap(
    *,
    node_id: str,
    node_cluster: str,
    xds_address: str,
    admin_address: str = "127.0.0.1:0",
    max_downstream_connections: int = DEFAULT_MAX_DOWNSTREAM_CONNECTIONS,
    xds_retry_base: float = 0.1,
    xds_retry_max: float = 1.0,
    node_metadata: Mapping[str, str] | None = None,
    runtime: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The bootstrap of an Envoy driven over ADS by the sidecar's xDS server.

    ``runtime``: values of a static runtime layer the served resources need (e.g.
    :data:`sidecar.envoy.translate.RUNTIME`: the regex size limit of token routes).

    ``xds_address`` and ``admin_address``: ``ip:port`` / ``[ipv6]:port``, or a unix socket
    (``unix:/path`` or ``/path``). The admin must be on loopback (port ``0``: any free port,
    found through ``--admin-address-path``); its unix socket is created mode 0600. Raises
    ``ValueError`` on a malformed address or an admin not on loopback.

    Worker threads (``--concurrency``) and drain timing are command-line options, not
    bootstrap fields: see :mod:`sidecar.envoy.process`.
    """
    if not node_id or not node_cluster:
        raise ValueError("node_id and node_cluster must not be empty")
    if max_downstream_connections < 1:
        raise ValueError("max_downstream_connections must be >= 1")
    if not 0 < xds_retry_base <= xds_retry_max:
        raise ValueError("need 0 < xds_retry_base <= xds_retry_max")
    node: dict[str, Any] = {"id": node_id, "cluster": node_cluster}
    if node_metadata:
        node["metadata"] = dict(node_metadata)
    ads = {"ads": {}, "resource_api_version": "V3"}
    extra: dict[str, Any] = {}
    if runtime:
        extra["layered_runtime"] = {"layers": [{"name": "meshkit", "static_layer": dict(runtime)}]}
    return {
        "node": node,
        "admin": {"address": _address(admin_address, loopback_only=True, mode=0o600)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER,
                            "retry_policy": {
                                "retry_back_off": {
                                    "base_interval": _seconds(xds_retry_base),
                                    "max_interval": _seconds(xds_retry_max),
                                }
                            },
                        }
                    }
                ],
            },
            "lds_config": dict(ads),
            "cds_config": dict(ads),
        },
        "static_resources": {
            "clusters": [_xds_cluster(_address(xds_address, loopback_only=False))],
        },
        "stats_config": stats_config(),
        "stats_flush_interval": STATS_FLUSH_INTERVAL,
        "overload_manager": _overload_manager(max_downstream_connections),
        **extra,
    }
