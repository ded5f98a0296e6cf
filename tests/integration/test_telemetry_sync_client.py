"""The sync client interceptors against a real grpc.aio server (its loop in another thread)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.trace import SpanKind, StatusCode

from telemetry import (
    Filter,
    aio,
    client_interceptors,
    health_check,
    negate,
)
from tests.integration.test_telemetry_interceptors import (
    SERVICE,
    Side,
    count,
    handled,
    make_side,
)
from tests.support.echo import EchoRequest, EchoStub, echo_servers_in_thread
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.timeout(60)

NO_HEALTH = negate(health_check())


@dataclass
class SyncPair:
    client: Side
    server: Side
    address: str
    stub: EchoStub

    def channel(self, filter_: Filter) -> grpc.Channel:
        """Another intercepted channel to the same server, recording into ``client``."""
        interceptors = client_interceptors(self.client.metrics, self.client.provider, filter_)
        return grpc.intercept_channel(grpc.insecure_channel(self.address), *interceptors)


@pytest.fixture
def pair() -> Iterator[SyncPair]:
    client, server = make_side("client"), make_side("server")
    interceptor = aio.server_interceptor(server.metrics, server.provider, NO_HEALTH)
    with echo_servers_in_thread("a", health=True, interceptors=[interceptor]) as (echo,):
        channel = grpc.intercept_channel(
            grpc.insecure_channel(echo.address),
            *client_interceptors(client.metrics, client.provider),
        )
        with channel:
            yield SyncPair(client, server, echo.address, EchoStub(channel))


def finished(pair: SyncPair, spans: int) -> None:
    """Wait for both sides to record ``spans`` calls (done callbacks run on grpc's threads)."""
    wait_until_sync(
        lambda: len(pair.client.spans()) == len(pair.server.spans()) == spans,
        message=f"{spans} spans on each side",
    )


def test_all_four_kinds_and_a_failure(pair: SyncPair) -> None:
    stub = pair.stub
    assert stub.Unary(EchoRequest(message="u"), timeout=5).message == "u"
    reply, call = stub.Unary.with_call(EchoRequest(message="w"), timeout=5)
    assert reply.message == "w" and call.code() is grpc.StatusCode.OK
    assert stub.Unary.future(EchoRequest(message="f"), timeout=5).result().message == "f"
    stream = stub.ServerStream(EchoRequest(message="s", count=3), timeout=5)
    assert [r.message for r in stream] == ["s#0", "s#1", "s#2"]
    assert stream.code() is grpc.StatusCode.OK  # the call's API is still there
    requests = iter([EchoRequest(message="a"), EchoRequest(message="b")])
    assert stub.ClientStream(requests, timeout=5).message == "a,b"
    bidi = stub.BidiStream(iter([EchoRequest(message=m) for m in "xyz"]), timeout=5)
    assert [r.message for r in bidi] == ["x", "y", "z"]
    with pytest.raises(grpc.RpcError) as err:
        stub.Unary(EchoRequest(message="nope", fail_code=5), timeout=5)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND

    finished(pair, 7)
    client, server = pair.client, pair.server
    expected = {
        ("unary", "Unary", "OK"): 3,
        ("unary", "Unary", "NotFound"): 1,
        ("server_stream", "ServerStream", "OK"): 1,
        ("client_stream", "ClientStream", "OK"): 1,
        ("bidi_stream", "BidiStream", "OK"): 1,
    }
    for side in (client, server):
        assert {labels: handled(side, *labels) for labels in expected} == expected
        assert count(side, "started_total", "unary", "Unary") == 4
        assert count(side, "handling_seconds_count", "unary", "Unary") == 4
    assert count(client, "msg_sent_total", "unary", "Unary") == 4
    assert count(client, "msg_received_total", "unary", "Unary") == 3  # none for the failure
    assert count(client, "msg_received_total", "server_stream", "ServerStream") == 3
    assert count(client, "msg_sent_total", "client_stream", "ClientStream") == 2
    assert count(server, "msg_received_total", "client_stream", "ClientStream") == 2
    assert count(client, "msg_sent_total", "bidi_stream", "BidiStream") == 3
    assert count(client, "msg_received_total", "bidi_stream", "BidiStream") == 3

    failed = [s for s in client.spans() if s.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1 and failed[0].attributes is not None
    assert failed[0].attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]


def test_server_span_is_child_of_client_span(pair: SyncPair) -> None:
    reply = pair.stub.Unary(EchoRequest(message="u"), metadata=(("x-app", "1"),), timeout=5)
    assert "x-app=1" in reply.metadata
    assert any(m.startswith("traceparent=00-") for m in reply.metadata)
    finished(pair, 1)
    (client_span,) = pair.client.spans()
    (server_span,) = pair.server.spans()
    assert client_span.kind is SpanKind.CLIENT and server_span.kind is SpanKind.SERVER
    assert client_span.name == server_span.name == f"{SERVICE}/Unary"
    assert client_span.attributes is not None
    assert client_span.attributes["rpc.service"] == SERVICE
    assert client_span.attributes["rpc.grpc.status_code"] == 0
    assert client_span.status.status_code is StatusCode.UNSET
    assert client_span.context is not None and server_span.parent is not None
    assert server_span.parent.is_remote
    assert server_span.parent.span_id == client_span.context.span_id
    assert server_span.parent.trace_id == client_span.context.trace_id


def test_streaming_status_is_recorded_when_the_call_ends(pair: SyncPair) -> None:
    client = pair.client
    # the server waits before its first message: creating the iterator ends nothing
    stream = pair.stub.ServerStream(EchoRequest(message="s", count=2, delay_s=0.3), timeout=5)
    assert count(client, "started_total", "server_stream", "ServerStream") == 1
    assert handled(client, "server_stream", "ServerStream", "OK") == 0
    assert client.spans() == []
    assert [r.message for r in stream] == ["s#0", "s#1"]
    wait_until_sync(lambda: handled(client, "server_stream", "ServerStream", "OK") == 1)

    slow = pair.stub.ServerStream(EchoRequest(message="s", delay_s=5), timeout=10)
    slow.cancel()
    with pytest.raises(grpc.RpcError):
        next(slow)
    wait_until_sync(lambda: handled(client, "server_stream", "ServerStream", "Canceled") == 1)

    with pytest.raises(grpc.RpcError) as late:
        list(pair.stub.BidiStream(iter([EchoRequest(message="b", delay_s=5)]), timeout=0.2))
    assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until_sync(lambda: handled(client, "bidi_stream", "BidiStream", "DeadlineExceeded") == 1)
    wait_until_sync(lambda: len(client.spans()) == 3)
    assert [s.status.status_code for s in client.spans()] == [
        StatusCode.UNSET,
        StatusCode.ERROR,
        StatusCode.ERROR,
    ]


def test_filtered_calls_are_not_instrumented(pair: SyncPair) -> None:
    with pair.channel(NO_HEALTH) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reply = EchoStub(channel).Unary(EchoRequest(message="e"), timeout=5)
        assert any(m.startswith("traceparent=") for m in reply.metadata)
    finished(pair, 1)
    client = pair.client
    assert [s.name for s in client.spans()] == [f"{SERVICE}/Unary"]
    labels = {"grpc_type": "unary", "grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
    assert client.registry.get_sample_value("grpc_client_started_total", labels) is None
    assert handled(client, "unary", "Unary", "OK") == 1
