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

Inbound auth is route matching, exactly the Python plane's check (``sidecar.auth`` and
``sidecar.inbound.authenticator``): the value of ``auth.header``, stripped, must be the scheme
word in any ASCII case, one space, then a listed token (whitespace around it ignored); with
scheme ``""`` the stripped value is the token. After the health route, one route per token
forwards a call whose header matches that token's RE2 pattern (the token as a literal, every
ASCII non-word character escaped); then a call of the right shape with another token gets a
local 401 with ``INVALID_TOKEN``, anything else (no header, bare token, other scheme, no
token) a local 401 with the missing-token details. Envoy answers a gRPC call's local 401 with
UNAUTHENTICATED and the body as the details. No token at all leaves no forwarding route (the
Python plane fails closed too). The tokens live in the route configuration, so a rotation
replaces routes without draining the listener's connections. Envoy's ``api_key_auth`` filter
cannot do this: it drops only an exact ``"Bearer "`` prefix and looks the rest up as is.
Differences left: Envoy joins repeated header values with commas (the Python plane reads the
first), and matching is not constant-time (a regex over the header, not digests). Each token
is one regex: Envoy's default RE2 program-size limit (100: Bearer tokens up to 83 bytes) is
raised by ``RUNTIME``, which the bootstrap must carry.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence

from sidecar import authz
from sidecar.access_log import STDOUT
from sidecar.auth import INVALID_TOKEN, MISSING_TOKEN
from sidecar.config import (
    AccessLogConfig,
    AuthConfig,
    AuthorizationConfig,
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
from telemetry import otlp

OUTBOUND = "outbound"
INBOUND = "inbound"
APP_CLUSTER = "inbound|app"
HEALTH_CLUSTER = "meshkit|health"
OTLP_CLUSTER = "meshkit|otlp"
CERT_SECRET = "inbound|cert"
CLIENT_CA_SECRET = "inbound|client_ca"
HEALTH_PREFIX = "/grpc.health.v1.Health/"

#: Envoy runtime values the resources need: RE2's program-size limit (default 100) raised,
#: since each token route's regex spells its token out.
RUNTIME: Mapping[str, int] = types.MappingProxyType({"re2.max_program_size.error_level": 1 << 20})
_OTLP_TIMEOUT = 5.0


# The RPC conventions' attributes Envoy can fill from a call (it has no way to split the path
# into rpc.service / rpc.method; it tags grpc.path, grpc.status_code and grpc.message itself).
_RPC_TAGS: Sequence[Json] = (
    {"tag": "rpc.system", "literal": {"value": "grpc"}},
    {"tag": "rpc.grpc.status_code", "value": "%GRPC_STATUS_NUMBER%"},
    {"tag": "server.address", "value": "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%"},
    {"tag": "server.port", "value": "%DOWNSTREAM_LOCAL_PORT%"},
    {"tag": "network.peer.address", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
    {"tag": "network.peer.port", "value": "%DOWNSTREAM_REMOTE_PORT%"},
)


def _tracing(tracing: TracingConfig) -> Json:
    # The OpenTelemetry tracer propagates W3C ``traceparent`` and keeps a sampled parent's
    # decision; new traces are sampled at ``sample_ratio``. spawn_upstream_span: the router
    # opens a CLIENT span per upstream request, so each retry is a span of its own under the
    # SERVER span of the downstream call (the successor of the router's start_child_span).
    headers = dict(tracing.headers or {})
    exporter: Json
    if tracing.protocol == otlp.HTTP_PROTOBUF and tracing.otlp_endpoint is not None:
        target = otlp.otlp_target(tracing.otlp_endpoint, otlp.HTTP_PROTOBUF, "traces")
        exporter = {
            "http_service": {
                "http_uri": {
                    "uri": target.url,
                    "cluster": OTLP_CLUSTER,
                    "timeout": duration(_OTLP_TIMEOUT),
                },
                "request_headers_to_add": [
                    {"header": {"key": key, "value": value}} for key, value in headers.items()
                ],
            }
        }
    else:
        service: Json = {
            "envoy_grpc": {"cluster_name": OTLP_CLUSTER},
            "timeout": duration(_OTLP_TIMEOUT),
        }
        if headers:
            service["initial_metadata"] = [{"key": k, "value": v} for k, v in headers.items()]
        exporter = {"grpc_service": service}
    return {
        "random_sampling": {"value": tracing.sample_ratio * 100.0},
        "spawn_upstream_span": True,
        "custom_tags": [dict(tag) for tag in _RPC_TAGS],  # fresh: resources share nothing
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": typed(
                "envoy.config.trace.v3.OpenTelemetryConfig",
                **exporter,
                service_name=tracing.service_name,
            ),
        },
    }


