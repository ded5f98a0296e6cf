"""The sidecar config: parsing, validation errors naming their field, env overrides, dumps."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

import balancers
from sidecar.config import (
    REDACTED,
    ClusterConfig,
    ConfigError,
    Duration,
    FieldError,
    HostPort,
    KeepaliveConfig,
    ListenAddress,
    RetryConfig,
    Route,
    ServerKeepaliveConfig,
    SidecarConfig,
    load_config,
    parse_config,
)
from tests.support.certs import make_ca, server_cert

MINIMAL_YAML = """\
outbound: {listen: 127.0.0.1:15001, routes: [{prefix: /, cluster: backend}]}
clusters: {backend: {target: static:///127.0.0.1:10000}}
admin: {listen: 127.0.0.1:9901}
"""

FULL_YAML = """\
admin: {listen: 127.0.0.1:9901}
outbound:
  listen: 127.0.0.1:15001
  routes:
    - {prefix: /echo.EchoService/, cluster: echo, timeout: 5s}
    - {prefix: /, cluster: default}
  keepalive: {time: 300s, timeout: 20s, permit_without_calls: false, min_ping_interval: 60s}
  max_concurrent_streams: 1000
inbound:
  listen: 0.0.0.0:15006
  app: 127.0.0.1:8080
  app_health: {service: "", interval: 5s, timeout: 1s, enabled: true}
  tls: {cert: certs/tls.crt, key: certs/tls.key, client_ca: certs/ca.crt, require_client_cert: true}
  auth: {tokens_file: tokens, header: Authorization, scheme: Bearer}
  keepalive: {time: 2h, timeout: 20s, permit_without_calls: true, min_ping_interval: 10s}
clusters:
  echo:
    target: dns:///echo.default.svc.cluster.local:50051
    lb_policy: round_robin
    health_check: {service: ""}
    outlier_detection:
      consecutive_failures: 5
      base_ejection_time: 30s
      max_ejection_time: 300s
      max_ejection_percent: 50
      failure_codes: [UNAVAILABLE, INTERNAL, UNKNOWN, DEADLINE_EXCEEDED]
    retry:
      max_attempts: 3
      retryable_status_codes: [unavailable]
      initial_backoff: 50ms
      max_backoff: 1s
    timeout: null
    connect_timeout: 5s
    keepalive: {time: 300s, timeout: 20s, permit_without_calls: false}
    tls: {ca: certs/ca.crt, cert: certs/tls.crt, key: certs/tls.key, server_name: echo}
    resolver: {min_refresh: 1s, max_refresh: 300s}
  default:
    target: static:///127.0.0.1:10000,[::1]:10001
    lb_policy: pick_first
    timeout: 1.5s
telemetry:
  prometheus: true
  tracing: {otlp_endpoint: 127.0.0.1:4317, sample_ratio: 0.1, service_name: meshkit-sidecar}
drain: {drain_delay: 5s, grace_period: 20s}
workers: 1
log_level: INFO
"""

TOKEN = "s3cret-token-value"


def minimal() -> dict[str, Any]:
    raw = yaml.safe_load(MINIMAL_YAML)
    assert isinstance(raw, dict)
    return raw


def parse(raw: dict[str, Any], environ: dict[str, str] | None = None) -> SidecarConfig:
    return parse_config(raw, environ or {})


def errors_of(raw: dict[str, Any], environ: dict[str, str] | None = None) -> list[FieldError]:
    with pytest.raises(ConfigError) as caught:
        parse(raw, environ)
    return caught.value.errors


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` deep-merged in; a ``...`` value deletes the key."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is ...:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def full_dir(tmp_path: Path) -> Path:
    (tmp_path / "certs").mkdir()
    ca = make_ca()
    (tmp_path / "certs" / "ca.crt").write_bytes(ca.cert_pem)
    server_cert(ca).write(str(tmp_path / "certs"), "tls")
    (tmp_path / "tokens").write_text(TOKEN + "\n")
    (tmp_path / "sidecar.yaml").write_text(FULL_YAML)
    return tmp_path


# --------------------------------------------------------------------------- valid configs


def test_minimal_config_is_valid_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(MINIMAL_YAML)
    config = load_config(str(path), environ={})
    assert config.admin.listen == ListenAddress("127.0.0.1", 9901)
    assert config.outbound is not None
    assert str(config.outbound.listen) == "127.0.0.1:15001"
    assert config.outbound.routes == (Route(prefix="/", cluster="backend"),)
    backend = config.clusters["backend"]
    assert backend.target == "static:///127.0.0.1:10000"
    assert backend.lb_policy == "round_robin"
    assert backend.retry is None and backend.health_check is None and backend.tls is None
    assert backend.keepalive.time == 300.0 and backend.connect_timeout == 5.0
    assert config.inbound is None
    assert config.drain.drain_delay == 5.0 and config.drain.grace_period == 20.0
    assert config.workers == 1 and config.log_level == "info"
    assert config.telemetry.prometheus and config.telemetry.tracing.otlp_endpoint is None
    assert config.warnings() == []


def test_full_config_parses_every_field(full_dir: Path) -> None:
    config = load_config(str(full_dir / "sidecar.yaml"), environ={})
    assert config.outbound is not None and config.inbound is not None
    assert config.outbound.routes[0].timeout == 5.0
    assert config.outbound.route("/echo.EchoService/Echo") == config.outbound.routes[0]
    assert config.outbound.route("/other.Service/Call") == config.outbound.routes[1]
    inbound = config.inbound
    assert inbound.app == HostPort("127.0.0.1", 8080)
    assert inbound.tls is not None and inbound.tls.key == str(full_dir / "certs" / "tls.key")
    assert inbound.auth is not None and inbound.auth.header == "authorization"
    assert inbound.keepalive.time == 7200.0 and inbound.keepalive.min_ping_interval == 10.0
    echo = config.clusters["echo"]
    assert echo.retry == RetryConfig(
        max_attempts=3,
        retryable_status_codes=("UNAVAILABLE",),
        initial_backoff=Duration(0.05),
        max_backoff=Duration(1),
    )
    assert echo.retry.policy().retryable_codes == {grpc.StatusCode.UNAVAILABLE}
    assert echo.outlier_detection is not None
    assert grpc.StatusCode.DEADLINE_EXCEEDED in echo.outlier_detection.codes
    assert echo.health_check is not None and echo.health_check.service == ""
    assert echo.parsed_target.endpoint == "echo.default.svc.cluster.local:50051"
    assert config.clusters["default"].timeout == 1.5
    assert config.log_level == "info"


def test_full_config_round_trips_through_to_dict(full_dir: Path) -> None:
    config = load_config(str(full_dir / "sidecar.yaml"), environ={})
    dumped = config.to_dict(redact=False)
    assert parse_config(dumped, environ={}) == config
    # ...and through YAML text, as /config would serve it
    assert parse_config(yaml.safe_load(yaml.safe_dump(dumped)), environ={}) == config


def test_minimal_round_trip_and_defaults_are_explicit_in_dump() -> None:
    config = parse(minimal())
    dumped = config.to_dict()
    assert dumped["clusters"]["backend"]["keepalive"] == {
        "time": "5m",
        "timeout": "20s",
        "permit_without_calls": False,
    }
    assert parse(dumped) == config


def test_inbound_only_sidecar_needs_no_clusters() -> None:
    config = parse({"inbound": {"app": "127.0.0.1:8080", "listen": "127.0.0.1:15006"}})
    assert config.outbound is None and dict(config.clusters) == {}
    assert config.inbound is not None and config.inbound.app_health.enabled


def test_ipv6_addresses_and_port_zero_for_listeners() -> None:
    raw = merged(minimal(), {"outbound": {"listen": "[::1]:0"}, "admin": {"listen": "[::1]:0"}})
    config = parse(raw)
    assert config.outbound is not None
    assert config.outbound.listen == ListenAddress("::1", 0)
    assert str(config.outbound.listen) == "[::1]:0"


# --------------------------------------------------------------------------- errors name the path


def _inbound(**patch: Any) -> dict[str, Any]:
    return {"inbound": {"app": "127.0.0.1:8080", **patch}}


BAD_INPUTS: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, patch onto the minimal config, error path, text the message must contain)
    (
        "retry-max-attempts-high",
        {"clusters": {"backend": {"retry": {"max_attempts": 7}}}},
        "clusters.backend.retry.max_attempts",
        "must be 2..5 (got 7)",
    ),
    (
        "retry-max-attempts-low",
        {"clusters": {"backend": {"retry": {"max_attempts": 1}}}},
        "clusters.backend.retry.max_attempts",
        "must be 2..5 (got 1)",
    ),
    (
        "retry-unknown-code",
        {"clusters": {"backend": {"retry": {"retryable_status_codes": ["UNAVAILABLE", "NOPE"]}}}},
        "clusters.backend.retry.retryable_status_codes[1]",
        "'NOPE'",
    ),
    (
        "retry-ok-is-not-retryable",
        {"clusters": {"backend": {"retry": {"retryable_status_codes": ["OK"]}}}},
        "clusters.backend.retry.retryable_status_codes[0]",
        "'OK'",
    ),
    (
        "retry-no-codes",
        {"clusters": {"backend": {"retry": {"retryable_status_codes": []}}}},
        "clusters.backend.retry.retryable_status_codes",
        "at least one",
    ),
    (
        "retry-codes-not-a-list",
        {"clusters": {"backend": {"retry": {"retryable_status_codes": "UNAVAILABLE"}}}},
        "clusters.backend.retry.retryable_status_codes",
        "must be a list (got 'UNAVAILABLE')",
    ),
    (
        "retry-zero-backoff",
        {"clusters": {"backend": {"retry": {"initial_backoff": 0}}}},
        "clusters.backend.retry.initial_backoff",
        "greater than 0 (got 0s)",
    ),
    (
        "retry-backoff-order",
        {"clusters": {"backend": {"retry": {"initial_backoff": "2s", "max_backoff": "1s"}}}},
        "clusters.backend.retry.max_backoff",
        "(got 1s)",
    ),
    (
        "route-unknown-cluster",
        {"outbound": {"routes": [{"prefix": "/", "cluster": "nope"}]}},
        "outbound.routes[0].cluster",
        "no cluster named 'nope' (clusters: backend)",
    ),
    (
        "route-second-unknown-cluster",
        {
            "outbound": {
                "routes": [
                    {"prefix": "/a.B/", "cluster": "backend"},
                    {"prefix": "/", "cluster": "x"},
                ]
            }
        },
        "outbound.routes[1].cluster",
        "'x'",
    ),
    (
        "route-prefix-no-slash",
        {"outbound": {"routes": [{"prefix": "echo", "cluster": "backend"}]}},
        "outbound.routes[0].prefix",
        "(got 'echo')",
    ),
    (
        "route-prefix-service-without-trailing-slash",
        {"outbound": {"routes": [{"prefix": "/pkg.Svc", "cluster": "backend"}]}},
        "outbound.routes[0].prefix",
        "did you mean '/pkg.Svc/'?",
    ),
    (
        "route-shadowed",
        {
            "outbound": {
                "routes": [
                    {"prefix": "/", "cluster": "backend"},
                    {"prefix": "/a.B/", "cluster": "backend"},
                ]
            }
        },
        "outbound.routes[1].prefix",
        "unreachable",
    ),
    (
        "route-missing-cluster-key",
        {"outbound": {"routes": [{"prefix": "/"}]}},
        "outbound.routes[0].cluster",
        "required",
    ),
    (
        "route-negative-timeout",
        {"outbound": {"routes": [{"prefix": "/", "cluster": "backend", "timeout": "-1s"}]}},
        "outbound.routes[0].timeout",
        "negative (got '-1s')",
    ),
    ("no-routes", {"outbound": {"routes": []}}, "outbound.routes", "at least one route"),
    (
        "routes-not-a-list",
        {"outbound": {"routes": {"prefix": "/"}}},
        "outbound.routes",
        "must be a list",
    ),
    ("listen-no-port", {"outbound": {"listen": "localhost"}}, "outbound.listen", "port is missing"),
    ("listen-port-range", {"outbound": {"listen": "127.0.0.1:70000"}}, "outbound.listen", "70000"),
    ("listen-bare-ipv6", {"outbound": {"listen": "::1:80"}}, "outbound.listen", "brackets"),
    ("listen-not-a-string", {"admin": {"listen": 9901}}, "admin.listen", "(got 9901)"),
    (
        "listeners-collide",
        {"admin": {"listen": "127.0.0.1:15001"}},
        "outbound.listen",
        "collides with admin.listen",
    ),
    (
        "wildcard-listener-collides",
        _inbound(listen="0.0.0.0:15001"),
        "inbound.listen",
        "collides with outbound.listen",
    ),
    (
        "max-concurrent-streams",
        {"outbound": {"max_concurrent_streams": 0}},
        "outbound.max_concurrent_streams",
        "(got 0)",
    ),
    (
        "server-keepalive-timeout",
        {"outbound": {"keepalive": {"timeout": 0}}},
        "outbound.keepalive.timeout",
        "greater than 0",
    ),
    ("inbound-app-required", {"inbound": {"listen": "0.0.0.0:15006"}}, "inbound.app", "required"),
    ("inbound-app-port-zero", _inbound(app="127.0.0.1:0"), "inbound.app", "1..65535 (got 0)"),
    ("inbound-app-loop", _inbound(app="127.0.0.1:15006"), "inbound.app", "loop"),
    (
        "inbound-tls-file-missing",
        _inbound(tls={"cert": "/nonexistent/tls.crt", "key": "/nonexistent/tls.key"}),
        "inbound.tls.cert",
        "no such file: /nonexistent/tls.crt",
    ),
    (
        "inbound-tls-key-required",
        _inbound(tls={"cert": "/nonexistent/tls.crt", "require_client_cert": False}),
        "inbound.tls.key",
        "required",
    ),
    (
        "inbound-app-health-timeout",
        _inbound(app_health={"interval": "1s", "timeout": "2s"}),
        "inbound.app_health.timeout",
        "(got 2s)",
    ),
    (
        "inbound-auth-reserved-header",
        _inbound(auth={"tokens_file": "/nonexistent", "header": "grpc-token"}),
        "inbound.auth.header",
        "reserved",
    ),
    (
        "target-unknown-scheme",
        {"clusters": {"backend": {"target": "bogus:///x"}}},
        "clusters.backend.target",
        "no resolver for scheme 'bogus'",
    ),
    (
        "target-static-without-port",
        {"clusters": {"backend": {"target": "static:///10.0.0.1"}}},
        "clusters.backend.target",
        "missing port",
    ),
    (
        "target-dns-bad-port",
        {"clusters": {"backend": {"target": "dns:///svc:http"}}},
        "clusters.backend.target",
        "port",
    ),
    (
        "target-required",
        {"clusters": {"backend": {"target": ...}}},
        "clusters.backend.target",
        "required",
    ),
    (
        "lb-policy",
        {"clusters": {"backend": {"lb_policy": "magic"}}},
        "clusters.backend.lb_policy",
        "unknown policy 'magic'",
    ),
    (
        "client-keepalive-too-fast",
        {"clusters": {"backend": {"keepalive": {"time": "5s"}}}},
        "clusters.backend.keepalive.time",
        "too_many_pings",
    ),
    (
        "client-keepalive-has-no-min-ping-interval",
        {"clusters": {"backend": {"keepalive": {"min_ping_interval": "1m"}}}},
        "clusters.backend.keepalive.min_ping_interval",
        "unknown key",
    ),
    (
        "cluster-tls-cert-without-key",
        {"clusters": {"backend": {"tls": {"cert": "/nonexistent/c.crt"}}}},
        "clusters.backend.tls.key",
        "together with cert",
    ),
    (
        "outlier-percent",
        {"clusters": {"backend": {"outlier_detection": {"max_ejection_percent": 101}}}},
        "clusters.backend.outlier_detection.max_ejection_percent",
        "must be 0..100 (got 101)",
    ),
    (
        "outlier-failures",
        {"clusters": {"backend": {"outlier_detection": {"consecutive_failures": 0}}}},
        "clusters.backend.outlier_detection.consecutive_failures",
        "(got 0)",
    ),
    (
        "health-check-not-a-mapping",
        {"clusters": {"backend": {"health_check": "yes"}}},
        "clusters.backend.health_check",
        "must be a mapping",
    ),
    (
        "connect-timeout-zero",
        {"clusters": {"backend": {"connect_timeout": 0}}},
        "clusters.backend.connect_timeout",
        "greater than 0",
    ),
    (
        "resolver-refresh-order",
        {"clusters": {"backend": {"resolver": {"min_refresh": "10s", "max_refresh": "1s"}}}},
        "clusters.backend.resolver.max_refresh",
        "(got 1s)",
    ),
    (
        "cluster-name",
        {"clusters": {"Bad Name": {"target": "static:///127.0.0.1:1"}}},
        "clusters.Bad Name",
        "[a-z0-9_.-]+",
    ),
    ("clusters-not-a-mapping", {"clusters": ["backend"]}, "clusters", "must be a mapping"),
    (
        "sample-ratio",
        {"telemetry": {"tracing": {"sample_ratio": 1.5}}},
        "telemetry.tracing.sample_ratio",
        "(got 1.5)",
    ),
    (
        "sample-ratio-type",
        {"telemetry": {"tracing": {"sample_ratio": "high"}}},
        "telemetry.tracing.sample_ratio",
        "must be a number (got 'high')",
    ),
    (
        "otlp-endpoint",
        {"telemetry": {"tracing": {"otlp_endpoint": "ftp://collector"}}},
        "telemetry.tracing.otlp_endpoint",
        "'ftp://collector'",
    ),
    (
        "prometheus-not-bool",
        {"telemetry": {"prometheus": "maybe"}},
        "telemetry.prometheus",
        "true or false (got 'maybe')",
    ),
    ("drain-duration", {"drain": {"grace_period": "soon"}}, "drain.grace_period", "'soon'"),
    ("workers-zero", {"workers": 0}, "workers", "(got 0)"),
    ("workers-string", {"workers": "2"}, "workers", "must be an integer (got '2')"),
    (
        "workers-with-port-zero",
        {"workers": 2, "outbound": {"listen": "127.0.0.1:0"}},
        "outbound.listen",
        "workers: 1",
    ),
    ("log-level", {"log_level": "loud"}, "log_level", "(got 'loud')"),
    ("outbound-not-a-mapping", {"outbound": 5}, "outbound", "must be a mapping (got 5)"),
    ("no-listener-section", {"outbound": ...}, "", "at least one of 'outbound' or 'inbound'"),
]


@pytest.mark.parametrize(
    ("patch", "path", "fragment"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_each_error_names_its_path_and_value(
    patch: dict[str, Any], path: str, fragment: str
) -> None:
    errors = errors_of(merged(minimal(), patch))
    matching = [e for e in errors if e.path == path]
    assert matching, f"no error at {path!r}; got {[str(e) for e in errors]}"
    assert any(fragment in e.message for e in matching), [str(e) for e in matching]


def test_error_line_format() -> None:
    raw = merged(minimal(), {"clusters": {"backend": {"retry": {"max_attempts": 7}}}})
    with pytest.raises(ConfigError) as caught:
        parse(raw)
    assert str(caught.value) == "clusters.backend.retry.max_attempts: must be 2..5 (got 7)"


def test_all_errors_are_reported_not_just_the_first() -> None:
    raw = merged(
        minimal(),
        {
            "admin": {"listen": "nonsense"},
            "clusters": {"backend": {"retry": {"max_attempts": 9}, "lb_policy": "magic"}},
            "outbound": {"routes": [{"prefix": "/", "cluster": "missing"}]},
            "log_level": "loud",
        },
    )
    paths = {e.path for e in errors_of(raw)}
    assert {
        "admin.listen",
        "clusters.backend.retry.max_attempts",
        "clusters.backend.lb_policy",
        "outbound.routes[0].cluster",
        "log_level",
    } <= paths


def test_unknown_keys_are_rejected_with_their_path() -> None:
    raw = merged(
        minimal(),
        {
            "admni": {"listen": "127.0.0.1:9902"},
            "clusters": {"backend": {"retry": {"max_attempt": 3}}},
            "outbound": {"routes": [{"prefix": "/", "cluster": "backend", "timeot": "1s"}]},
        },
    )
    errors = {e.path: e.message for e in errors_of(raw)}
    assert errors["admni"].startswith("unknown key (did you mean 'admin'?)")
    assert "did you mean 'max_attempts'?" in errors["clusters.backend.retry.max_attempt"]
    assert "did you mean 'timeout'?" in errors["outbound.routes[0].timeot"]


def test_unknown_key_without_close_match_lists_the_known_ones() -> None:
    errors = errors_of(merged(minimal(), {"admin": {"zzz": 1}}))
    assert errors == [FieldError("admin.zzz", "unknown key (known: listen, expose_debug)")]


def test_non_string_keys_are_rejected() -> None:
    errors = errors_of(merged(minimal(), {"admin": {1: "x"}}))
    assert [e.path for e in errors] == ["admin.1"]


def test_null_means_off_for_optional_sections_and_defaults_otherwise() -> None:
    raw = merged(
        minimal(),
        {"clusters": {"backend": {"retry": None, "keepalive": None}}, "drain": None},
    )
    config = parse(raw)
    assert config.clusters["backend"].retry is None
    assert config.clusters["backend"].keepalive == KeepaliveConfig()
    assert config.drain.grace_period == 20.0


def test_sections_validate_when_built_in_code_too() -> None:
    with pytest.raises(ConfigError) as caught:
        RetryConfig(max_attempts=7)
    assert caught.value.errors == [FieldError("max_attempts", "must be 2..5 (got 7)")]
    with pytest.raises(ConfigError):
        ClusterConfig(target="static:///127.0.0.1:1", lb_policy="nope")


# --------------------------------------------------------------------------- files


def test_relative_paths_resolve_against_the_config_directory(full_dir: Path) -> None:
    config = load_config(str(full_dir / "sidecar.yaml"), environ={})
    assert config.inbound is not None and config.inbound.auth is not None
    assert config.inbound.auth.tokens_file == str(full_dir / "tokens")


def test_check_files_false_accepts_missing_files(tmp_path: Path) -> None:
    raw = merged(
        minimal(),
        _inbound(
            tls={"cert": "/certs/tls.crt", "key": "/certs/tls.key", "client_ca": "/certs/ca.crt"}
        ),
    )
    config = parse_config(raw, environ={}, check_files=False)
    assert config.inbound is not None and config.inbound.tls is not None
    assert config.inbound.tls.cert == "/certs/tls.crt"


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("admin:\n  listen: 127.0.0.1:9901\n outbound: x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    (error,) = caught.value.errors
    assert error.path == f"{path}:3:2"
    assert error.message.startswith("YAML syntax error:")


def test_duplicate_yaml_keys_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(MINIMAL_YAML + "admin: {listen: 127.0.0.1:9902}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    assert "duplicate key 'admin'" in str(caught.value)
    assert caught.value.errors[0].path == f"{path}:4:1"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "empty"), ("- a\n- b\n", "top level must be a mapping"), ("just text\n", "mapping")],
)
def test_non_mapping_files(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    assert fragment in str(caught.value)


def test_unreadable_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path / "missing.yaml"), environ={})
    assert "cannot read" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path), environ={})
    assert "cannot read" in str(caught.value)
    (tmp_path / "latin1.yaml").write_bytes(b"log_level: \xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path / "latin1.yaml"), environ={})
    assert "UTF-8" in str(caught.value)


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(MINIMAL_YAML)
    config = load_config(None, environ={"MESHKIT_CONFIG": str(path)})
    assert "backend" in config.clusters
    with pytest.raises(ConfigError, match="MESHKIT_CONFIG"):
        load_config(None, environ={})


# --------------------------------------------------------------------------- env overrides


def test_env_overrides_fields_case_insensitively() -> None:
    config = parse(
        minimal(),
        {
            "MESHKIT_ADMIN__LISTEN": "127.0.0.1:9902",
            "meshkit_Clusters__BACKEND__Target": "static:///10.0.0.1:80",
            "MESHKIT_LOG_LEVEL": "debug",
            "MESHKIT_CLUSTERS__BACKEND__RETRY__MAX_ATTEMPTS": "4",
            "MESHKIT_CLUSTERS__BACKEND__RETRY__RETRYABLE_STATUS_CODES": "[UNAVAILABLE, INTERNAL]",
            "MESHKIT_CONFIG": "/ignored/as/an/override.yaml",
            "PATH": "/usr/bin",
        },
    )
    assert config.admin.listen == ListenAddress("127.0.0.1", 9902)
    assert config.clusters["backend"].target == "static:///10.0.0.1:80"
    assert config.log_level == "debug"
    retry = config.clusters["backend"].retry
    assert retry is not None and retry.max_attempts == 4
    assert retry.retryable_status_codes == ("UNAVAILABLE", "INTERNAL")


def test_env_overrides_can_add_sections_and_index_lists() -> None:
    config = parse(
        minimal(),
        {
            "MESHKIT_CLUSTERS__OTHER": "{target: 'static:///10.0.0.2:80'}",
            "MESHKIT_CLUSTERS__OTHER__LB_POLICY": "pick_first",  # deeper: applied after
            "MESHKIT_OUTBOUND__ROUTES__0__CLUSTER": "other",
            "MESHKIT_OUTBOUND__ROUTES__0__TIMEOUT": "250ms",
        },
    )
    assert config.clusters["other"].lb_policy == "pick_first"
    assert config.outbound is not None
    assert config.outbound.routes[0] == Route("/", "other", Duration(0.25))


def test_env_override_errors_name_the_variable() -> None:
    errors = errors_of(
        minimal(),
        {
            "MESHKIT_CLUSTERS__BACKEND__RETRY__MAX_ATTEMPTS": "9",
            "MESHKIT_ADMIN__LISTN": "127.0.0.1:1",
            "MESHKIT_WORKERS__X": "1",
            "MESHKIT_TELEMETRY__TRACING__SAMPLE_RATIO": "[",
            "MESHKIT_ADMIN__LISTEN__PORT": "1",
            "MESHKIT_OUTBOUND__ROUTES__5__CLUSTER": "x",
            "MESHKIT_OUTBOUND____LISTEN": "x",
        },
    )
    text = [str(e) for e in errors]
    assert (
        "clusters.backend.retry.max_attempts: must be 2..5 (got 9)"
        " (set by MESHKIT_CLUSTERS__BACKEND__RETRY__MAX_ATTEMPTS)"
    ) in text
    assert any(
        e.path == "admin.listn" and e.message.endswith("(set by MESHKIT_ADMIN__LISTN)")
        for e in errors
    )
    by_path = {e.path: e.message for e in errors}
    assert "not a valid YAML value" in by_path["MESHKIT_TELEMETRY__TRACING__SAMPLE_RATIO"]
    assert "not a mapping" in by_path["MESHKIT_ADMIN__LISTEN__PORT"]
    assert "no index '5'" in by_path["MESHKIT_OUTBOUND__ROUTES__5__CLUSTER"]
    assert "non-empty parts" in by_path["MESHKIT_OUTBOUND____LISTEN"]
    assert by_path["workers"] == "must be an integer (got {'x': 1}) (set by MESHKIT_WORKERS__X)"


def test_env_variables_of_other_tools_are_ignored_but_section_typos_are_not() -> None:
    config = parse(minimal(), {"MESHKIT_SKIP_DEPLOY_TOOLS": "1"})
    assert config == parse(minimal())
    errors = errors_of(minimal(), {"MESHKIT_ADMN__LISTEN": "127.0.0.1:1"})
    assert errors == [FieldError("MESHKIT_ADMN__LISTEN", "no config section 'admn'; 'admin'?")]


def test_env_override_can_make_a_valid_config_invalid() -> None:
    errors = errors_of(minimal(), {"MESHKIT_OUTBOUND__LISTEN": "127.0.0.1:9901"})
    assert [str(e) for e in errors] == [
        "outbound.listen: 127.0.0.1:9901 collides with admin.listen (127.0.0.1:9901)"
        " (set by MESHKIT_OUTBOUND__LISTEN)"
    ]


def test_env_overrides_do_not_mutate_the_input() -> None:
    raw = minimal()
    before = copy.deepcopy(raw)
    parse(raw, {"MESHKIT_ADMIN__LISTEN": "127.0.0.1:9902"})
    assert raw == before


def test_empty_override_value_is_null() -> None:
    raw = merged(minimal(), {"clusters": {"backend": {"retry": {"max_attempts": 3}}}})
    config = parse(raw, {"MESHKIT_CLUSTERS__BACKEND__RETRY": ""})
    assert config.clusters["backend"].retry is None


# --------------------------------------------------------------------------- value types


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("50ms", 0.05),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        (" 10s ", 10.0),
        (".5s", 0.5),
        ("5", 5.0),
        (3, 3.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_duration_parse(text: object, seconds: float) -> None:
    parsed = Duration.parse(text)
    assert isinstance(parsed, float) and parsed == seconds
    assert Duration.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    "bad", ["5x", "-1s", -1, "1.5.s", "", "s", "1 s", True, None, [1], math.inf, math.nan]
)
def test_duration_parse_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        Duration.parse(bad)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.05, "50ms"),
        (1.5, "1.5s"),
        (120, "2m"),
        (3600, "1h"),
        (90, "90s"),
        (0, "0s"),
        (1e-05, "1e-05s"),
        (1.1, "1.1s"),
    ],
)
def test_duration_str(seconds: float, text: str) -> None:
    assert str(Duration(seconds)) == text
    assert Duration.parse(text) == seconds


def test_duration_ms() -> None:
    assert Duration.parse("1.5s").ms == 1500 and Duration.parse("50ms").ms == 50


def test_addresses() -> None:
    assert ListenAddress.parse("127.0.0.1:0") == ListenAddress("127.0.0.1", 0)
    assert HostPort.parse("[2001:db8::1]:443").host == "2001:db8::1"
    assert str(HostPort("2001:db8::1", 443)) == "[2001:db8::1]:443"
    assert str(ListenAddress.parse("localhost:80")) == "localhost:80"
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        HostPort.parse("127.0.0.1:0")
    with pytest.raises(ValueError, match="IPv6"):
        HostPort.parse("[nothex]:80")
    assert ListenAddress("0.0.0.0", 80).overlaps(ListenAddress("127.0.0.1", 80))
    assert not ListenAddress("127.0.0.1", 0).overlaps(ListenAddress("127.0.0.1", 0))


def test_keepalive_grpc_options() -> None:
    client = KeepaliveConfig(time=Duration(300), timeout=Duration(20), permit_without_calls=True)
    assert dict(client.to_grpc_options("client")) == {
        "grpc.keepalive_time_ms": 300_000,
        "grpc.keepalive_timeout_ms": 20_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
    }
    server = ServerKeepaliveConfig(min_ping_interval=Duration(60))
    options = dict(server.to_grpc_options("server"))
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 60_000
    assert options["grpc.keepalive_permit_without_calls"] == 0
    assert "grpc.http2.min_ping_interval_without_data_ms" not in dict(
        server.to_grpc_options("client")
    )
    assert all(isinstance(v, int) for _, v in server.to_grpc_options("server"))


def test_retry_section_gives_the_balancers_policy() -> None:
    retry = RetryConfig(
        max_attempts=4,
        retryable_status_codes=("unavailable", "ABORTED"),
        initial_backoff=Duration(0.05),
        max_backoff=Duration(0.15),
        backoff_multiplier=0.5,
    )
    assert retry.policy() == balancers.RetryPolicy(
        max_attempts=4,
        retryable_codes=frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}),
        initial_backoff=0.05,
        max_backoff=0.15,
        backoff_multiplier=0.5,
    )
    policy = RetryConfig(initial_backoff=Duration(0.05), max_backoff=Duration(0.15)).policy()
    assert [policy.backoff_ceiling(n) for n in (1, 2, 3)] == pytest.approx([0.05, 0.1, 0.15])
    # the section's bounds are the policy's: every accepted extreme builds a policy
    for attempts in (2, 5):
        assert RetryConfig(max_attempts=attempts, backoff_multiplier=100).policy().max_attempts


# --------------------------------------------------------------------------- dumps and warnings


def test_redaction_hides_key_and_token_paths_and_never_holds_contents(full_dir: Path) -> None:
    config = load_config(str(full_dir / "sidecar.yaml"), environ={})
    shown = config.to_dict(redact=True)
    assert shown["inbound"]["tls"]["key"] == REDACTED
    assert shown["inbound"]["auth"]["tokens_file"] == REDACTED
    assert shown["clusters"]["echo"]["tls"]["key"] == REDACTED
    assert shown["inbound"]["tls"]["cert"] == str(full_dir / "certs" / "tls.crt")
    assert str(full_dir / "certs" / "tls.key") not in repr(shown)
    assert str(full_dir / "tokens") not in repr(shown)
    assert shown == config.to_dict()  # redaction is the default
    raw = config.to_dict(redact=False)
    assert raw["inbound"]["tls"]["key"] == str(full_dir / "certs" / "tls.key")
    for dumped in (shown, raw):
        assert TOKEN not in repr(dumped)
    assert TOKEN not in repr(config)


def test_redacted_none_stays_none() -> None:
    config = parse(merged(minimal(), {"clusters": {"backend": {"tls": {"server_name": "x"}}}}))
    assert config.to_dict()["clusters"]["backend"]["tls"]["key"] is None


def test_warnings_for_risky_but_valid_settings() -> None:
    raw = merged(
        minimal(),
        {
            "clusters": {
                "backend": {"keepalive": {"time": "30s"}},
                "unused": {"target": "static:///127.0.0.1:1"},
            },
            "drain": {"grace_period": "60s"},
        },
    )
    paths = {w.path for w in parse(raw).warnings()}
    assert paths == {"clusters.backend.keepalive.time", "clusters.unused", "drain"}


def test_lb_config_is_checked_by_the_policy_itself() -> None:
    def cluster(**fields: Any) -> dict[str, Any]:
        return merged(minimal(), {"clusters": {"backend": {"target": "127.0.0.1:1", **fields}}})

    config = parse_config(
        cluster(lb_policy="pick_first", lb_config={"shuffle_address_list": True}), {}
    )
    assert dict(config.clusters["backend"].lb_config) == {"shuffle_address_list": True}
    assert config.to_dict()["clusters"]["backend"]["lb_config"] == {"shuffle_address_list": True}
    assert errors_of(cluster(lb_policy="round_robin", lb_config={"x": 1})) == [
        FieldError("clusters.backend.lb_config", "policy round_robin takes no config (got x)")
    ]
    assert [e.path for e in errors_of(cluster(lb_policy="pick_first", lb_config=[1]))] == [
        "clusters.backend.lb_config"
    ]
    # weighted_round_robin is known without being listed anywhere in the config module
    assert parse_config(cluster(lb_policy="weighted_round_robin"), {}).clusters["backend"]
