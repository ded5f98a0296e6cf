"""The Envoy translation at its edges: every resource is a message Envoy's own API accepts, the
exact dicts of the listeners and fixed clusters, exact error paths and messages, boundary
values (the 1 ms keepalive floor, the 10 s outlier sweep, the gateway-only code set), and the
static bootstrap of resources that leave optional proto3 fields out."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest

from sidecar.auth import MISSING_TOKEN
from sidecar.config import AuthConfig, SidecarConfig, parse_config
from sidecar.envoy import protos

# Reaches inside: the regexes the token and identity checks become are the unit under test.
from sidecar.envoy._translate_listeners import shaped_pattern, token_pattern
from sidecar.envoy.translate import (
    CLUSTER,
    LISTENER,
    ROUTE_CONFIGURATION,
    SYSTEM_CA_BUNDLE,
    Endpoint,
    PlaneInputs,
    Resources,
    static_bootstrap,
    translate,
    unsupported,
)

ADS = {"ads": {}, "resource_api_version": "V3"}
UNLIMITED = 2**32 - 1
T = "type.googleapis.com/"
UPSTREAM_TLS = T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
FILES = {
    "/certs/server.crt": b"SERVER CERT",
    "/certs/server.key": b"SERVER KEY",
    "/certs/ca.crt": b"CLIENT CA",
    "/certs/up-ca.crt": b"UPSTREAM CA",
    "/certs/client.crt": b"CLIENT CERT",
    "/certs/client.key": b"CLIENT KEY",
}
INBOUND_TLS = {
    "cert": "/certs/server.crt",
    "key": "/certs/server.key",
    "client_ca": "/certs/ca.crt",
}
UPSTREAM_TLS_FILES = {
    "ca": "/certs/up-ca.crt",
    "cert": "/certs/client.crt",
    "key": "/certs/client.key",
}


def config_of(raw: Mapping[str, Any]) -> SidecarConfig:
    return parse_config(raw, {}, check_files=False)


def one_cluster(**cluster: Any) -> SidecarConfig:
    """An outbound listener routing everything to cluster ``a``."""
    return config_of(
        {"outbound": {"routes": [{"prefix": "/", "cluster": "a"}]}, "clusters": {"a": cluster}}
    )


def run(config: SidecarConfig, **inputs: Any) -> Resources:
    inputs.setdefault("files", FILES)
    return translate(config, PlaneInputs(**inputs))


def every_resource(resources: Resources) -> list[Mapping[str, Any]]:
    groups = ("listeners", "routes", "clusters", "endpoints", "secrets")
    return [r for g in groups for r in getattr(resources, g).values()]


def static_cluster(name: str, host: str, port: int) -> dict[str, Any]:
    """A fixed-address cluster as Envoy must receive it (the app, meshkit's health server)."""
    cluster: dict[str, Any] = {
        "@type": CLUSTER,
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": UNLIMITED,
                    "max_pending_requests": UNLIMITED,
                    "max_requests": UNLIMITED,
                    "max_retries": UNLIMITED,
                }
            ]
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }
    return cluster


# --------------------------------------------------------------------------- Envoy's own API

EVERYTHING: dict[str, Any] = {
    "outbound": {
        "listen": "127.0.0.1:15001",
        "routes": [
            {"prefix": "/pkg.Svc/Get", "cluster": "echo", "timeout": "2s"},
            {"prefix": "/", "cluster": "named"},
        ],
    },
    "inbound": {
        "listen": "[::]:15006",
        "app": "localhost:8080",
        "tls": INBOUND_TLS,
        "auth": {"tokens_file": "/t", "header": "x-token", "scheme": "Token"},
    },
    "clusters": {
        "echo": {
            "target": "dns:///echo.example:50051",
            "lb_policy": "weighted_round_robin",
            "health_check": {"service": "echo.Echo"},
            "outlier_detection": {"failure_codes": ["UNAVAILABLE", "DEADLINE_EXCEEDED"]},
            "retry": {"retryable_status_codes": ["UNAVAILABLE", "CANCELLED"]},
            "tls": UPSTREAM_TLS_FILES,
        },
        "named": {
            "target": "static:///10.0.0.1:1,10.0.0.2:1",
            "tls": {"server_name": "api.example"},
        },
    },
    "telemetry": {"tracing": {"otlp_endpoint": "https://collector.example:4318"}},
}