def otlp_cluster(endpoint: str, protocol: str = otlp.GRPC) -> Json:
    """The cluster of the OTLP collector at ``endpoint`` (``host:port`` or URL), with TLS by
    the rules of :mod:`telemetry.otlp` (the Python exporters' too): ``http://`` plaintext,
    ``https://`` TLS, a bare ``host:port`` plaintext on loopback only. OTLP/gRPC speaks
    HTTP/2; OTLP/HTTP HTTP/1.1, which every collector serves."""
    target = otlp.otlp_target(endpoint, protocol, "traces")
    host = target.host
    cluster = static_cluster(OTLP_CLUSTER, host, target.port)
    if protocol == otlp.HTTP_PROTOBUF:
        del cluster["typed_extension_protocol_options"]
    if target.secure:
        validation: Json = {
            "trusted_ca": {"filename": SYSTEM_CA_BUNDLE},
            "match_typed_subject_alt_names": [
                {"san_type": "IP_ADDRESS" if is_ip(host) else "DNS", "matcher": {"exact": host}}
            ],
        }
        alpn = ["h2"] if protocol == otlp.GRPC else ["http/1.1"]
        context: Json = {
            "common_tls_context": {"alpn_protocols": alpn, "validation_context": validation}
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


#: RBAC policy names (DENY action): Envoy evaluates them in lexicographic order, so a caller
#: without any SPIFFE ID is named by the first before the second would match it too.
NO_IDENTITY_POLICY = "no-spiffe-id"
NOT_ALLOWED_POLICY = "not-allowed"
_RBAC_FILTER = "envoy.filters.http.rbac"


def _principal(matcher: Json) -> Json:
    return {"authenticated": {"principal_name": matcher}}


def rbac_filter(authorization: AuthorizationConfig) -> Json:
    """The RBAC http filter of ``inbound.authorization`` (see :mod:`sidecar.authz`).

    Two DENY policies, both sparing the health service's paths: a caller whose certificate
    has no ``spiffe://`` URI SAN, and a caller none of whose SANs is allowed. A refused
    call's details (:func:`_local_replies`) say which. Envoy's
    ``principal_name`` tries URI SANs, then DNS SANs and the subject, which never match a
    ``spiffe://`` matcher: only URI SANs decide, as on the Python plane.
    """
    allowed = [_principal({"exact": spiffe_id}) for spiffe_id in authorization.allowed_ids]
    allowed += [
        _principal({"safe_regex": {"regex": authz.pattern_regex(pattern)}})
        for pattern in authorization.allowed_san_patterns
    ]
    not_health = [{"not_rule": {"url_path": {"path": {"prefix": HEALTH_PREFIX}}}}]
    rules = {
        "action": "DENY",
        "policies": {
            NO_IDENTITY_POLICY: {
                "permissions": not_health,
                "principals": [{"not_id": _principal({"prefix": authz.SPIFFE_SCHEME})}],
            },
            NOT_ALLOWED_POLICY: {
                "permissions": not_health,
                "principals": [{"not_id": {"or_ids": {"ids": allowed}}}],
            },
        },
    }
    return {
        "name": _RBAC_FILTER,
        "typed_config": typed("envoy.extensions.filters.http.rbac.v3.RBAC", rules=rules),
    }


#: The request header in which the inbound HCM states the verified client certificate's URI
#: SANs (``URI=...`` elements, ``;``-separated, a value quoted when it holds one of ``,;="``).
XFCC = "x-forwarded-client-cert"
#: An XFCC value naming at least one SPIFFE ID.
XFCC_SPIFFE = r'(?:.*[;,])?URI="?spiffe://.*'


def _denied_mapper(details: str, with_spiffe_id: bool) -> Json:
    # RBAC answers 403 (PERMISSION_DENIED for a gRPC call) whichever policy matched, and the
    # policy reaches nothing a mapper can filter on before the local reply is formed (Envoy
    # 1.40 records it in dynamic metadata only for allowed calls): the XFCC header the HCM
    # set tells the two reasons apart.
    status: Json = {
        "status_code_filter": {
            "comparison": {"op": "EQ", "value": {"default_value": 403, "runtime_key": "_"}}
        }
    }
    xfcc: Json = {
        "header_filter": {
            "header": {
                "name": XFCC,
                "string_match": {"safe_regex": {"regex": XFCC_SPIFFE}},
                "invert_match": not with_spiffe_id,
            }
        }
    }
    return {
        "filter": {"and_filter": {"filters": [status, xfcc]}},
        "body_format_override": {"text_format_source": {"inline_string": details}},
    }


def _local_replies(authorization: bool = False) -> Json:
    # Envoy turns its own replies to gRPC calls into trailers-only answers, the status mapped
    # from the HTTP code (404 -> UNIMPLEMENTED, 401 -> UNAUTHENTICATED) and the body as
    # grpc-message: here the no-route message names the path, as the Python plane's does.
    denied: list[Json] = []
    if authorization:
        denied = [
            _denied_mapper(authz.not_allowed_details("%DOWNSTREAM_PEER_URI_SAN%"), True),
            _denied_mapper(authz.no_identity_details(), False),
        ]
    return {
        "mappers": [
            *denied,
            {
                "filter": {"response_flag_filter": {"flags": ["NR"]}},
                "body_format_override": {
                    "text_format_source": {"inline_string": "proxy: no route for %REQ(:PATH)%"}
                },
            },
            {
                # no healthy endpoint, connection failure, retries exhausted on resets,
                # overflow: say which cluster, as the Python plane's UNAVAILABLE does
                "filter": {"response_flag_filter": {"flags": ["UH", "UF", "URX", "UO"]}},
                "body_format_override": {
                    "text_format_source": {
                        "inline_string": "%LOCAL_REPLY_BODY% (cluster %UPSTREAM_CLUSTER%)"
                    }
                },
            },
        ]
    }


def _hcm(
    name: str,
    keepalive: ServerKeepaliveConfig,
    max_concurrent_streams: int,
    tracing: TracingConfig,
    *,
    remote_address: bool,
    access_log: AccessLogConfig | None = None,
    authorization: AuthorizationConfig | None = None,
) -> Json:
    rbac = [] if authorization is None else [rbac_filter(authorization)]
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
        # no "server: envoy" of its own; an upstream's server header passes unchanged
        server_header_transformation="PASS_THROUGH",
        http_filters=[
            *rbac,
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
        local_reply_config=_local_replies(authorization is not None),
    )
    if authorization is not None:
        # the verified client certificate's URI SANs as a request header, for the local
        # reply's details (a caller's own header of that name is replaced; never forwarded)
        hcm["forward_client_cert_details"] = "SANITIZE_SET"
        hcm["set_current_client_cert_details"] = {"uri": True}
    if access_log is not None and access_log.enabled:
        hcm["access_log"] = [access_logger(name, access_log)]
    if remote_address:
        # The peer's address is appended to x-forwarded-for, as the Python inbound does.
        hcm["use_remote_address"] = True
    if tracing.otlp_endpoint is not None:
        hcm["tracing"] = _tracing(tracing)
    return hcm


#: The access log line (:data:`sidecar.access_log.FIELDS`) in Envoy's command operators;
#: ``direction`` is filled in per listener. A lone operator keeps its type in a json_format
#: (numbers stay numbers) and an absent value is written as null.
ACCESS_LOG_FORMAT: Mapping[str, str] = types.MappingProxyType(
    {
        "time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
        "direction": "",
        "method": "%REQ(:PATH)%",
        "grpc_status": "%GRPC_STATUS(SNAKE_STRING)%",
        "duration_ms": "%DURATION%",
        "upstream_host": "%UPSTREAM_HOST%",
        "request_bytes": "%BYTES_RECEIVED%",
        "response_bytes": "%BYTES_SENT%",
        "peer": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
    }
)


def access_logger(direction: str, config: AccessLogConfig) -> Json:
    """The HCM access logger writing :data:`ACCESS_LOG_FORMAT` lines to ``config.path``
    (Envoy's standard output for ``"-"``). Inbound health calls are not logged."""
    log_format = {"json_format": {**ACCESS_LOG_FORMAT, "direction": direction}}
    if config.path == STDOUT:
        logger: Json = {
            "name": "envoy.access_loggers.stdout",
            "typed_config": typed(
                "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                log_format=log_format,
            ),
        }
    else:
        logger = {
            "name": "envoy.access_loggers.file",
            "typed_config": typed(
                "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                path=config.path,
                log_format=log_format,
            ),
        }
    if direction == INBOUND:
        logger["filter"] = {
            "header_filter": {
                "header": {
                    "name": ":path",
                    "string_match": {"prefix": HEALTH_PREFIX},
                    "invert_match": True,
                }
            }
        }
    return logger


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


def outbound_listener(
    config: OutboundConfig, tracing: TracingConfig, access_log: AccessLogConfig | None = None
) -> Json:
    """The listener the local app calls."""
    hcm = _hcm(
        OUTBOUND,
        config.keepalive,
        config.max_concurrent_streams,
        tracing,
        remote_address=False,
        access_log=access_log,
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
    action["retry_policy"] = clusters.retry_policy(cluster.retry)
    return {"name": f"routes[{index}]", "match": _match(route.prefix), "route": action}


#: Headers Envoy adds that the Python plane does not: the mesh stays invisible to both ends.
#: (x-request-id is still generated, since Envoy's trace sampling keys on it, and only removed
#: on the way to the server; ``date`` Envoy always adds to responses: no setting removes it.)
_TRANSPARENT: Json = {"request_headers_to_remove": ["x-forwarded-proto", "x-request-id"]}


def outbound_routes(config: SidecarConfig, outbound: OutboundConfig) -> Json:
    """The outbound route configuration: the config's routes in order."""
    routes = [_outbound_route(i, r, config) for i, r in enumerate(outbound.routes)]
    return {
        "@type": ROUTE_CONFIGURATION,
        "name": OUTBOUND,
        "virtual_hosts": [{"name": OUTBOUND, "domains": ["*"], "routes": routes}],
        **_TRANSPARENT,
    }


# What Python's str.strip() removes, in ASCII (gRPC metadata values are printable ASCII).
_SPACE = r"[\t\n\v\f\r\x1c-\x1f ]"
_NOT_SPACE = r"[^\t\n\v\f\r\x1c-\x1f ]"


def _literal(text: str) -> str:
    """An RE2 pattern (also a Python ``re`` one) matching exactly ``text``: ASCII non-word
    characters escaped, control characters as ``\\xHH``."""
    out = []
    for char in text:
        if not char.isascii() or char.isalnum() or char == "_":
            out.append(char)
        elif char.isprintable():
            out.append("\\" + char)
        else:
            out.append(f"\\x{ord(char):02x}")
    return "".join(out)


def _any_case(word: str) -> str:
    return "".join(
        f"[{c.upper()}{c.lower()}]" if c.isascii() and c.isalpha() else _literal(c) for c in word
    )


def _token_prefix(scheme: str) -> str:
    # leading whitespace, the scheme word, one space, whitespace before the token
    return f"{_SPACE}*{_any_case(scheme)} {_SPACE}*" if scheme else f"{_SPACE}*"


def token_pattern(auth: AuthConfig, token: str) -> str:
    """The RE2 pattern a whole ``auth.header`` value matches when it presents ``token``."""
    return f"{_token_prefix(auth.scheme)}{_literal(token)}{_SPACE}*"


def shaped_pattern(auth: AuthConfig) -> str:
    """The RE2 pattern of a value with the right scheme and some token (any token)."""
    return f"{_token_prefix(auth.scheme)}{_NOT_SPACE}(?s:.*)"


def missing_details(auth: AuthConfig) -> str:
    """The details of a refused call without a well-formed credential (the Python plane's)."""
    if auth.header == "authorization" and auth.scheme.lower() == "bearer":
        return MISSING_TOKEN
    return f"missing token: expected metadata '{auth.header}'" + (
        f" with '{auth.scheme} <token>'" if auth.scheme else ""
    )


def _header_match(header: str, pattern: str) -> Json:
    return {
        "prefix": "/",
        "headers": [{"name": header, "string_match": {"safe_regex": {"regex": pattern}}}],
    }


def _app_route(match: Json) -> Json:
    return {"name": "app", "match": match, "route": _route_action(APP_CLUSTER, None)}


def _unauthenticated(name: str, match: Json, details: str) -> Json:
    return {
        "name": name,
        "match": match,
        "direct_response": {"status": 401, "body": {"inline_string": details}},
    }


def _auth_routes(auth: AuthConfig, tokens: Sequence[str]) -> list[Json]:
    routes = [
        _app_route(_header_match(auth.header, token_pattern(auth, token)))
        for token in sorted(set(tokens))
    ]
    routes.append(
        _unauthenticated(
            "invalid_token", _header_match(auth.header, shaped_pattern(auth)), INVALID_TOKEN
        )
    )
    routes.append(_unauthenticated("missing_token", {"prefix": "/"}, missing_details(auth)))
    return routes


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


def inbound_listener(
    config: InboundConfig, tracing: TracingConfig, access_log: AccessLogConfig | None = None
) -> Json:
    """The listener remote peers call (RBAC first when ``config.authorization`` is set)."""
    hcm = _hcm(
        INBOUND,
        config.keepalive,
        config.max_concurrent_streams,
        tracing,
        remote_address=True,
        access_log=access_log,
        authorization=config.authorization,
    )
    tls = None if config.tls is None else _downstream_tls(config.tls)
    return _listener(INBOUND, config.listen, hcm, tls)


def inbound_routes(config: InboundConfig, health: bool, tokens: Sequence[str]) -> Json:
    """Health calls to meshkit's health server (when ``health``, else to the app), never
    subject to auth; every other call to the app, when ``config.auth`` accepts it."""
    health_route: Json = {
        "name": "health",
        "match": {"prefix": HEALTH_PREFIX},
        "route": _route_action(HEALTH_CLUSTER if health else APP_CLUSTER, None),
    }
    if config.auth is None:
        rest = [_app_route({"prefix": "/"})]
    else:
        rest = _auth_routes(config.auth, tokens)
    return {
        "@type": ROUTE_CONFIGURATION,
        "name": INBOUND,
        "virtual_hosts": [{"name": INBOUND, "domains": ["*"], "routes": [health_route, *rest]}],
        "request_headers_to_remove": [*_TRANSPARENT["request_headers_to_remove"], XFCC],
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
