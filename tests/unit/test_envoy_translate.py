"""meshkit config -> Envoy resources: each mapping checked on the dicts, names consistent."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.access_log import FIELDS
from sidecar.auth import INVALID_TOKEN, MISSING_TOKEN, Metadata
from sidecar.config import SidecarConfig, parse_config
from sidecar.envoy import protos

# Reaches inside: durations are spelt as Envoy expects them in the expected resources.
from sidecar.envoy._translate_common import duration
from sidecar.envoy.translate import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    ROUTE_CONFIGURATION,
    RUNTIME,
    SECRET,
    SYSTEM_CA_BUNDLE,
    Endpoint,
    PlaneInputs,
    Resources,
    static_bootstrap,
    translate,
    unsupported,
)
from sidecar.inbound import authenticator

ECHO = "static:///127.0.0.1:50051"
FILES = {
    "/certs/server.crt": b"SERVER CERT",
    "/certs/server.key": b"SERVER KEY",
    "/certs/ca.crt": b"CLIENT CA",
    "/certs/up-ca.crt": b"UPSTREAM CA",
    "/certs/client.crt": b"CLIENT CERT",
    "/certs/client.key": b"CLIENT KEY",
}
TOKENS = ("s3cret-one", "s3cret-two")


def config_of(raw: Mapping[str, Any]) -> SidecarConfig:
    return parse_config(raw, {}, check_files=False)


def outbound(*routes: dict[str, Any], **clusters: dict[str, Any]) -> SidecarConfig:
    return config_of(
        {"outbound": {"listen": "127.0.0.1:15001", "routes": list(routes)}, "clusters": clusters}
    )


def run(config: SidecarConfig, **inputs: Any) -> Resources:
    inputs.setdefault("files", FILES)
    inputs.setdefault("tokens", TOKENS)
    return translate(config, PlaneInputs(**inputs))


def inbound(**section: Any) -> SidecarConfig:
    return config_of({"inbound": {"listen": "0.0.0.0:15006", "app": "127.0.0.1:8080", **section}})


def hcm(resources: Resources, listener: str) -> dict[str, Any]:
    chain = resources.listeners[listener]["filter_chains"][0]
    config: dict[str, Any] = chain["filters"][0]["typed_config"]
    return config


def routes_of(resources: Resources, name: str) -> list[dict[str, Any]]:
    hosts = resources.routes[name]["virtual_hosts"]
    assert len(hosts) == 1 and hosts[0]["domains"] == ["*"]
    found: list[dict[str, Any]] = hosts[0]["routes"]
    return found


def walk(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a JSON-like value, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def dump(resources: Resources) -> str:
    """Every resource as JSON text, in the order given (key order included)."""
    groups = ("listeners", "routes", "clusters", "endpoints", "secrets")
    return json.dumps([dict(getattr(resources, g)) for g in groups])


def assert_consistent(resources: Resources) -> None:
    """Every name a resource refers to exists, as Envoy needs for a snapshot."""
    for name, listener in resources.listeners.items():
        assert listener["@type"] == LISTENER and listener["name"] == name
        for key, value in walk(listener):
            if key == "rds":
                assert value["route_config_name"] in resources.routes
            if key == "cluster_name":
                assert value in resources.clusters
            if key.endswith("sds_secret_config") or key.endswith("sds_secret_configs"):
                for ref in value if isinstance(value, list) else [value]:
                    assert ref["name"] in resources.secrets
    for name, routes in resources.routes.items():
        assert routes["@type"] == ROUTE_CONFIGURATION and routes["name"] == name
        for key, value in walk(routes):
            if key == "cluster":
                assert value in resources.clusters, value
    for name, cluster in resources.clusters.items():
        assert cluster["@type"] == CLUSTER and cluster["name"] == name
        if cluster["type"] == "EDS":
            assert resources.endpoints[name]["cluster_name"] == name
        else:
            assert cluster["load_assignment"]["cluster_name"] == name
        for key, value in walk(cluster):
            if key.endswith("sds_secret_config") or key.endswith("sds_secret_configs"):
                for ref in value if isinstance(value, list) else [value]:
                    assert ref["name"] in resources.secrets
    for name, assignment in resources.endpoints.items():
        assert assignment["@type"] == CLUSTER_LOAD_ASSIGNMENT
        assert resources.clusters[name]["type"] == "EDS"
    for name, secret in resources.secrets.items():
        assert secret["@type"] == SECRET and secret["name"] == name


RICH: dict[str, Any] = {
    "outbound": {
        "listen": "127.0.0.1:15001",
        "max_concurrent_streams": 77,
        "keepalive": {"time": "45s", "timeout": "5s"},
        "routes": [
            {"prefix": "/pkg.Svc/Get", "cluster": "echo", "timeout": "2s"},
            {"prefix": "/pkg.Svc/", "cluster": "echo", "kind": "unary_unary"},
            {"prefix": "/", "cluster": "other"},
        ],
    },
    "inbound": {
        "listen": "0.0.0.0:15006",
        "app": "127.0.0.1:8080",
        "tls": {
            "cert": "/certs/server.crt",
            "key": "/certs/server.key",
            "client_ca": "/certs/ca.crt",
        },
        "auth": {"tokens_file": "/certs/tokens"},
    },
    "clusters": {
        "echo": {
            "target": "dns:///echo.default.svc:50051",
            "lb_policy": "weighted_round_robin",
            "timeout": "3s",
            "connect_timeout": "250ms",
            "keepalive": {"time": "30s", "timeout": "7s"},
            "health_check": {"service": "echo.Echo"},
            "outlier_detection": {
                "consecutive_failures": 4,
                "base_ejection_time": "20s",
                "max_ejection_time": "2m",
                "max_ejection_percent": 30,
            },
            "retry": {
                "max_attempts": 4,
                "retryable_status_codes": ["UNAVAILABLE", "INTERNAL"],
                "initial_backoff": "40ms",
                "max_backoff": "800ms",
            },
            "tls": {
                "ca": "/certs/up-ca.crt",
                "cert": "/certs/client.crt",
                "key": "/certs/client.key",
            },
        },
        "other": {"target": ECHO},
    },
    "telemetry": {
        "tracing": {
            "otlp_endpoint": "127.0.0.1:4317",
            "sample_ratio": 0.25,
            "service_name": "svc-a",
        }
    },
}


def rich() -> Resources:
    return run(
        config_of(RICH),
        endpoints={
            "echo": [Endpoint("10.0.0.2", 50051, 3), Endpoint("10.0.0.1", 50051, 1)],
            "other": [Endpoint("127.0.0.1", 50051)],
        },
        health_address=("127.0.0.1", 15020),
    )


# --------------------------------------------------------------------------- names, stability


def test_names_are_derived_from_the_config() -> None:
    resources = rich()
    assert list(resources.listeners) == ["inbound", "outbound"]
    assert list(resources.routes) == ["inbound", "outbound"]
    assert list(resources.clusters) == [
        "inbound|app",
        "meshkit|health",
        "meshkit|otlp",
        "outbound|echo",
        "outbound|other",
    ]
    assert list(resources.endpoints) == ["outbound|echo", "outbound|other"]
    assert list(resources.secrets) == [
        "cluster|echo|ca",
        "cluster|echo|cert",
        "inbound|cert",
        "inbound|client_ca",
    ]
    assert_consistent(resources)


@pytest.mark.parametrize(
    "raw",
    [
        RICH,
        {
            "outbound": {"routes": [{"prefix": "/", "cluster": "a"}]},
            "clusters": {"a": {"target": ECHO}},
        },
        {"inbound": {"app": "127.0.0.1:8080"}},
        {
            "inbound": {"app": "localhost:8080", "auth": {"tokens_file": "/t"}},
            "telemetry": {"tracing": {"otlp_endpoint": "https://collector.example"}},
        },
    ],
)
def test_every_reference_resolves(raw: Mapping[str, Any]) -> None:
    for health in (None, ("127.0.0.1", 15020)):
        assert_consistent(run(config_of(raw), health_address=health))


def test_same_input_gives_identical_output_whatever_the_order() -> None:
    config = config_of(RICH)
    shuffled = dict(reversed(list(RICH["clusters"].items())))
    reordered = config_of({**RICH, "clusters": shuffled})
    a = run(config, endpoints={"echo": [Endpoint("10.0.0.2", 1), Endpoint("10.0.0.1", 1)]})
    b = run(reordered, endpoints={"echo": [Endpoint("10.0.0.1", 1), Endpoint("10.0.0.2", 1)]})
    assert dump(a) == dump(b)
    assert dump(a) == dump(
        run(config, endpoints={"echo": [Endpoint("10.0.0.2", 1), Endpoint("10.0.0.1", 1)]})
    )


# --------------------------------------------------------------------------- outbound


def test_outbound_listener_is_http2_with_rds_over_ads_and_keepalive() -> None:
    resources = rich()
    listener = resources.listeners["outbound"]
    assert listener["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 15001}}
    assert listener["traffic_direction"] == "OUTBOUND"
    manager = hcm(resources, "outbound")
    assert manager["stat_prefix"] == "outbound"
    assert manager["codec_type"] == "HTTP2"
    assert manager["rds"] == {
        "route_config_name": "outbound",
        "config_source": {"ads": {}, "resource_api_version": "V3"},
    }
    assert manager["http2_protocol_options"] == {
        "max_concurrent_streams": 77,
        "connection_keepalive": {"interval": "45s", "timeout": "5s"},
    }
    assert manager["stream_idle_timeout"] == "0s"
    assert "use_remote_address" not in manager


def test_route_shapes_follow_the_router_rule_in_order() -> None:
    routes = routes_of(rich(), "outbound")
    assert [r["match"] for r in routes] == [
        {"path": "/pkg.Svc/Get"},  # a full method path is that method only
        {"prefix": "/pkg.Svc/"},
        {"prefix": "/"},
    ]
    assert [r["route"]["cluster"] for r in routes] == [
        "outbound|echo",
        "outbound|echo",
        "outbound|other",
    ]
    assert all(r["route"]["timeout"] == "0s" for r in routes)  # no 15 s Envoy default


def test_default_deadline_applies_only_without_a_caller_deadline() -> None:
    get, service, catch_all = routes_of(rich(), "outbound")
    # the route's timeout wins over the cluster's; a caller's grpc-timeout wins over both
    assert get["route"]["max_stream_duration"] == {
        "max_stream_duration": "2s",
        "grpc_timeout_header_max": "0s",
    }
    assert service["route"]["max_stream_duration"]["max_stream_duration"] == "3s"
    # no default anywhere: the caller's deadline only, uncapped
    assert catch_all["route"]["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}


def test_durations_are_proto3_json() -> None:
    assert [duration(s) for s in (5, 0.25, 0.05, 1e-9, 90.5, 86400)] == [
        "5s",
        "0.25s",
        "0.05s",
        "0.000000001s",
        "90.5s",
        "86400s",
    ]


def test_upstream_authority_is_the_service_name_or_server_name() -> None:
    routes = routes_of(rich(), "outbound")
    assert routes[0]["route"]["host_rewrite_literal"] == "echo.default.svc:50051"
    assert routes[2]["route"]["host_rewrite_literal"] == "127.0.0.1:50051"
    named = outbound(
        {"prefix": "/", "cluster": "a"},
        a={"target": "static:///10.0.0.1:1,10.0.0.2:1", "tls": {"server_name": "api.example"}},
    )
    assert routes_of(run(named), "outbound")[0]["route"]["host_rewrite_literal"] == "api.example"
    several = outbound(
        {"prefix": "/", "cluster": "a"}, a={"target": "static:///10.0.0.1:1,10.0.0.2:1"}
    )
    assert "host_rewrite_literal" not in routes_of(run(several), "outbound")[0]["route"]


def test_no_route_is_unimplemented_naming_the_path() -> None:
    resources = rich()
    for name in ("outbound", "inbound"):
        mapper = hcm(resources, name)["local_reply_config"]["mappers"][0]
        assert mapper["filter"] == {"response_flag_filter": {"flags": ["NR"]}}
        assert (
            "%REQ(:PATH)%" in mapper["body_format_override"]["text_format_source"]["inline_string"]
        )
        assert "status_code" not in mapper  # Envoy's 404 is gRPC UNIMPLEMENTED already


def test_retry_policy_maps_codes_attempts_backoff_and_budget() -> None:
    resources = rich()
    policy = routes_of(resources, "outbound")[0]["route"]["retry_policy"]
    assert policy["retry_on"] == (
        "connect-failure,internal,refused-stream,reset,reset-before-request,unavailable"
    )
    assert policy["num_retries"] == 3
    assert policy["retry_back_off"] == {"base_interval": "0.04s", "max_interval": "0.8s"}
    breakers = resources.clusters["outbound|echo"]["circuit_breakers"]["thresholds"]
    assert breakers[0]["retry_budget"] == {
        "budget_percent": {"value": 20.0},
        "min_retry_concurrency": 3,
    }
    assert "max_retries" not in breakers[0]  # the budget bounds them (Envoy ignores it then)
    # no policy: only the transparent retries of calls that never reached the upstream,
    # with no bound on concurrent retries (Envoy's default of 3 would fail some under load)
    assert routes_of(resources, "outbound")[2]["route"]["retry_policy"] == {
        "retry_on": "connect-failure,refused-stream,reset-before-request",
        "num_retries": 2,
        **AVOID_PREVIOUS_HOSTS,
    }
    other = resources.clusters["outbound|other"]["circuit_breakers"]["thresholds"][0]
    assert "retry_budget" not in other
    assert other["max_retries"] == 2**32 - 1


AVOID_PREVIOUS_HOSTS = {
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": 5,
}


def test_every_retry_avoids_the_hosts_already_tried() -> None:
    resources = rich()
    for route in routes_of(resources, "outbound"):
        policy = route["route"]["retry_policy"]
        assert {k: policy[k] for k in AVOID_PREVIOUS_HOSTS} == AVOID_PREVIOUS_HOSTS


@pytest.mark.parametrize(
    ("code", "condition"),
    [
        ("RESOURCE_EXHAUSTED", "resource-exhausted"),
        ("CANCELLED", "cancelled"),
        ("DEADLINE_EXCEEDED", "deadline-exceeded"),
        ("INTERNAL", "internal"),
    ],
)
def test_each_retryable_code_has_its_envoy_condition(code: str, condition: str) -> None:
    config = outbound(
        {"prefix": "/", "cluster": "a"},
        a={"target": ECHO, "retry": {"retryable_status_codes": [code]}},
    )
    policy = routes_of(run(config), "outbound")[0]["route"]["retry_policy"]
    transparent = {"connect-failure", "refused-stream", "reset-before-request"}
    assert set(policy["retry_on"].split(",")) == {condition, *transparent}
    assert policy["num_retries"] == 2  # max_attempts 3 by default


def test_a_retry_with_no_envoy_code_is_left_out() -> None:
    config = outbound(
        {"prefix": "/", "cluster": "a"},
        a={"target": ECHO, "retry": {"retryable_status_codes": ["ABORTED"]}},
    )
    policy = routes_of(run(config), "outbound")[0]["route"]["retry_policy"]
    assert policy["retry_on"] == "connect-failure,refused-stream,reset-before-request"
    assert [e.path for e in unsupported(config)] == ["clusters.a.retry.retryable_status_codes[0]"]


# --------------------------------------------------------------------------- clusters


def test_cluster_is_eds_over_ads_http2_with_keepalive_and_no_limits() -> None:
    cluster = rich().clusters["outbound|echo"]
    assert cluster["type"] == "EDS"
    assert cluster["eds_cluster_config"] == {
        "eds_config": {"ads": {}, "resource_api_version": "V3"}
    }
    assert cluster["connect_timeout"] == "0.25s"
    assert cluster["lb_policy"] == "ROUND_ROBIN"
    assert cluster["common_lb_config"] == {"healthy_panic_threshold": {"value": 0.0}}
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert (
        options["@type"]
        == "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    )
    assert options["explicit_http_config"] == {
        "http2_protocol_options": {"connection_keepalive": {"interval": "30s", "timeout": "7s"}}
    }
    threshold = cluster["circuit_breakers"]["thresholds"][0]
    assert threshold["max_requests"] == threshold["max_pending_requests"] == 2**32 - 1


def test_health_is_the_control_planes_eds_status_not_an_envoy_check() -> None:
    # health_check: the control plane watches each endpoint; Envoy polls nothing itself
    cluster = rich().clusters["outbound|echo"]
    assert "health_checks" not in cluster
    assert "ignore_health_on_host_removal" not in cluster
    endpoints = {"echo": [Endpoint("10.0.0.1", 1), Endpoint("10.0.0.2", 1), Endpoint("::1", 1)]}
    health = {("10.0.0.1", 1): "HEALTHY", ("10.0.0.2", 1): "UNHEALTHY", ("10.0.0.9", 1): "x"}
    found = run(config_of(RICH), endpoints=endpoints, endpoint_health={"echo": health})
    (locality,) = found.endpoints["outbound|echo"]["endpoints"]
    statuses = {
        e["endpoint"]["address"]["socket_address"]["address"]: e.get("health_status")
        for e in locality["lb_endpoints"]
    }
    # no answer yet: no status (UNKNOWN to Envoy, routable)
    assert statuses == {"10.0.0.1": "HEALTHY", "10.0.0.2": "UNHEALTHY", "::1": None}
    # a cluster without health_check carries no status, whatever is given
    plain = outbound({"prefix": "/", "cluster": "a"}, a={"target": ECHO})
    found = run(plain, endpoints={"a": [Endpoint("10.0.0.1", 1)]}, endpoint_health={"a": health})
    (locality,) = found.endpoints["outbound|a"]["endpoints"]
    assert "health_status" not in locality["lb_endpoints"][0]


def test_outlier_detection_uses_the_counter_that_covers_the_codes() -> None:
    detection = rich().clusters["outbound|echo"]["outlier_detection"]
    # default codes include INTERNAL/UNKNOWN (HTTP 500): the 5xx counter
    assert detection["consecutive_5xx"] == 4 and detection["enforcing_consecutive_5xx"] == 100
    assert detection["enforcing_consecutive_gateway_failure"] == 0
    assert detection["enforcing_success_rate"] == 0
    assert detection["base_ejection_time"] == "20s"
    assert detection["max_ejection_time"] == "120s"
    assert detection["max_ejection_percent"] == 30
    gateway = outbound(
        {"prefix": "/", "cluster": "a"},
        a={"target": ECHO, "outlier_detection": {"failure_codes": ["UNAVAILABLE"]}},
    )
    detection = run(gateway).clusters["outbound|a"]["outlier_detection"]
    assert detection["enforcing_consecutive_5xx"] == 0
    assert detection["consecutive_gateway_failure"] == 5
    assert detection["enforcing_consecutive_gateway_failure"] == 100


def test_endpoints_sorted_deduplicated_weighted_only_for_weighted_policy() -> None:
    resources = rich()
    (locality,) = resources.endpoints["outbound|echo"]["endpoints"]
    assert locality["lb_endpoints"] == [
        {
            "endpoint": {
                "address": {"socket_address": {"address": "10.0.0.1", "port_value": 50051}}
            },
            "load_balancing_weight": 1,
        },
        {
            "endpoint": {
                "address": {"socket_address": {"address": "10.0.0.2", "port_value": 50051}}
            },
            "load_balancing_weight": 3,
        },
    ]
    plain = outbound({"prefix": "/", "cluster": "a"}, a={"target": ECHO})
    found = run(
        plain,
        endpoints={
            "a": [
                Endpoint("10.0.0.9", 1, 5),
                Endpoint("10.0.0.9", 1, 2),
                Endpoint("::1", 2),
                Endpoint("/run/app.sock", 0),
                Endpoint("name.example", 3),
            ]
        },
    )
    (locality,) = found.endpoints["outbound|a"]["endpoints"]
    assert [e["endpoint"]["address"] for e in locality["lb_endpoints"]] == [
        {"pipe": {"path": "/run/app.sock"}},
        {"socket_address": {"address": "10.0.0.9", "port_value": 1}},
        {"socket_address": {"address": "::1", "port_value": 2}},
    ]  # the host name is dropped: EDS takes IP addresses
    assert all("load_balancing_weight" not in e for e in locality["lb_endpoints"])


def test_a_cluster_without_endpoints_still_has_its_assignment() -> None:
    config = outbound({"prefix": "/", "cluster": "a"}, a={"target": ECHO})
    assert run(config).endpoints["outbound|a"] == {
        "@type": CLUSTER_LOAD_ASSIGNMENT,
        "cluster_name": "outbound|a",
        "endpoints": [],
    }


def test_upstream_tls_uses_sds_secrets_and_checks_the_service_name() -> None:
    resources = rich()
    socket = resources.clusters["outbound|echo"]["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    context = socket["typed_config"]
    assert context["@type"].endswith("tls.v3.UpstreamTlsContext")
    assert context["sni"] == "echo.default.svc"
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    ads = {"ads": {}, "resource_api_version": "V3"}
    assert common["tls_certificate_sds_secret_configs"] == [
        {"name": "cluster|echo|cert", "sds_config": ads}
    ]
    combined = common["combined_validation_context"]
    assert combined["validation_context_sds_secret_config"] == {
        "name": "cluster|echo|ca",
        "sds_config": ads,
    }
    assert combined["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "echo.default.svc"}}
    ]
    secret = resources.secrets["cluster|echo|cert"]["tls_certificate"]
    assert base64.b64decode(secret["certificate_chain"]["inline_bytes"]) == b"CLIENT CERT"
    assert base64.b64decode(secret["private_key"]["inline_bytes"]) == b"CLIENT KEY"
    ca = resources.secrets["cluster|echo|ca"]["validation_context"]["trusted_ca"]
    assert base64.b64decode(ca["inline_bytes"]) == b"UPSTREAM CA"


def test_upstream_tls_without_ca_trusts_the_system_bundle_and_an_ip_is_an_ip_san() -> None:
    config = outbound({"prefix": "/", "cluster": "a"}, a={"target": ECHO, "tls": {}})
    resources = run(config)
    context = resources.clusters["outbound|a"]["transport_socket"]["typed_config"]
    assert "sni" not in context  # no SNI for an IP address
    assert context["common_tls_context"]["validation_context"] == {
        "match_typed_subject_alt_names": [
            {"san_type": "IP_ADDRESS", "matcher": {"exact": "127.0.0.1"}}
        ],
        "trusted_ca": {"filename": SYSTEM_CA_BUNDLE},
    }
    assert dict(resources.secrets) == {}


def test_a_rotated_file_changes_only_its_secret() -> None:
    config = config_of(RICH)
    before = run(config)
    after = run(config, files={**FILES, "/certs/client.crt": b"ROTATED"})
    changed = [n for n in before.secrets if before.secrets[n] != after.secrets[n]]
    assert changed == ["cluster|echo|cert"]
    assert before.clusters == after.clusters and before.listeners == after.listeners


def test_a_missing_file_names_the_field() -> None:
    with pytest.raises(
        ValueError, match=r"clusters\.echo\.tls\.key: no contents given for /certs/client\.key"
    ):
        run(config_of(RICH), files={k: v for k, v in FILES.items() if k != "/certs/client.key"})


# --------------------------------------------------------------------------- inbound


def test_inbound_routes_health_to_meshkit_without_auth_and_the_rest_to_the_app() -> None:
    resources = rich()
    health, *apps, invalid, missing = routes_of(resources, "inbound")
    assert health["match"] == {"prefix": "/grpc.health.v1.Health/"}  # no header needed
    assert health["route"]["cluster"] == "meshkit|health"
    assert [a["name"] for a in apps] == ["app"] * len(TOKENS)
    assert {a["route"]["cluster"] for a in apps} == {"inbound|app"}
    assert [a["match"]["headers"][0]["name"] for a in apps] == ["authorization"] * len(TOKENS)
    assert (invalid["name"], missing["name"]) == ("invalid_token", "missing_token")
    assert missing["match"] == {"prefix": "/"}
    assert (invalid["direct_response"]["status"], missing["direct_response"]["status"]) == (
        401,
        401,
    )
    assert hcm(resources, "inbound")["http_filters"][0]["name"] == "envoy.filters.http.grpc_stats"
    open_routes = routes_of(run(inbound(), health_address=("127.0.0.1", 15020)), "inbound")
    assert [(r["name"], r["match"], r["route"]["cluster"]) for r in open_routes] == [
        ("health", {"prefix": "/grpc.health.v1.Health/"}, "meshkit|health"),
        ("app", {"prefix": "/"}, "inbound|app"),
    ]
    assert resources.clusters["meshkit|health"]["load_assignment"]["endpoints"][0]["lb_endpoints"][
        0
    ]["endpoint"]["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 15020}}
    app_cluster = resources.clusters["inbound|app"]
    assert app_cluster["type"] == "STATIC"
    assert app_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"] == {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}
    }


def test_without_a_health_server_health_calls_go_to_the_app() -> None:
    resources = run(inbound(), health_address=None)
    health, _ = routes_of(resources, "inbound")
    assert health["route"]["cluster"] == "inbound|app"
    assert "meshkit|health" not in resources.clusters
    named = run(inbound(app="localhost:8080")).clusters["inbound|app"]
    assert (named["type"], named["dns_lookup_family"]) == ("STRICT_DNS", "V4_PREFERRED")


def test_inbound_listener_has_mtls_via_sds_and_appends_the_peer_address() -> None:
    resources = rich()
    listener = resources.listeners["inbound"]
    assert listener["traffic_direction"] == "INBOUND"
    context = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    assert context["@type"].endswith("tls.v3.DownstreamTlsContext")
    assert context["require_client_certificate"] is True
    common = context["common_tls_context"]
    assert [s["name"] for s in common["tls_certificate_sds_secret_configs"]] == ["inbound|cert"]
    assert common["validation_context_sds_secret_config"]["name"] == "inbound|client_ca"
    assert hcm(resources, "inbound")["use_remote_address"] is True
    server = resources.secrets["inbound|cert"]["tls_certificate"]
    assert base64.b64decode(server["private_key"]["inline_bytes"]) == b"SERVER KEY"
    plain = run(
        inbound(
            tls={
                "cert": "/certs/server.crt",
                "key": "/certs/server.key",
                "require_client_cert": False,
            }
        )
    )
    context = plain.listeners["inbound"]["filter_chains"][0]["transport_socket"]["typed_config"]
    assert context["require_client_certificate"] is False
    assert "validation_context_sds_secret_config" not in context["common_tls_context"]
    assert list(plain.secrets) == ["inbound|cert"]


def test_ipv6_wildcard_listens_on_ipv4_too() -> None:
    listener = run(inbound(listen="[::]:15006")).listeners["inbound"]
    assert listener["address"]["socket_address"] == {
        "address": "::",
        "port_value": 15006,
        "ipv4_compat": True,
    }


def auth_routes(resources: Resources) -> dict[str, list[dict[str, Any]]]:
    """The inbound routes after the health route, by name."""
    found: dict[str, list[dict[str, Any]]] = {}
    for route in routes_of(resources, "inbound")[1:]:
        found.setdefault(route["name"], []).append(route)
    return found


def decide(routes: list[dict[str, Any]], header: str, metadata: Metadata) -> str | None:
    """What Envoy does with a (non-health) call: the first route whose header patterns all
    match the header's value (repeated values joined by commas, as Envoy does); ``None`` when
    it is forwarded, else the details of its local reply."""
    values = [v for k, v in metadata if k == header and isinstance(v, str)]
    value = ",".join(values) if values else None
    for route in routes[1:]:
        patterns = [
            h["string_match"]["safe_regex"]["regex"] for h in route["match"].get("headers", ())
        ]
        if all(value is not None and re.fullmatch(p, value) for p in patterns):
            if "route" in route:
                return None
            details: str = route["direct_response"]["body"]["inline_string"]
            return details
    raise AssertionError("no route")


# Tokens with regex metacharacters, spaces inside, a scheme word inside.
ODD_TOKENS = ("s3cret-one", r"a.b*c(d)|e\E[f]+?{2}$^", "two words", "Bearer x", "\\Q")
AUTH_CASES = [
    {},
    {"scheme": "BEARER"},
    {"header": "X-Token", "scheme": "Token"},
    {"header": "x-api-key", "scheme": ""},
    {"scheme": "Api-Key.v2"},
]


def spellings(scheme: str) -> st.SearchStrategy[str]:
    """Header values near the accepted ones: whitespace around and inside, the scheme in
    any case or cut short, tokens whole, cut, or joined."""
    space = st.text(alphabet=" \t\x0b\x0c\x1c", max_size=3)
    word = st.sampled_from([scheme, scheme.lower(), scheme.upper(), scheme[:-1], "Basic", ""])
    token = st.one_of(
        st.sampled_from(ODD_TOKENS),
        st.sampled_from(ODD_TOKENS).map(lambda t: t[1:]),
        st.sampled_from(ODD_TOKENS).map(lambda t: t + "x"),
        st.text(alphabet="ab.*()| \\Ex", max_size=8),
    )
    separator = st.sampled_from([" ", "  ", "", "\t", ","])
    built = st.tuples(space, word, separator, space, token, space).map("".join)
    return st.one_of(built, st.text(alphabet=" abBeErR.*\\x", max_size=12))


@pytest.mark.parametrize("auth", AUTH_CASES)
def test_auth_routes_decide_as_the_python_plane(tmp_path: Path, auth: dict[str, str]) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("\n".join(ODD_TOKENS) + "\n")
    config = inbound(auth={"tokens_file": str(tokens_file), **auth})
    assert config.inbound is not None and config.inbound.auth is not None
    header, scheme = config.inbound.auth.header, config.inbound.auth.scheme
    python_plane = authenticator(config.inbound.auth)
    routes = routes_of(run(config, tokens=ODD_TOKENS), "inbound")

    for token in ODD_TOKENS:  # every token is accepted in its plain spelling
        assert decide(routes, header, ((header, f"{scheme} {token}".strip()),)) is None
    assert decide(routes, header, ()) == python_plane(())

    @settings(max_examples=300, deadline=None)
    @given(value=spellings(scheme), other=st.booleans())
    def same(value: str, other: bool) -> None:
        metadata = (("x-other", "1"), (header, value)) if other else ((header, value),)
        assert decide(routes, header, metadata) == python_plane(metadata)

    same()


def test_tokens_appear_only_in_the_token_routes() -> None:
    resources = rich()
    for route in auth_routes(resources)["app"]:
        (pattern,) = [h["string_match"]["safe_regex"]["regex"] for h in route["match"]["headers"]]
        assert any(re.fullmatch(pattern, f"Bearer {t}") for t in TOKENS)
    routes = resources.routes["inbound"]["virtual_hosts"][0]["routes"]
    routes[:] = [r for r in routes if r["name"] != "app"]
    text = dump(resources)
    assert all(token not in text and re.escape(token) not in text for token in TOKENS)
    assert "s3cret" not in text
    shown = repr(resources) + repr(PlaneInputs(files=FILES, tokens=TOKENS))
    assert all(secret not in shown for secret in (*TOKENS, "SERVER KEY", "/certs/server.key"))


def test_rotating_tokens_changes_only_the_inbound_routes() -> None:
    config = config_of(RICH)
    before, after = run(config), run(config, tokens=("s3cret-three",))
    assert before.listeners == after.listeners and before.clusters == after.clusters
    assert before.routes["outbound"] == after.routes["outbound"]
    assert len(auth_routes(after)["app"]) == 1
    # order and repeats in the file do not matter
    assert run(config, tokens=TOKENS[::-1] + TOKENS).routes == before.routes


@pytest.mark.parametrize(
    ("auth", "missing"),
    [
        ({}, MISSING_TOKEN),
        ({"scheme": "bearer"}, MISSING_TOKEN),
        (
            {"header": "X-Token", "scheme": "Token"},
            "missing token: expected metadata 'x-token' with 'Token <token>'",
        ),
        ({"header": "x-api-key", "scheme": ""}, "missing token: expected metadata 'x-api-key'"),
    ],
)
def test_no_tokens_means_every_call_is_refused(auth: dict[str, str], missing: str) -> None:
    routes = auth_routes(run(inbound(auth={"tokens_file": "/t", **auth}), tokens=()))
    assert list(routes) == ["invalid_token", "missing_token"]
    (invalid,), (refused,) = routes["invalid_token"], routes["missing_token"]
    assert invalid["direct_response"] == {"status": 401, "body": {"inline_string": INVALID_TOKEN}}
    assert refused["direct_response"] == {"status": 401, "body": {"inline_string": missing}}


# --------------------------------------------------------------------------- telemetry


def test_grpc_stats_before_the_router_on_both_listeners() -> None:
    resources = rich()
    for name in ("outbound", "inbound"):
        filters = hcm(resources, name)["http_filters"]
        stats, router = filters[-2:]
        assert stats["name"] == "envoy.filters.http.grpc_stats"
        assert stats["typed_config"] == {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
            "emit_filter_state": True,
            "stats_for_all_methods": True,
            "enable_upstream_stats": True,
        }
        assert router["name"] == "envoy.filters.http.router"
        assert router["typed_config"]["suppress_envoy_headers"] is True


def test_tracing_sends_to_the_otlp_cluster_at_the_sample_ratio() -> None:
    resources = rich()
    for name in ("outbound", "inbound"):
        tracing = hcm(resources, name)["tracing"]
        assert tracing["random_sampling"] == {"value": 25.0}
        provider = tracing["provider"]
        assert provider["name"] == "envoy.tracers.opentelemetry"
        assert provider["typed_config"]["grpc_service"]["envoy_grpc"] == {
            "cluster_name": "meshkit|otlp"
        }
        assert provider["typed_config"]["service_name"] == "svc-a"
    otlp = resources.clusters["meshkit|otlp"]
    assert otlp["type"] == "STATIC" and "transport_socket" not in otlp  # loopback: plaintext
    address = otlp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"socket_address": {"address": "127.0.0.1", "port_value": 4317}}


def test_a_remote_collector_is_reached_over_tls() -> None:
    config = config_of(
        {**RICH, "telemetry": {"tracing": {"otlp_endpoint": "https://otel.example"}}}
    )
    otlp = run(config).clusters["meshkit|otlp"]
    assert otlp["type"] == "STRICT_DNS"
    assert otlp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "otel.example", "port_value": 443}
    }
    context = otlp["transport_socket"]["typed_config"]
    assert context["sni"] == "otel.example"


def test_no_tracing_no_collector() -> None:
    config = config_of({**RICH, "telemetry": {}})
    resources = run(config)
    assert "meshkit|otlp" not in resources.clusters
    assert "tracing" not in hcm(resources, "outbound")


# --------------------------------------------------------------------------- unsupported


def test_every_setting_of_the_rich_config_is_supported() -> None:
    assert unsupported(config_of(RICH)) == []


def test_unsupported_names_each_field_envoy_cannot_express() -> None:
    config = config_of(
        {
            "outbound": {
                "routes": [{"prefix": "/", "cluster": "a"}],
                "keepalive": {"min_ping_interval": "5m"},
            },
            "inbound": {"app": "127.0.0.1:8080"},
            "clusters": {
                "a": {
                    "target": "static:///localhost:1",
                    "lb_policy": "pick_first",
                    "retry": {
                        "retryable_status_codes": ["UNAVAILABLE", "INTERNAL", "ABORTED"],
                        "backoff_multiplier": 1.5,
                    },
                    "outlier_detection": {"failure_codes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]},
                },
                "b": {"target": "static:///10.0.0.1:1,10.0.0.2:1", "tls": {}},
            },
        }
    )
    assert [e.path for e in unsupported(config)] == [
        "outbound.keepalive.min_ping_interval",
        "clusters.a.lb_policy",
        "clusters.a.retry.retryable_status_codes[2]",
        "clusters.a.retry.backoff_multiplier",
        "clusters.a.outlier_detection.failure_codes[1]",
        "clusters.b.tls.server_name",
    ]


# --------------------------------------------------------------------------- static bootstrap


def test_static_bootstrap_inlines_everything() -> None:
    resources = rich()
    boot = static_bootstrap(resources, admin_port=9902)
    assert boot["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 9902,
    }
    static = boot["static_resources"]
    assert [item.get("@type") for kind in static.values() for item in kind] == [None] * sum(
        len(kind) for kind in static.values()
    )
    keys = {key for key, _ in walk(static)}
    assert "sds_config" not in keys and "rds" not in keys and "eds_cluster_config" not in keys
    outbound_hcm = static["listeners"][1]["filter_chains"][0]["filters"][0]["typed_config"]
    assert outbound_hcm["route_config"]["name"] == "outbound"
    assert "@type" in outbound_hcm  # nested Any fields keep theirs
    echo = next(c for c in static["clusters"] if c["name"] == "outbound|echo")
    assert echo["type"] == "STATIC"
    assert echo["load_assignment"]["cluster_name"] == "outbound|echo"
    assert [s["name"] for s in static["secrets"]] == list(resources.secrets)
    assert boot["layered_runtime"] == {
        "layers": [{"name": "meshkit", "static_layer": dict(RUNTIME)}]
    }
    # the resources themselves are left as they were
    assert resources.clusters["outbound|echo"]["type"] == "EDS"
    assert "rds" in hcm(resources, "outbound")


# --------------------------------------------------------------------------- identity, access log

MTLS = {"cert": "/certs/server.crt", "key": "/certs/server.key", "client_ca": "/certs/ca.crt"}
SPIFFE_WEB = "spiffe://cluster.local/ns/prod/sa/web"


def test_authorization_is_rbac_first_with_details_for_each_denial() -> None:
    resources = run(
        inbound(
            tls=MTLS,
            authorization={
                "allowed_ids": [SPIFFE_WEB],
                "allowed_san_patterns": ["spiffe://cluster.local/ns/ops/**"],
            },
        )
    )
    manager = hcm(resources, "inbound")
    rbac, stats, router = manager["http_filters"]
    assert rbac["name"] == "envoy.filters.http.rbac"
    assert (stats["name"], router["name"]) == (
        "envoy.filters.http.grpc_stats",
        "envoy.filters.http.router",
    )
    policies = rbac["typed_config"]["rules"]["policies"]
    assert sorted(policies) == ["no-spiffe-id", "not-allowed"]
    (allowed,) = policies["not-allowed"]["principals"]
    assert [p["authenticated"]["principal_name"] for p in allowed["not_id"]["or_ids"]["ids"]] == [
        {"exact": SPIFFE_WEB},
        {"safe_regex": {"regex": r"spiffe://cluster\.local/ns/ops/.*"}},
    ]
    # the caller's URI SANs reach the local reply as XFCC, never the app
    assert manager["forward_client_cert_details"] == "SANITIZE_SET"
    assert manager["set_current_client_cert_details"] == {"uri": True}
    assert "x-forwarded-client-cert" in resources.routes["inbound"]["request_headers_to_remove"]
    not_allowed, no_identity, *_ = manager["local_reply_config"]["mappers"]
    assert (
        "%DOWNSTREAM_PEER_URI_SAN% is not allowed"
        in (not_allowed["body_format_override"]["text_format_source"]["inline_string"])
    )
    assert (
        "no SPIFFE ID" in no_identity["body_format_override"]["text_format_source"]["inline_string"]
    )
    plain = hcm(run(inbound(tls=MTLS)), "inbound")
    assert plain["http_filters"][0]["name"] == "envoy.filters.http.grpc_stats"
    assert "forward_client_cert_details" not in plain
    assert len(plain["local_reply_config"]["mappers"]) == 2


def test_access_log_is_off_by_default_and_the_same_line_on_both_listeners() -> None:
    both = {
        "outbound": {"listen": "127.0.0.1:15001", "routes": [{"prefix": "/", "cluster": "echo"}]},
        "clusters": {"echo": {"target": ECHO}},
        "inbound": {"listen": "0.0.0.0:15006", "app": "127.0.0.1:8080"},
    }
    off = run(config_of(both))
    assert all("access_log" not in hcm(off, name) for name in ("outbound", "inbound"))

    to_file = run(
        config_of({**both, "telemetry": {"access_log": {"enabled": True, "path": "/log/a.log"}}})
    )
    for name in ("outbound", "inbound"):
        (logger,) = hcm(to_file, name)["access_log"]
        assert logger["name"] == "envoy.access_loggers.file"
        config = logger["typed_config"]
        assert config["path"] == "/log/a.log"
        fields = config["log_format"]["json_format"]
        assert tuple(fields) == FIELDS and fields["direction"] == name
        # inbound health calls are the sidecar's own answers to probes: not logged
        assert ("filter" in logger) is (name == "inbound")
    health_filter = hcm(to_file, "inbound")["access_log"][0]["filter"]["header_filter"]["header"]
    assert health_filter == {
        "name": ":path",
        "string_match": {"prefix": "/grpc.health.v1.Health/"},
        "invert_match": True,
    }
    to_stdout = run(config_of({**both, "telemetry": {"access_log": {"enabled": True}}}))
    (logger,) = hcm(to_stdout, "outbound")["access_log"]
    assert logger["typed_config"]["@type"].endswith("stream.v3.StdoutAccessLog")


def test_identity_and_access_log_resources_are_messages_envoy_accepts() -> None:
    resources = run(
        inbound(tls=MTLS, authorization={"allowed_san_patterns": ["spiffe://td/ns/*/sa/**"]}),
    )
    logged = run(
        config_of(
            {
                "inbound": {"listen": "0.0.0.0:15006", "app": "127.0.0.1:8080"},
                "telemetry": {"access_log": {"enabled": True, "path": "/log/a.log"}},
            }
        )
    )
    for listener in (resources.listeners["inbound"], logged.listeners["inbound"]):
        protos.from_json(listener)
    protos.from_json(resources.routes["inbound"])
