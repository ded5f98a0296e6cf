"""Tracer provider settings, trace-context propagation helpers and filters (no sockets)."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from telemetry import (
    any_of,
    extract_context,
    health_check,
    inject_context,
    method_prefix,
    negate,
    tracer_provider_from_settings,
)
from telemetry.interceptors import all_of
from telemetry.tracing import is_loopback_endpoint


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
