"""Tracer provider settings, trace-context propagation helpers and filters (no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import Histogram, Sum
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

from sidecar.config import ConfigError, SidecarConfig, TracingConfig, parse_config

# Reaches inside: the Envoy tracer config must follow the same OTLP rules as the library.
from sidecar.envoy._translate_listeners import _tracing, otlp_cluster
from telemetry import (
    GrpcMetrics,
    any_of,
    extract_context,
    health_check,
    inject_context,
    method_prefix,
    negate,
    otlp,
    tracer_provider_from_settings,
)
from telemetry.interceptors import all_of
from telemetry.otel_metrics import metrics_data
from telemetry.tracing import (
    SERVER_FAULT_CODES,
    client_attempt_span,
    end_rpc_span,
    is_loopback_endpoint,
    peer_attributes,
    server_attributes,
    status_of,
)


def _processors(provider: TracerProvider) -> list[object]:
    # The SDK keeps processors in a private multi-processor; no public accessor exists.
    return list(provider._active_span_processor._span_processors)


def test_sampler_is_parent_based_ratio() -> None:
    provider = tracer_provider_from_settings(None, 0.25, "svc")
    sampler = provider.sampler
    assert isinstance(sampler, ParentBased)
    assert isinstance(sampler._root, TraceIdRatioBased)
    assert sampler._root.rate == 0.25
    assert provider.resource.attributes["service.name"] == "svc"
    assert _processors(provider) == []  # nothing to export to


@pytest.mark.parametrize(
    ("endpoint", "insecure"),
    [("127.0.0.1:4317", True), ("localhost:4317", True), ("otel.example:4317", False)],
)
def test_otlp_endpoint_adds_batch_exporter(endpoint: str, insecure: bool) -> None:
    provider = tracer_provider_from_settings(endpoint, 1.0, "svc")
    try:
        (processor,) = _processors(provider)
        assert isinstance(processor, BatchSpanProcessor)
        exporter = processor._batch_processor._exporter
        assert isinstance(exporter, OTLPSpanExporter)
        assert is_loopback_endpoint(endpoint) is insecure
    finally:
        provider.shutdown()


def test_no_global_provider_unless_asked() -> None:
    before = trace.get_tracer_provider()
    tracer_provider_from_settings(None, 1.0, "svc")
    assert trace.get_tracer_provider() is before


def test_sample_ratio_is_validated() -> None:
    with pytest.raises(ValueError, match="sample_ratio"):
        tracer_provider_from_settings(None, 1.5, "svc")


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("127.0.0.1:4317", True),
        ("[::1]:4317", True),
        ("http://localhost:4317", True),
        ("127.0.0.5:4317", True),
        ("10.0.0.1:4317", False),
        ("https://collector.example:4317", False),
    ],
)
def test_loopback_detection(endpoint: str, loopback: bool) -> None:
    assert is_loopback_endpoint(endpoint) is loopback


def test_inject_then_extract_round_trip() -> None:
    provider = TracerProvider()
    span = provider.get_tracer("t").start_span("client")
    metadata: list[tuple[str, object]] = [("x-other", "1"), ("traceparent", "00-stale-stale-01")]
    inject_context(metadata, trace.set_span_in_context(span))
    traceparents = [v for k, v in metadata if k == "traceparent"]
    assert len(traceparents) == 1  # the forwarded one was replaced, not duplicated
    assert ("x-other", "1") in metadata

    # bytes values (binary-looking metadata as some peers send it) are read too
    incoming = [(k, v.encode() if isinstance(v, str) else v) for k, v in metadata]
    remote = trace.get_current_span(extract_context(incoming)).get_span_context()
    assert remote.is_remote
    assert remote.trace_id == span.get_span_context().trace_id
    assert remote.span_id == span.get_span_context().span_id


def test_extract_without_headers_is_empty() -> None:
    ctx = extract_context(None)
    assert not trace.get_current_span(ctx).get_span_context().is_valid


def test_filters() -> None:
    health = "/grpc.health.v1.Health/Check"
    echo = "/meshkit.test.Echo/Unary"
    other = "/pkg.Other/Get"
    assert health_check()(health)
    assert not health_check()(echo)
    assert negate(health_check())(echo)
    assert not negate(health_check())(health)
    assert method_prefix("/meshkit.")(echo)
    assert not method_prefix("/meshkit.")(other)
    either = any_of(method_prefix("/meshkit."), method_prefix("/pkg."))
    assert either(echo) and either(other) and not either(health)
    both = all_of(method_prefix("/meshkit."), negate(health_check()))
    assert both(echo) and not both(other)


# -- RPC semantic conventions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:10.1.2.3:5678", {"network.peer.address": "10.1.2.3", "network.peer.port": 5678}),
        ("ipv6:%5B::1%5D:40000", {"network.peer.address": "::1", "network.peer.port": 40000}),
        ("ipv6:[fe80::1]:443", {"network.peer.address": "fe80::1", "network.peer.port": 443}),
        (
            "unix:/run/app.sock",
            {"network.peer.address": "/run/app.sock", "network.transport": "unix"},
        ),
        ("unix-abstract:meshkit", {"network.peer.address": "meshkit", "network.transport": "unix"}),
        ("", {}),
        (None, {}),
        ("garbage", {}),
        ("vsock:3:80", {}),
    ],
)
def test_peer_attributes(peer: str | None, expected: dict[str, object]) -> None:
    assert peer_attributes(peer) == expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:50051", {"server.address": "127.0.0.1", "server.port": 50051}),
        ("[::1]:8080", {"server.address": "::1", "server.port": 8080}),
        ("echo.default.svc:443", {"server.address": "echo.default.svc", "server.port": 443}),
        ("dns:///echo:50051", {"server.address": "echo", "server.port": 50051}),
        ("dns:echo:50051", {"server.address": "echo", "server.port": 50051}),
        ("dns://10.0.0.10:53/echo:50051", {"server.address": "echo", "server.port": 50051}),
        ("ipv4:10.0.0.1:1,10.0.0.2:2", {"server.address": "10.0.0.1", "server.port": 1}),
        ("ipv6:[::1]:7", {"server.address": "::1", "server.port": 7}),
        ("unix:///run/app.sock", {"server.address": "/run/app.sock"}),
        ("localhost", {"server.address": "localhost"}),
        (None, {}),
    ],
)
def test_server_attributes(address: str | None, expected: dict[str, object]) -> None:
    assert server_attributes(address) == expected


def _recorded() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.mark.parametrize("code", list(grpc.StatusCode))
def test_span_status_by_side(code: grpc.StatusCode) -> None:
    provider, exporter = _recorded()
    tracer = provider.get_tracer("t")
    end_rpc_span(tracer.start_span("s"), code, "the details", server=True)
    end_rpc_span(tracer.start_span("c"), code, "the details", server=False)
    server, client = exporter.get_finished_spans()
    for span in (server, client):
        assert span.attributes is not None
        assert span.attributes["rpc.grpc.status_code"] == code.value[0]
    ok = code is grpc.StatusCode.OK
    assert (client.status.status_code is StatusCode.ERROR) is not ok
    assert (server.status.status_code is StatusCode.ERROR) is (code in SERVER_FAULT_CODES)
    for span in (server, client):
        if span.status.status_code is StatusCode.ERROR:
            assert span.status.description == "the details"


def test_server_fault_codes_are_the_conventions_list() -> None:
    names = {c.name for c in SERVER_FAULT_CODES}
    assert names == {
        "UNKNOWN",
        "DEADLINE_EXCEEDED",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
    }


def test_status_of_errors() -> None:
    assert status_of(asyncio.CancelledError()) == (grpc.StatusCode.CANCELLED, "cancelled")
    assert status_of(ValueError("x")) == (grpc.StatusCode.UNKNOWN, "ValueError: x")

    class Wrapped(Exception):
        def __init__(self, error: BaseException) -> None:
            self.error = error

    class Failed(grpc.RpcError):  # type: ignore[misc]
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

        def details(self) -> str:
            return "connection refused"

    assert status_of(Failed()) == (grpc.StatusCode.UNAVAILABLE, "connection refused")
    assert status_of(Wrapped(Failed())) == (grpc.StatusCode.UNAVAILABLE, "connection refused")


def test_client_attempt_spans_are_children_of_the_forwarded_context() -> None:
    provider, exporter = _recorded()
    tracer = provider.get_tracer("t")
    server_span = tracer.start_span("proxy", kind=trace.SpanKind.SERVER)
    forwarded = inject_context([("x-app", "1")], trace.set_span_in_context(server_span))
    with client_attempt_span(tracer, "/pkg.Svc/Get", "dns:///svc:50051", 1, forwarded) as first:
        first.set_status(grpc.StatusCode.UNAVAILABLE, "connection refused")
    with client_attempt_span(
        tracer, "/pkg.Svc/Get", "dns:///svc:50051", 2, forwarded, cluster="svc"
    ) as second:
        pass
    server_span.end()
    one, two, _ = exporter.get_finished_spans()
    assert server_span.get_span_context() is not None
    for span, attempt in ((one, 1), (two, 2)):
        assert span.kind is trace.SpanKind.CLIENT
        assert span.name == "pkg.Svc/Get"
        assert span.parent is not None
        assert span.parent.span_id == server_span.get_span_context().span_id
        assert span.attributes is not None
        assert span.attributes["meshkit.attempt"] == attempt
        assert span.attributes["server.address"] == "svc"
        assert span.attributes["server.port"] == 50051
        assert span.attributes["rpc.service"] == "pkg.Svc"
    assert one.status.status_code is StatusCode.ERROR
    assert one.status.description == "connection refused"
    assert two.status.status_code is StatusCode.UNSET
    assert two.attributes is not None and two.attributes["meshkit.cluster"] == "svc"
    # each attempt sends its own span as the upstream's parent, the other headers untouched
    for sent, span in ((first, one), (second, two)):
        assert ("x-app", "1") in sent.headers
        parent = trace.get_current_span(extract_context(sent.headers)).get_span_context()
        assert span.context is not None and parent.span_id == span.context.span_id


def test_client_attempt_span_records_the_exception_leaving_it() -> None:
    provider, exporter = _recorded()
    tracer = provider.get_tracer("t")
    with pytest.raises(asyncio.CancelledError), client_attempt_span(tracer, "/p.S/M", "h:1", 1):
        raise asyncio.CancelledError
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert span.status.status_code is StatusCode.ERROR


def test_client_attempt_span_without_tracer_or_unsampled_changes_nothing() -> None:
    headers = (("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-00"),)
    with client_attempt_span(None, "/p.S/M", "h:1", 1, headers) as attempt:
        assert attempt.headers == headers
    # a caller that did not sample: the attempt is not recorded, the context goes on unchanged
    provider, exporter = _recorded()
    with client_attempt_span(provider.get_tracer("t"), "/p.S/M", "h:1", 1, headers) as attempt:
        assert attempt.headers == headers
    assert exporter.get_finished_spans() == ()


# -- OTLP endpoints, protocols, headers and the OTEL_* variables ---------------------------------


@pytest.mark.parametrize(
    ("endpoint", "protocol", "secure", "url"),
    [
        ("127.0.0.1:4317", "grpc", False, "http://127.0.0.1:4317"),
        ("collector:4317", "grpc", True, "https://collector:4317"),
        (
            "http://collector.observability:4317",
            "grpc",
            False,
            "http://collector.observability:4317",
        ),
        ("https://127.0.0.1:4317", "grpc", True, "https://127.0.0.1:4317"),
        ("http://collector:4318", "http/protobuf", False, "http://collector:4318/v1/traces"),
        ("http://collector", "http/protobuf", False, "http://collector:80/v1/traces"),
        (
            "https://otel.example/otlp/v1/traces",
            "http/protobuf",
            True,
            "https://otel.example:443/otlp/v1/traces",
        ),
        ("[::1]:4318", "http/protobuf", False, "http://[::1]:4318/v1/traces"),
    ],
)
def test_otlp_target_rules(endpoint: str, protocol: str, secure: bool, url: str) -> None:
    target = otlp.otlp_target(endpoint, protocol)
    assert target.secure is secure
    assert target.url == url


def test_otlp_target_refuses_what_it_cannot_reach() -> None:
    for endpoint in ("ftp://x:1", "http://:4317", ""):
        with pytest.raises(ValueError):
            otlp.otlp_target(endpoint)
    with pytest.raises(ValueError, match="protocol"):
        otlp.otlp_target("127.0.0.1:4317", "http/json")


def test_parse_headers() -> None:
    assert otlp.parse_headers("Authorization=Bearer%20t0k,x-tenant = a=b ,") == {
        "authorization": "Bearer t0k",
        "x-tenant": "a=b",
    }
    with pytest.raises(ValueError) as err:
        otlp.parse_headers("ok=1,sekrit-token")
    assert "sekrit" not in str(err.value) and "entry 2" in str(err.value)


def test_otel_endpoint_variables() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}
    found = otlp.otel_endpoint(env, "traces", "http/protobuf")
    assert found == otlp.OtelVariable("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/v1/traces")
    assert otlp.otel_endpoint(env, "metrics", "grpc") == otlp.OtelVariable(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"
    )
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://t:4318/custom"
    found = otlp.otel_endpoint(env, "traces", "http/protobuf")
    assert found == otlp.OtelVariable("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318/custom")
    assert otlp.otel_endpoint({}, "traces", "grpc") is None


@pytest.mark.parametrize(
    ("env", "ratio"),
    [
        ({}, None),
        ({"OTEL_TRACES_SAMPLER": "always_on"}, "1.0"),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, "0.0"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, "0.25"),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}, "1.0"),
    ],
)
def test_otel_sample_ratio(env: dict[str, str], ratio: str | None) -> None:
    found = otlp.otel_sample_ratio(env)
    assert (found.value if found else None) == ratio


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_SAMPLER": "jaeger_remote"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
    ],
)
def test_otel_sample_ratio_errors_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"\$OTEL_TRACES_SAMPLER"):
        otlp.otel_sample_ratio(env)


def test_exporters_by_protocol_and_scheme() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    # http:// to a non-loopback collector is plaintext now (an in-cluster collector)
    provider = tracer_provider_from_settings("http://10.0.0.1:4317", 1.0, "svc")
    try:
        (processor,) = _processors(provider)
        exporter = processor._batch_processor._exporter  # type: ignore[attr-defined]
        assert isinstance(exporter, OTLPSpanExporter)
        assert exporter._endpoint == "10.0.0.1:4317"
        assert exporter._insecure is True
    finally:
        provider.shutdown()
    http = otlp.span_exporter(
        "http://10.0.0.1:4318", "http/protobuf", {"authorization": "Bearer t"}
    )
    try:
        assert isinstance(http, HttpSpanExporter)
        assert http._endpoint == "http://10.0.0.1:4318/v1/traces"
    finally:
        http.shutdown()  # type: ignore[no-untyped-call]


# -- the sidecar's settings: config precedence, redaction, the Envoy translation -----------------

_OTEL = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_METRIC_EXPORT_INTERVAL",
)


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean slate of OTEL_* variables, set per test."""
    for name in _OTEL:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _sidecar(telemetry: dict[str, object] | None = None) -> SidecarConfig:
    raw: dict[str, object] = {
        "outbound": {"listen": "127.0.0.1:15001", "routes": [{"prefix": "/", "cluster": "b"}]},
        "clusters": {"b": {"target": "static:///127.0.0.1:1"}},
        "telemetry": telemetry or {},
    }
    return parse_config(raw, {})


