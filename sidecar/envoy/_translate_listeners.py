"""Listeners and route configurations: the outbound and inbound HTTP/2 connection managers.

Both listeners run an HTTP connection manager speaking HTTP/2 only (gRPC), with routes over
ADS (RDS), filters ``grpc_stats`` (per-method gRPC stats, upstream timing) then the router;
no idle or request timeout of Envoy's own (the Python plane has none: a quiet stream lives
as long as its caller wants).

Deadlines (route ``timeout``, else the cluster's, is the *default* deadline):
``max_stream_duration.grpc_timeout_header_max: 0s`` makes a caller's ``grpc-timeout`` the
stream's limit, uncapped; without one, ``max_stream_duration`` is the limit. Either way Envoy
writes the limit into the ``grpc-timeout`` it forwards, so the server sees the deadline as it
does behind the Python plane, and ``route.timeout: 0s`` turns Envoy's own 15 s response
timeout off. A call past the default deadline ends DEADLINE_EXCEEDED, or, once its response
has started (a stream), is reset, which the caller sees as INTERNAL (the Python plane ends
it DEADLINE_EXCEEDED). A caller's own deadline is the caller's to report.

Failures Envoy answers itself carry the gRPC status of the Python plane: no route ->
UNIMPLEMENTED (with the path in the details), a missing or unknown token -> UNAUTHENTICATED.

Inbound auth is Envoy's ``api_key_auth`` filter on ``auth.header``: the key is the header's
value less a leading ``"Bearer "`` (Envoy drops that prefix, case-sensitively, from any
header) and is looked up in a hash table (not a constant-time comparison). So for the Bearer
scheme the keys are the tokens, plus ``"bearer <token>"`` for the lowercase spelling (the
Python plane takes the scheme in any case; other spellings are refused here), and a bare
token without the scheme passes too; for another scheme the keys are ``"<scheme> <token>"``
(the scheme as configured, case-sensitive); with no scheme, the tokens. No token at all
refuses every call (the Python plane fails closed too). Health calls skip the filter (probes
carry no token). Envoy 1.40 marks this filter's API work-in-progress (it logs a warning).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from sidecar.config import (
    AuthConfig,
    InboundConfig,
    InboundTlsConfig,
    ListenAddress,
    OutboundConfig,
    Route,
    ServerKeepaliveConfig,
    SidecarConfig,
    TracingConfig,
)
from sidecar.envoy import _translate_clusters as clusters
from sidecar.envoy._translate_common import (
    LISTENER,
    ROUTE_CONFIGURATION,
    SYSTEM_CA_BUNDLE,
    Json,
    ads,
    ca_secret,
    certificate_secret,
    duration,
    is_ip,
    sds,
    static_cluster,
    typed,
)
from sidecar.routing import PathMatcher
from telemetry.tracing import is_loopback_endpoint

OUTBOUND = "outbound"
INBOUND = "inbound"
APP_CLUSTER = "inbound|app"
HEALTH_CLUSTER = "meshkit|health"
OTLP_CLUSTER = "meshkit|otlp"
CERT_SECRET = "inbound|cert"
CLIENT_CA_SECRET = "inbound|client_ca"
HEALTH_PREFIX = "/grpc.health.v1.Health/"

_AUTH_FILTER = "envoy.filters.http.api_key_auth"
_OTLP_DEFAULT_PORT = 443
_OTLP_TIMEOUT = 5.0


def _tracing(tracing: TracingConfig) -> Json:
    # The OpenTelemetry tracer propagates W3C ``traceparent`` and keeps a sampled parent's
    # decision; new traces are sampled at ``sample_ratio``.
    return {
        "random_sampling": {"value": tracing.sample_ratio * 100.0},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": typed(
                "envoy.config.trace.v3.OpenTelemetryConfig",
                grpc_service={
                    "envoy_grpc": {"cluster_name": OTLP_CLUSTER},
                    "timeout": duration(_OTLP_TIMEOUT),
                },
                service_name=tracing.service_name,
            ),
        },
    }


def otlp_cluster(endpoint: str) -> Json:
    """The cluster of the OTLP/gRPC collector at ``endpoint`` (``host:port`` or URL), with
    TLS as the Python exporter uses it: for ``https`` and any non-loopback collector."""
    scheme, sep, _ = endpoint.partition("://")
    parts = urlsplit(endpoint if sep else f"//{endpoint}")
    host = parts.hostname or ""
    port = parts.port or _OTLP_DEFAULT_PORT
    cluster = static_cluster(OTLP_CLUSTER, host, port)
    if scheme == "https" or not is_loopback_endpoint(endpoint):
        validation: Json = {
            "trusted_ca": {"filename": SYSTEM_CA_BUNDLE},
            "match_typed_subject_alt_names": [
                {"san_type": "IP_ADDRESS" if is_ip(host) else "DNS", "matcher": {"exact": host}}
            ],
        }
        context: Json = {
            "common_tls_context": {"alpn_protocols": ["h2"], "validation_context": validation}
        }
        if not is_ip(host):
            context["sni"] = host
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": typed(
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", **context
            ),
        }
    return cluster


def _local_replies() -> Json:
    # Envoy turns its own replies to gRPC calls into trailers-only answers, the status mapped
    # from the HTTP code (404 -> UNIMPLEMENTED, 401 -> UNAUTHENTICATED) and the body as
    # grpc-message: here the no-route message names the path, as the Python plane's does.
    return {
        "mappers": [
            {
                "filter": {"response_flag_filter": {"flags": ["NR"]}},
                "body_format_override": {
                    "text_format_source": {"inline_string": "proxy: no route for %REQ(:PATH)%"}
                },
            }
        ]
    }


def _hcm(
    name: str,
    keepalive: ServerKeepaliveConfig,
    max_concurrent_streams: int,
    filters: Sequence[Json],
    tracing: TracingConfig,
    *,
    remote_address: bool,
) -> Json:
    hcm: Json = typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=name,
        codec_type="HTTP2",
        rds={"route_config_name": name, "config_source": ads()},
        http2_protocol_options={
            "max_concurrent_streams": max_concurrent_streams,
            "connection_keepalive": {
                "interval": duration(keepalive.time),
                "timeout": duration(keepalive.timeout),
            },
        },
        stream_idle_timeout="0s",
        http_filters=[
            *filters,
            {
                "name": "envoy.filters.http.grpc_stats",
                "typed_config": typed(
                    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
                    emit_filter_state=True,
                    stats_for_all_methods=True,
                    enable_upstream_stats=True,
                ),
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": typed(
                    "envoy.extensions.filters.http.router.v3.Router",
                    # no x-envoy-* headers to the server: the mesh stays transparent
                    suppress_envoy_headers=True,
                ),
            },
        ],
        local_reply_config=_local_replies(),
    )
    if remote_address:
        # The peer's address is appended to x-forwarded-for, as the Python inbound does.
        hcm["use_remote_address"] = True
    if tracing.otlp_endpoint is not None:
        hcm["tracing"] = _tracing(tracing)
    return hcm


def _listener(
    name: str, address: ListenAddress, hcm: Json, transport_socket: Json | None = None
) -> Json:
    socket: Json = {"address": address.host, "port_value": address.port}
    if address.host == "::":
        socket["ipv4_compat"] = True  # "::" takes IPv4 too, as gRPC's "[::]" does
    chain: Json = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if transport_socket is not None:
        chain["transport_socket"] = transport_socket
    return {
        "@type": LISTENER,
        "name": name,
        "address": {"socket_address": socket},
        "traffic_direction": name.upper(),
        "filter_chains": [chain],
    }


def outbound_listener(config: OutboundConfig, tracing: TracingConfig) -> Json:
    """The listener the local app calls."""
    hcm = _hcm(
        OUTBOUND,
        config.keepalive,
        config.max_concurrent_streams,
        (),
        tracing,
        remote_address=False,
    )
    return _listener(OUTBOUND, config.listen, hcm)


def _match(prefix: str) -> Json:
    # sidecar.routing's rule: "/pkg.Svc/Method" is that method only, anything else a prefix.
    return {"path": prefix} if PathMatcher(prefix).exact else {"prefix": prefix}


def _route_action(cluster: str, default_deadline: float | None) -> Json:
    stream: Json = {"grpc_timeout_header_max": "0s"}
    if default_deadline is not None:
        stream["max_stream_duration"] = duration(default_deadline)
    return {"cluster": cluster, "timeout": "0s", "max_stream_duration": stream}


def _outbound_route(index: int, route: Route, config: SidecarConfig) -> Json:
    cluster = config.clusters[route.cluster]
    deadline = route.timeout if route.timeout is not None else cluster.timeout
    action = _route_action(clusters.cluster_name(route.cluster), deadline)
    authority = clusters.authority(cluster)
    if authority is not None:
        action["host_rewrite_literal"] = authority
    if cluster.retry is not None:
        retry = clusters.retry_policy(cluster.retry)
        if retry is not None:
            action["retry_policy"] = retry
    return {"name": f"routes[{index}]", "match": _match(route.prefix), "route": action}


def outbound_routes(config: SidecarConfig, outbound: OutboundConfig) -> Json:
    """The outbound route configuration: the config's routes in order."""
    routes = [_outbound_route(i, r, config) for i, r in enumerate(outbound.routes)]
    return {
        "@type": ROUTE_CONFIGURATION,
        "name": OUTBOUND,
        "virtual_hosts": [{"name": OUTBOUND, "domains": ["*"], "routes": routes}],
    }