@pytest.mark.parametrize(
    "raw",
    [
        EVERYTHING,
        {**EVERYTHING, "telemetry": {"tracing": {"otlp_endpoint": "10.1.2.3:4317"}}},
        {"inbound": {"app": "127.0.0.1:8080"}},
    ],
    ids=["everything", "remote-ip-collector", "inbound-only"],
)
def test_every_resource_is_a_message_envoy_accepts(raw: Mapping[str, Any]) -> None:
    resources = run(
        config_of(raw),
        endpoints={"echo": [Endpoint("10.0.0.1", 1, 2), Endpoint("/run/a.sock", 0)]},
        health_address=("127.0.0.1", 15020),
        tokens=("tok-1", "tok-2"),
    )
    # Envoy's descriptors refuse an unknown field, enum value or "@type" (nested ones too).
    for resource in every_resource(resources):
        protos.from_json(resource)
    bootstrap = static_bootstrap(resources)
    protos.from_json({"@type": T + "envoy.config.bootstrap.v3.Bootstrap", **bootstrap})


# --------------------------------------------------------------------------- listeners, routes


def _hcm(name: str, streams: int, keepalive: tuple[str, str]) -> dict[str, Any]:
    return {
        "@type": T + "envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "HTTP2",
        "rds": {"route_config_name": name, "config_source": ADS},
        "http2_protocol_options": {
            "max_concurrent_streams": streams,
            "connection_keepalive": {"interval": keepalive[0], "timeout": keepalive[1]},
        },
        "stream_idle_timeout": "0s",
        "server_header_transformation": "PASS_THROUGH",
        "http_filters": [
            {
                "name": "envoy.filters.http.grpc_stats",
                "typed_config": {
                    "@type": T + "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
                    "emit_filter_state": True,
                    "stats_for_all_methods": True,
                    "enable_upstream_stats": True,
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": T + "envoy.extensions.filters.http.router.v3.Router",
                    "suppress_envoy_headers": True,
                },
            },
        ],
        "local_reply_config": {
            "mappers": [
                {
                    "filter": {"response_flag_filter": {"flags": ["NR"]}},
                    "body_format_override": {
                        "text_format_source": {"inline_string": "proxy: no route for %REQ(:PATH)%"}
                    },
                },
                {
                    "filter": {"response_flag_filter": {"flags": ["UH", "UF", "URX", "UO"]}},
                    "body_format_override": {
                        "text_format_source": {
                            "inline_string": "%LOCAL_REPLY_BODY% (cluster %UPSTREAM_CLUSTER%)"
                        }
                    },
                },
            ]
        },
    }


TWO_LISTENERS: dict[str, Any] = {
    "outbound": {
        "listen": "127.0.0.1:15001",
        "max_concurrent_streams": 55,
        "routes": [{"prefix": "/pkg.Svc/", "cluster": "a"}, {"prefix": "/", "cluster": "a"}],
    },
    "inbound": {
        "app": "127.0.0.1:8080",
        "max_concurrent_streams": 66,
        "keepalive": {"time": "1m", "timeout": "3s"},
        "tls": {
            "cert": "/certs/server.crt",
            "key": "/certs/server.key",
            "require_client_cert": False,
        },
    },
    "clusters": {"a": {"target": "static:///127.0.0.1:1"}},
}