def test_defaults_without_otel_variables(otel_env: pytest.MonkeyPatch) -> None:
    tracing = _sidecar().telemetry.tracing
    assert tracing == TracingConfig(None, "grpc", None, 0.1, "meshkit-sidecar")
    assert type(tracing.sample_ratio) is float and type(tracing.protocol) is str


def test_otel_variables_apply_where_the_file_is_silent(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector.observability:4318")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    otel_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20s3cret")
    otel_env.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    otel_env.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    otel_env.setenv("OTEL_SERVICE_NAME", "checkout")
    config = _sidecar()
    tracing = config.telemetry.tracing
    assert tracing.otlp_endpoint == "http://otel-collector.observability:4318/v1/traces"
    assert tracing.protocol == "http/protobuf"
    assert dict(tracing.headers or {}) == {"authorization": "Bearer s3cret"}
    assert (tracing.sample_ratio, tracing.service_name) == (0.5, "checkout")
    # what `sidecar validate --print-config` and /config show: effective, credentials hidden
    shown = config.to_dict(redact=True)["telemetry"]["tracing"]
    assert shown["otlp_endpoint"] == "http://otel-collector.observability:4318/v1/traces"
    assert shown["headers"] == "<redacted>"
    assert "s3cret" not in repr(config.to_dict(redact=True))
    assert parse_config(config.to_dict(redact=False), {}) == config

    # the file wins over the variables, field by field
    written = _sidecar(
        {"tracing": {"otlp_endpoint": "127.0.0.1:4317", "protocol": "grpc", "sample_ratio": 0.1}}
    ).telemetry.tracing
    assert (written.otlp_endpoint, written.protocol, written.sample_ratio) == (
        "127.0.0.1:4317",
        "grpc",
        0.1,
    )
    assert written.service_name == "checkout"  # still silent in the file
    assert dict(written.headers or {}) == {"authorization": "Bearer s3cret"}


