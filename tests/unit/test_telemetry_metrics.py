"""GrpcMetrics against a fresh registry per test (no sockets)."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from telemetry import (
    BIDI_STREAM,
    UNARY,
    GrpcMetrics,
    code_label,
    split_method,
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def labels(method: str = "Get", kind: str = UNARY, **extra: str) -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": "pkg.Svc", "grpc_method": method, **extra}


def test_split_method() -> None:
    assert split_method("/pkg.Svc/Get") == ("pkg.Svc", "Get")
    assert split_method("/a.b.c.Svc/Get") == ("a.b.c.Svc", "Get")
    assert split_method("garbage") == ("unknown", "unknown")
    assert split_method("/Svc/") == ("unknown", "unknown")


def test_code_labels_use_go_spelling() -> None:
    assert code_label(grpc.StatusCode.OK) == "OK"
    assert code_label(grpc.StatusCode.CANCELLED) == "Canceled"
    assert code_label(grpc.StatusCode.DEADLINE_EXCEEDED) == "DeadlineExceeded"
    assert code_label(grpc.StatusCode.UNAVAILABLE) == "Unavailable"
    assert code_label(grpc.StatusCode.NOT_FOUND) == "NotFound"


def test_start_done_counts_and_observes(registry: CollectorRegistry) -> None:
    m = GrpcMetrics(registry, "server")
    t0 = m.start("/pkg.Svc/Get", UNARY)
    m.done("/pkg.Svc/Get", UNARY, grpc.StatusCode.OK, t0)
    t1 = m.start("/pkg.Svc/Get", UNARY)
    m.done("/pkg.Svc/Get", UNARY, grpc.StatusCode.UNAVAILABLE, t1)
    m.received("/pkg.Svc/Get", UNARY)
    m.sent("/pkg.Svc/Get", UNARY, 2)

    get = registry.get_sample_value
    assert get("grpc_server_started_total", labels()) == 2
    assert get("grpc_server_handled_total", labels(grpc_code="OK")) == 1
    assert get("grpc_server_handled_total", labels(grpc_code="Unavailable")) == 1
    assert get("grpc_server_handling_seconds_count", labels()) == 2
    assert get("grpc_server_handling_seconds_bucket", labels(le="10.0")) == 2
    assert get("grpc_server_msg_received_total", labels()) == 1
    assert get("grpc_server_msg_sent_total", labels()) == 2


def test_buckets_span_100us_to_10s(registry: CollectorRegistry) -> None:
    m = GrpcMetrics(registry, "client")
    m.done("/pkg.Svc/Get", UNARY, grpc.StatusCode.OK, m.start("/pkg.Svc/Get"))
    text = generate_latest(registry).decode()
    assert 'le="0.0001"' in text
    assert 'le="10.0"' in text


def test_client_and_server_share_a_registry(registry: CollectorRegistry) -> None:
    GrpcMetrics(registry, "client")
    GrpcMetrics(registry, "server")
    with pytest.raises(ValueError):
        GrpcMetrics(registry, "server")  # duplicate names are refused by prometheus_client


def test_side_is_validated(registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="side"):
        GrpcMetrics(registry, "proxy")  # type: ignore[arg-type]


def test_method_cardinality_is_capped(registry: CollectorRegistry) -> None:
    m = GrpcMetrics(registry, "server", max_methods=2)
    for i in range(5):
        m.start(f"/pkg.Svc/M{i}", BIDI_STREAM)
    get = registry.get_sample_value
    assert get("grpc_server_started_total", labels("M0", BIDI_STREAM)) == 1
    assert get("grpc_server_started_total", labels("M1", BIDI_STREAM)) == 1
    assert get("grpc_server_started_total", labels("M2", BIDI_STREAM)) is None
    unknown = {"grpc_type": BIDI_STREAM, "grpc_service": "unknown", "grpc_method": "unknown"}
    assert get("grpc_server_started_total", unknown) == 3