def test_the_listeners_envoy_receives() -> None:
    resources = run(config_of(TWO_LISTENERS))
    outbound_hcm = _hcm("outbound", 55, ("300s", "20s"))
    assert resources.listeners["outbound"] == {
        "@type": LISTENER,
        "name": "outbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15001}},
        "traffic_direction": "OUTBOUND",
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": outbound_hcm,
                    }
                ]
            }
        ],
    }
    # the inbound one adds the peer's address to x-forwarded-for, and serves TLS
    inbound_hcm = {**_hcm("inbound", 66, ("60s", "3s")), "use_remote_address": True}
    assert resources.listeners["inbound"] == {
        "@type": LISTENER,
        "name": "inbound",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
        "traffic_direction": "INBOUND",
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": inbound_hcm,
                    }
                ],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": T
                        + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "common_tls_context": {
                            "alpn_protocols": ["h2"],
                            "tls_certificate_sds_secret_configs": [
                                {"name": "inbound|cert", "sds_config": ADS}
                            ],
                        },
                        "require_client_certificate": False,
                    },
                },
            }
        ],
    }


def test_the_outbound_route_configuration_envoy_receives() -> None:
    route = {
        "cluster": "outbound|a",
        "timeout": "0s",
        "max_stream_duration": {"grpc_timeout_header_max": "0s"},
        "host_rewrite_literal": "127.0.0.1:1",
        "retry_policy": {
            "retry_on": "connect-failure,refused-stream,reset-before-request",
            "num_retries": 2,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {
                        "@type": T
                        + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                    },
                }
            ],
            "host_selection_retry_max_attempts": 5,
        },
    }
    assert run(config_of(TWO_LISTENERS)).routes["outbound"] == {
        "@type": ROUTE_CONFIGURATION,
        "name": "outbound",
        "virtual_hosts": [
            {
                "name": "outbound",
                "domains": ["*"],
                "routes": [
                    {"name": "routes[0]", "match": {"prefix": "/pkg.Svc/"}, "route": route},
                    {"name": "routes[1]", "match": {"prefix": "/"}, "route": route},
                ],
            }
        ],
        "request_headers_to_remove": ["x-forwarded-proto", "x-request-id"],
    }


def test_the_inbound_route_configuration_names_its_virtual_host() -> None:
    config = config_of({"inbound": {"app": "127.0.0.1:8080"}})
    assert run(config).routes["inbound"]["virtual_hosts"][0]["name"] == "inbound"


def test_the_app_and_health_clusters_envoy_receives() -> None:
    resources = run(config_of(TWO_LISTENERS), health_address=("127.0.0.1", 15020))
    assert resources.clusters["inbound|app"] == static_cluster("inbound|app", "127.0.0.1", 8080)
    assert resources.clusters["meshkit|health"] == static_cluster(
        "meshkit|health", "127.0.0.1", 15020
    )


def test_the_tracing_envoy_receives() -> None:
    config = config_of(
        {
            **TWO_LISTENERS,
            "telemetry": {"tracing": {"otlp_endpoint": "127.0.0.1:4317", "sample_ratio": 0.5}},
        }
    )
    resources = run(config)
    expected = {
        "random_sampling": {"value": 50.0},
        "spawn_upstream_span": True,
        "custom_tags": [
            {"tag": "rpc.system", "literal": {"value": "grpc"}},
            {"tag": "rpc.grpc.status_code", "value": "%GRPC_STATUS_NUMBER%"},
            {"tag": "server.address", "value": "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%"},
            {"tag": "server.port", "value": "%DOWNSTREAM_LOCAL_PORT%"},
            {"tag": "network.peer.address", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
            {"tag": "network.peer.port", "value": "%DOWNSTREAM_REMOTE_PORT%"},
        ],
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": T + "envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": "meshkit|otlp"},
                    "timeout": "5s",
                },
                "service_name": "meshkit-sidecar",
            },
        },
    }
    for name in ("outbound", "inbound"):
        hcm = resources.listeners[name]["filter_chains"][0]["filters"][0]["typed_config"]
        assert hcm["tracing"] == expected


# --------------------------------------------------------------------------- the collector


def _collector_tls(host: str, san_type: str, sni: bool) -> dict[str, Any]:
    context: dict[str, Any] = {
        "@type": UPSTREAM_TLS,
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "validation_context": {
                "trusted_ca": {"filename": SYSTEM_CA_BUNDLE},
                "match_typed_subject_alt_names": [
                    {"san_type": san_type, "matcher": {"exact": host}}
                ],
            },
        },
    }
    if sni:
        context["sni"] = host
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def otlp(endpoint: str) -> dict[str, Any]:
    config = config_of(
        {
            "inbound": {"app": "127.0.0.1:8080"},
            "telemetry": {"tracing": {"otlp_endpoint": endpoint}},
        }
    )
    cluster: dict[str, Any] = run(config).clusters["meshkit|otlp"]
    return cluster