def test_the_traces_variables_win_over_the_generic_ones(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317")
    otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    tracing = _sidecar().telemetry.tracing
    assert (tracing.otlp_endpoint, tracing.protocol) == ("http://traces:4317", "grpc")


def test_traces_exporter_none_ignores_the_endpoint(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317")
    otel_env.setenv("OTEL_TRACES_EXPORTER", "none")
    assert _sidecar().telemetry.tracing.otlp_endpoint is None


def test_bad_otel_variables_are_errors_naming_them(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://collector")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    otel_env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key")
    otel_env.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    with pytest.raises(ConfigError) as err:
        _sidecar()
    text = str(err.value)
    for line in (
        "telemetry.tracing.otlp_endpoint: from $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:",
        "telemetry.tracing.protocol: from $OTEL_EXPORTER_OTLP_PROTOCOL:",
        "telemetry.tracing.headers: from $OTEL_EXPORTER_OTLP_HEADERS: entry 1",
        "telemetry.tracing.sample_ratio: $OTEL_TRACES_SAMPLER must be one of",
    ):
        assert line in text
    # the omitted section errs the same way as a written one
    with pytest.raises(ConfigError) as written:
        _sidecar({"tracing": {}})
    assert str(written.value) == text


def test_written_headers_are_checked_and_never_shown(otel_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as err:
        _sidecar({"tracing": {"otlp_endpoint": "127.0.0.1:4317", "headers": {"Bad Key": "pw1"}}})
    assert "telemetry.tracing.headers" in str(err.value) and "pw1" not in str(err.value)
    with pytest.raises(ConfigError, match="protocol: must be one of grpc, http/protobuf"):
        _sidecar({"tracing": {"otlp_endpoint": "127.0.0.1:4317", "protocol": "thrift"}})


def test_otel_metrics_settings(otel_env: pytest.MonkeyPatch) -> None:
    assert _sidecar().telemetry.otel_metrics.otlp_endpoint is None
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    otel_env.setenv("OTEL_METRIC_EXPORT_INTERVAL", "5000")
    # the endpoint variables turn metrics export on only with OTEL_METRICS_EXPORTER=otlp
    assert _sidecar().telemetry.otel_metrics.otlp_endpoint is None
    otel_env.setenv("OTEL_METRICS_EXPORTER", "otlp")
    metrics = _sidecar().telemetry.otel_metrics
    assert metrics.otlp_endpoint == "http://c:4318/v1/metrics"
    assert (metrics.protocol, metrics.interval) == ("http/protobuf", 5.0)
    written = _sidecar({"otel_metrics": {"otlp_endpoint": "127.0.0.1:4317", "interval": "15s"}})
    assert written.telemetry.otel_metrics.interval == 15.0
    with pytest.raises(ConfigError, match=r"otel_metrics\.interval: must be at least 1s"):
        _sidecar({"otel_metrics": {"otlp_endpoint": "127.0.0.1:4317", "interval": "10ms"}})


def _envoy(telemetry: dict[str, object]) -> tuple[dict[str, Any], dict[str, Any]]:
    tracing = _sidecar(telemetry).telemetry.tracing
    assert tracing.otlp_endpoint is not None
    return _tracing(tracing), otlp_cluster(tracing.otlp_endpoint, tracing.protocol)


def test_envoy_spawns_an_upstream_span_per_attempt(otel_env: pytest.MonkeyPatch) -> None:
    hcm_tracing, _ = _envoy({"tracing": {"otlp_endpoint": "127.0.0.1:4317", "sample_ratio": 1}})
    assert hcm_tracing["spawn_upstream_span"] is True
    assert hcm_tracing["random_sampling"] == {"value": 100.0}


def test_envoy_http_endpoint_in_cluster_is_plaintext(otel_env: pytest.MonkeyPatch) -> None:
    hcm_tracing, cluster = _envoy(
        {
            "tracing": {
                "otlp_endpoint": "http://otel-collector.observability:4317",
                "headers": {"x-tenant": "t1"},
            }
        }
    )
    assert "transport_socket" not in cluster
    assert cluster["type"] == "STRICT_DNS"
    assert "typed_extension_protocol_options" in cluster  # gRPC: HTTP/2
    service = hcm_tracing["provider"]["typed_config"]["grpc_service"]
    assert service["envoy_grpc"] == {"cluster_name": "meshkit|otlp"}
    assert service["initial_metadata"] == [{"key": "x-tenant", "value": "t1"}]


def test_envoy_otlp_http_service(otel_env: pytest.MonkeyPatch) -> None:
    hcm_tracing, cluster = _envoy(
        {
            "tracing": {
                "otlp_endpoint": "https://otel.example/otlp/v1/traces",
                "protocol": "http/protobuf",
                "headers": {"authorization": "Bearer t"},
            }
        }
    )
    typed_config = hcm_tracing["provider"]["typed_config"]
    assert "grpc_service" not in typed_config
    assert typed_config["http_service"] == {
        "http_uri": {
            "uri": "https://otel.example:443/otlp/v1/traces",
            "cluster": "meshkit|otlp",
            "timeout": "5s",
        },
        "request_headers_to_add": [{"header": {"key": "authorization", "value": "Bearer t"}}],
    }
    assert "typed_extension_protocol_options" not in cluster  # OTLP/HTTP: HTTP/1.1
    context = cluster["transport_socket"]["typed_config"]
    assert context["sni"] == "otel.example"
    assert context["common_tls_context"]["alpn_protocols"] == ["http/1.1"]


@pytest.mark.parametrize(
    ("endpoint", "tls"),
    [("collector:4317", True), ("127.0.0.1:4317", False), ("https://127.0.0.1:4317", True)],
)
def test_envoy_bare_endpoints_keep_the_loopback_rule(endpoint: str, tls: bool) -> None:
    assert ("transport_socket" in otlp_cluster(endpoint)) is tls


# -- the Prometheus families as OpenTelemetry metrics --------------------------------------------


def test_metrics_data_turns_cumulative_buckets_into_per_bucket_counts() -> None:
    registry = CollectorRegistry()
    metrics = GrpcMetrics(registry, "server", buckets=(0.1, 1.0))
    for seconds, code in ((0.05, grpc.StatusCode.OK), (0.5, grpc.StatusCode.OK)):
        started = metrics.start("/pkg.Svc/Get", "unary")
        metrics.done("/pkg.Svc/Get", "unary", code, started - seconds)
    started = metrics.start("/pkg.Svc/Get", "unary")
    metrics.done("/pkg.Svc/Get", "unary", grpc.StatusCode.UNAVAILABLE, started - 5.0)
    data = metrics_data(registry, Resource.create({"service.name": "s"}), start_time_unix_nano=1)
    (resource,) = data.resource_metrics
    (scope,) = resource.scope_metrics
    by_name = {m.name: m for m in scope.metrics}
    duration = by_name["rpc.server.call.duration"]
    assert duration.unit == "s"
    assert isinstance(duration.data, Histogram)
    (point,) = duration.data.data_points
    assert list(point.explicit_bounds) == [0.1, 1.0]
    assert list(point.bucket_counts) == [1, 1, 1]  # one per bucket, the last above 1 s
    assert point.count == 3 and point.sum >= 5.5
    assert point.attributes == {
        "rpc.system.name": "grpc",
        "rpc.method": "pkg.Svc/Get",
        "meshkit.grpc_type": "unary",
    }
    calls = by_name["meshkit.rpc.server.calls"]
    assert isinstance(calls.data, Sum) and calls.data.is_monotonic
    counts = {
        dict(p.attributes or {})["rpc.response.status_code"]: p.value
        for p in calls.data.data_points
    }
    assert counts == {"OK": 2, "UNAVAILABLE": 1}
    assert "rpc.client.call.duration" not in by_name  # no client family in this registry
