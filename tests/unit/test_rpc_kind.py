"""``telemetry.rpc_kind.RpcKind``: the one call-kind type, its labels and its names."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry

import telemetry
from sidecar.config import RPC_KINDS
from telemetry.metrics import UNARY, GrpcMetrics
from telemetry.rpc_kind import RpcKind

CASES = [
    (RpcKind.UNARY_UNARY, "unary_unary", "unary", False, False),
    (RpcKind.UNARY_STREAM, "unary_stream", "server_stream", False, True),
    (RpcKind.STREAM_UNARY, "stream_unary", "client_stream", True, False),
    (RpcKind.STREAM_STREAM, "stream_stream", "bidi_stream", True, True),
]


@pytest.mark.parametrize(("kind", "name", "label", "requests", "responses"), CASES)
def test_names_labels_and_flags(
    kind: RpcKind, name: str, label: str, requests: bool, responses: bool
) -> None:
    assert kind.value == name == str(kind) and RpcKind(name) is kind
    assert kind.grpc_type == label
    assert (kind.request_streaming, kind.response_streaming) == (requests, responses)
    assert RpcKind.of(requests, responses) is kind
    # a table keyed by kinds answers a lookup by name, and the reverse
    assert {kind: 1}[name] == 1 and {name: 1}[kind] == 1


def test_one_type_everywhere() -> None:
    assert telemetry.RpcKind is RpcKind
    assert sorted(RPC_KINDS) == sorted(kind.value for kind in RpcKind)


def test_metrics_take_a_kind_or_its_label_into_the_same_series() -> None:
    registry = CollectorRegistry()
    metrics = GrpcMetrics(registry)
    method = "/pkg.Svc/Get"
    metrics.done(method, RpcKind.UNARY_UNARY, grpc.StatusCode.OK, metrics.start(method))
    metrics.done(method, UNARY, grpc.StatusCode.OK, metrics.start(method, UNARY))
    labels = {"grpc_type": "unary", "grpc_service": "pkg.Svc", "grpc_method": "Get"}
    assert registry.get_sample_value("grpc_server_started_total", labels) == 2
    streaming = {**labels, "grpc_type": "server_stream"}
    metrics.sent(method, RpcKind.UNARY_STREAM, 3)
    assert registry.get_sample_value("grpc_server_msg_sent_total", streaming) == 3