def test_a_remote_collector_by_name_is_checked_against_its_name() -> None:
    expected = static_cluster("meshkit|otlp", "collector.example", 4318)
    expected["type"] = "STRICT_DNS"
    expected["dns_lookup_family"] = "V4_PREFERRED"
    expected["transport_socket"] = _collector_tls("collector.example", "DNS", sni=True)
    assert otlp("https://collector.example:4318") == expected


def test_a_remote_collector_by_ip_is_checked_against_its_ip_without_sni() -> None:
    expected = static_cluster("meshkit|otlp", "10.1.2.3", 4317)
    expected["transport_socket"] = _collector_tls("10.1.2.3", "IP_ADDRESS", sni=False)
    assert otlp("10.1.2.3:4317") == expected


@pytest.mark.parametrize(
    "endpoint",
    ["https://localhost:4317", "https://127.0.0.1:4317/v1/traces?next=http://127.0.0.1:1"],
)
def test_https_means_tls_even_to_a_loopback_collector(endpoint: str) -> None:
    cluster = otlp(endpoint)
    host = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert cluster["transport_socket"]["typed_config"]["@type"] == UPSTREAM_TLS
    assert host["socket_address"]["port_value"] == 4317


# --------------------------------------------------------------------------- clusters


def test_outlier_detection_of_exactly_the_gateway_codes_uses_the_gateway_counter() -> None:
    config = one_cluster(
        target="static:///127.0.0.1:1",
        outlier_detection={
            "consecutive_failures": 1,
            "base_ejection_time": "20s",
            "max_ejection_time": "20s",
            "max_ejection_percent": 100,
            "failure_codes": ["DEADLINE_EXCEEDED", "UNAVAILABLE"],
        },
    )
    assert run(config).clusters["outbound|a"]["outlier_detection"] == {
        "consecutive_5xx": 1,
        "enforcing_consecutive_5xx": 0,
        "consecutive_gateway_failure": 1,
        "enforcing_consecutive_gateway_failure": 100,
        "enforcing_success_rate": 0,
        "interval": "10s",  # Envoy's sweep, never longer
        "base_ejection_time": "20s",
        "max_ejection_time": "20s",
        "max_ejection_percent": 100,
    }


@pytest.mark.parametrize(("base", "interval"), [("4s", "4s"), ("10s", "10s"), ("10.5s", "10s")])
def test_the_outlier_sweep_is_at_most_ten_seconds(base: str, interval: str) -> None:
    config = one_cluster(
        target="static:///127.0.0.1:1", outlier_detection={"base_ejection_time": base}
    )
    assert run(config).clusters["outbound|a"]["outlier_detection"]["interval"] == interval


def test_a_server_name_is_what_the_certificate_and_sni_must_carry() -> None:
    config = one_cluster(target="dns:///echo.example:443", tls={"server_name": "api.example"})
    context = run(config).clusters["outbound|a"]["transport_socket"]["typed_config"]
    assert context["sni"] == "api.example"
    assert context["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "api.example"}}
    ]


def test_a_bracketed_ipv6_target_without_port_is_an_ip_san() -> None:
    config = one_cluster(target="dns:///[::1]", tls={})
    context = run(config).clusters["outbound|a"]["transport_socket"]["typed_config"]
    assert "sni" not in context
    assert context["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "::1"}}
    ]


def test_host_names_are_dropped_wherever_they_sort() -> None:
    config = one_cluster(target="static:///127.0.0.1:1")
    endpoints = [Endpoint("a.example", 1), Endpoint("fd00::1", 2), Endpoint("b.example", 3)]
    (locality,) = run(config, endpoints={"a": endpoints}).endpoints["outbound|a"]["endpoints"]
    assert locality["lb_endpoints"] == [
        {"endpoint": {"address": {"socket_address": {"address": "fd00::1", "port_value": 2}}}}
    ]