def _auth_keys(auth: AuthConfig, tokens: Sequence[str]) -> list[str]:
    scheme = auth.scheme
    keys: set[str] = set()
    for token in tokens:
        if scheme.lower() == "bearer":
            keys.update((token, f"bearer {token}"))
        elif scheme:
            keys.add(f"{scheme} {token}")
        else:
            keys.add(token)
    return sorted(keys)


def _auth_filter(auth: AuthConfig, tokens: Sequence[str]) -> Json:
    credentials = [
        {"key": key, "client": f"token-{i}"} for i, key in enumerate(_auth_keys(auth, tokens))
    ]
    return {
        "name": _AUTH_FILTER,
        "typed_config": typed(
            "envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
            credentials=credentials,
            key_sources=[{"header": auth.header}],
        ),
    }


def _downstream_tls(tls: InboundTlsConfig) -> Json:
    common: Json = {
        "alpn_protocols": ["h2"],
        "tls_certificate_sds_secret_configs": [sds(CERT_SECRET)],
    }
    if tls.client_ca is not None:
        common["validation_context_sds_secret_config"] = sds(CLIENT_CA_SECRET)
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": typed(
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            common_tls_context=common,
            require_client_certificate=tls.require_client_cert,
        ),
    }


def inbound_listener(config: InboundConfig, tracing: TracingConfig, tokens: Sequence[str]) -> Json:
    """The listener remote peers call."""
    filters = [] if config.auth is None else [_auth_filter(config.auth, tokens)]
    hcm = _hcm(
        INBOUND,
        config.keepalive,
        config.max_concurrent_streams,
        filters,
        tracing,
        remote_address=True,
    )
    tls = None if config.tls is None else _downstream_tls(config.tls)
    return _listener(INBOUND, config.listen, hcm, tls)


