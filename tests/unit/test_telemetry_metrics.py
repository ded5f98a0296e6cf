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


def test_scoped_metrics_carry_their_label_values(registry: CollectorRegistry) -> None:
    m = GrpcMetrics(registry, "server", labels=("direction", "cluster"))
    out = m.scope("outbound", "backend")
    assert m.scope("outbound", "backend") is out  # made once
    inbound = m.scope("inbound", "app")
    out.done("/pkg.Svc/Get", UNARY, grpc.StatusCode.OK, out.start("/pkg.Svc/Get", UNARY))
    out.received("/pkg.Svc/Get", UNARY, 3)
    inbound.done("/pkg.Svc/Get", UNARY, grpc.StatusCode.NOT_FOUND, inbound.start("/pkg.Svc/Get"))
    inbound.sent("/pkg.Svc/Get", UNARY, 2)
    get = registry.get_sample_value
    outbound_labels = labels(direction="outbound", cluster="backend")
    inbound_labels = labels(direction="inbound", cluster="app")
    assert get("grpc_server_started_total", outbound_labels) == 1
    assert get("grpc_server_handled_total", {**outbound_labels, "grpc_code": "OK"}) == 1
    assert get("grpc_server_handled_total", {**inbound_labels, "grpc_code": "NotFound"}) == 1
    assert get("grpc_server_handled_total", {**inbound_labels, "grpc_code": "OK"}) is None
    assert get("grpc_server_msg_received_total", outbound_labels) == 3
    assert get("grpc_server_msg_sent_total", inbound_labels) == 2
    assert get("grpc_server_handling_seconds_count", inbound_labels) == 1


def test_scope_needs_one_value_per_extra_label(registry: CollectorRegistry) -> None:
    m = GrpcMetrics(registry, "client", labels=("cluster",))
    with pytest.raises(ValueError, match="cluster"):
        m.scope("a", "b")
    with pytest.raises(ValueError):
        m.start("/pkg.Svc/Get")  # the direct API has no value for "cluster"


def test_method_cap_is_shared_by_scopes(registry: CollectorRegistry) -> None:
    m = GrpcMetrics(registry, "client", max_methods=1, labels=("cluster",))
    a, b = m.scope("a"), m.scope("b")
    a.start("/pkg.Svc/M0")
    b.start("/pkg.Svc/M0")  # the same name: no new slot
    b.start("/pkg.Svc/M1")
    get = registry.get_sample_value
    assert get("grpc_client_started_total", labels("M0", cluster="b")) == 1
    unknown = {"grpc_type": UNARY, "grpc_service": "unknown", "grpc_method": "unknown"}
    assert get("grpc_client_started_total", {**unknown, "cluster": "b"}) == 1