# --------------------------------------------------------------------------- missing files

MISSING = [
    ("/certs/up-ca.crt", "clusters.echo.tls.ca"),
    ("/certs/client.crt", "clusters.echo.tls.cert"),
    ("/certs/client.key", "clusters.echo.tls.key"),
    ("/certs/server.crt", "inbound.tls.cert"),
    ("/certs/server.key", "inbound.tls.key"),
    ("/certs/ca.crt", "inbound.tls.client_ca"),
]


@pytest.mark.parametrize(("path", "field"), MISSING)
def test_a_missing_file_is_named_by_its_field(path: str, field: str) -> None:
    files = {k: v for k, v in FILES.items() if k != path}
    with pytest.raises(ValueError) as caught:
        run(config_of(EVERYTHING), files=files)
    assert str(caught.value) == f"{field}: no contents given for {path}"


# --------------------------------------------------------------------------- inbound auth

PYTHON_AUTH = AuthConfig(tokens_file="/t", header="x-token", scheme="Tok^en")


def test_every_auth_route_matches_every_path_on_the_configured_header() -> None:
    config = config_of(
        {
            "inbound": {
                "app": "127.0.0.1:8080",
                "auth": {"tokens_file": "/t", "header": "x-token", "scheme": "Token"},
            }
        }
    )
    routes = run(config, tokens=("tok",)).routes["inbound"]["virtual_hosts"][0]["routes"]
    app, invalid, missing = routes[1:]
    for route in (app, invalid):
        assert route["match"]["prefix"] == "/"
        assert [h["name"] for h in route["match"]["headers"]] == ["x-token"]
    assert missing["match"] == {"prefix": "/"}


def test_scheme_punctuation_is_matched_literally() -> None:
    # "^" inside a character class would negate it: "TokXen" must not pass for "Tok^en".
    for pattern in (token_pattern(PYTHON_AUTH, "tok"), shaped_pattern(PYTHON_AUTH)):
        assert re.fullmatch(pattern, "tok^EN tok")
        assert not re.fullmatch(pattern, "TokXen tok")
        assert not re.fullmatch(pattern, "Tok-en tok")


def test_tokens_with_control_characters_match_only_themselves() -> None:
    auth = AuthConfig(tokens_file="/t")
    for token in ("a\x7fb", "tab\there", "nul\x00end"):
        pattern = token_pattern(auth, token)
        assert re.fullmatch(pattern, f"Bearer {token}")
        assert not re.fullmatch(pattern, f"Bearer {token.replace(token[1], '!')}")


def test_missing_details_of_the_default_header_and_scheme_are_the_python_planes() -> None:
    config = config_of({"inbound": {"app": "127.0.0.1:8080", "auth": {"tokens_file": "/t"}}})
    missing = run(config, tokens=()).routes["inbound"]["virtual_hosts"][0]["routes"][-1]
    assert missing["direct_response"]["body"]["inline_string"] == MISSING_TOKEN


# --------------------------------------------------------------------------- unsupported