def inbound_routes(config: InboundConfig, health: bool) -> Json:
    """Every call to the app; health calls to meshkit's health server (when ``health``),
    never subject to auth."""
    health_route: Json = {
        "name": "health",
        "match": {"prefix": HEALTH_PREFIX},
        "route": _route_action(HEALTH_CLUSTER if health else APP_CLUSTER, None),
    }
    if config.auth is not None:
        health_route["typed_per_filter_config"] = {
            _AUTH_FILTER: typed("envoy.config.route.v3.FilterConfig", disabled=True)
        }
    app_route: Json = {
        "name": "app",
        "match": {"prefix": "/"},
        "route": _route_action(APP_CLUSTER, None),
    }
    return {
        "@type": ROUTE_CONFIGURATION,
        "name": INBOUND,
        "virtual_hosts": [{"name": INBOUND, "domains": ["*"], "routes": [health_route, app_route]}],
    }


def app_cluster(config: InboundConfig) -> Json:
    """The local app: one fixed address (STATIC, or STRICT_DNS for a name); a change of
    address is a config reload, which resends every cluster anyway, so EDS would add nothing.
    """
    return static_cluster(APP_CLUSTER, config.app.host, config.app.port)


def health_cluster(address: tuple[str, int]) -> Json:
    """meshkit's own health server."""
    return static_cluster(HEALTH_CLUSTER, address[0], address[1])


def inbound_secrets(config: InboundConfig, files: Mapping[str, bytes]) -> list[Json]:
    """The SDS secrets of the inbound listener's TLS (file contents inline)."""
    tls = config.tls
    if tls is None:
        return []
    secrets = [certificate_secret(CERT_SECRET, files, tls.cert, tls.key, "inbound.tls")]
    if tls.client_ca is not None:
        secrets.append(ca_secret(CLIENT_CA_SECRET, files, tls.client_ca, "inbound.tls.client_ca"))
    return secrets