def test_unsupported_settings_say_what_envoy_does_instead() -> None:
    config = config_of(
        {
            "inbound": {
                "app": "127.0.0.1:8080",
                "keepalive": {"min_ping_interval": "5m", "time": "0.9ms"},
            },
            "clusters": {
                "a": {
                    "target": "static:///localhost:1",
                    "lb_policy": "pick_first",
                    "retry": {
                        "retryable_status_codes": ["ABORTED", "UNAVAILABLE"],
                        "backoff_multiplier": 1.5,
                    },
                    "outlier_detection": {"failure_codes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]},
                    "keepalive": {"timeout": "0.5ms"},
                },
                "b": {"target": "static:///10.0.0.1:1,10.0.0.2:1", "tls": {}},
            },
        }
    )
    assert [str(e) for e in unsupported(config)] == [
        "inbound.keepalive.min_ping_interval: Envoy accepts client pings at any rate:"
        " no minimum interval to enforce",
        "inbound.keepalive.time: Envoy takes at least 1ms (got 0.0009s)",
        "clusters.a.lb_policy: Envoy has round_robin and weighted_round_robin only"
        " (got pick_first)",
        "clusters.a.retry.retryable_status_codes[0]: Envoy retries only on CANCELLED,"
        " DEADLINE_EXCEEDED, INTERNAL, RESOURCE_EXHAUSTED, UNAVAILABLE (got ABORTED)",
        "clusters.a.retry.backoff_multiplier: Envoy's back-off always doubles (got 1.5)",
        "clusters.a.outlier_detection.failure_codes[1]: Envoy ejects on DATA_LOSS,"
        " DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, UNIMPLEMENTED, UNKNOWN only"
        " (got RESOURCE_EXHAUSTED)",
        "clusters.a.keepalive.timeout: Envoy takes at least 1ms (got 0.0005s)",
        "clusters.b.tls.server_name: required for Envoy with a target of several addresses:"
        " Envoy checks one name for every endpoint",
    ]


def test_a_keepalive_timeout_of_exactly_one_millisecond_is_supported() -> None:
    assert (
        unsupported(one_cluster(target="static:///127.0.0.1:1", keepalive={"timeout": "1ms"})) == []
    )
    listener = config_of(
        {
            "outbound": {
                "listen": "127.0.0.1:0",
                "routes": [{"prefix": "/", "cluster": "a"}],
                "keepalive": {"timeout": "1ms", "time": "1ms"},
            },
            "clusters": {"a": {"target": "static:///127.0.0.1:1"}},
        }
    )
    assert unsupported(listener) == []
    slower = config_of(
        {
            "outbound": {
                "listen": "127.0.0.1:0",
                "routes": [{"prefix": "/", "cluster": "a"}],
                "keepalive": {"timeout": "0.999ms"},
            },
            "clusters": {"a": {"target": "static:///127.0.0.1:1"}},
        }
    )
    assert [e.path for e in unsupported(slower)] == ["outbound.keepalive.timeout"]


# --------------------------------------------------------------------------- static bootstrap


def test_static_bootstrap_defaults() -> None:
    boot = static_bootstrap(run(config_of(TWO_LISTENERS)))
    assert boot["node"] == {"id": "meshkit-static", "cluster": "meshkit-static"}
    assert boot["admin"] == {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
    }


def test_static_bootstrap_takes_resources_that_leave_optional_fields_out() -> None:
    # proto3 JSON may omit any field: no filter chains, no filters, no typed_config, a route
    # configuration given inline, a resource without "@type".
    inline_routes = {"name": "inline", "virtual_hosts": []}
    listeners: dict[str, dict[str, Any]] = {
        "bare": {"@type": LISTENER, "name": "bare"},
        "chain": {"@type": LISTENER, "name": "chain", "filter_chains": [{}]},
        "filter": {"name": "filter", "filter_chains": [{"filters": [{"name": "f"}]}]},
        "inline": {
            "@type": LISTENER,
            "name": "inline",
            "filter_chains": [{"filters": [{"typed_config": {"route_config": inline_routes}}]}],
        },
    }
    resources = Resources(listeners=listeners, routes={}, clusters={}, endpoints={}, secrets={})
    static = static_bootstrap(resources)["static_resources"]
    assert static == {
        "listeners": [
            {"name": "bare"},
            {"name": "chain", "filter_chains": [{}]},
            {"name": "filter", "filter_chains": [{"filters": [{"name": "f"}]}]},
            {
                "name": "inline",
                "filter_chains": [{"filters": [{"typed_config": {"route_config": inline_routes}}]}],
            },
        ],
        "clusters": [],
    }


def test_resources_repr_names_every_resource_and_nothing_else() -> None:
    resources = run(config_of(TWO_LISTENERS))
    assert repr(resources) == (
        "Resources(listeners=['inbound', 'outbound'], routes=['inbound', 'outbound'],"
        " clusters=['inbound|app', 'outbound|a'], endpoints=['outbound|a'],"
        " secrets=['inbound|cert'])"
    )
