"""Interceptors on both sides of real loopback gRPC calls: metrics, spans, propagation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from telemetry import (
    GrpcMetrics,
    aio_client_interceptors,
    aio_server_interceptor,
    health_check,
    negate,
    server_interceptor,
)
from tests.support.echo import (
    EchoReply,
    EchoRequest,
    EchoServicer,
    EchoStub,
    aiter_requests,
    echo_pb2_grpc,
)

SERVICE = "meshkit.test.Echo"


@dataclass
class Side:
    registry: CollectorRegistry
    metrics: GrpcMetrics
    exporter: InMemorySpanExporter
    provider: TracerProvider

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


def make_side(side: str) -> Side:
    # client and server get their own registry and provider, as two processes would
    registry = CollectorRegistry()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Side(registry, GrpcMetrics(registry, side), exporter, provider)  # type: ignore[arg-type]


@dataclass
class Pair:
    client: Side
    server: Side
    stub: EchoStub
    channel: grpc.aio.Channel
    servicer: EchoServicer


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for ``cond``: calls are recorded from done callbacks, run when grpc is done with the
    call, which can be just after the other side has seen its end."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    client, server = make_side("client"), make_side("server")
    grpc_server = grpc.aio.server(
        interceptors=[aio_server_interceptor(server.metrics, server.provider)]
    )
    servicer = EchoServicer("a")
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        interceptors=aio_client_interceptors(client.metrics, client.provider),
    )
    try:
        yield Pair(client, server, EchoStub(channel), channel, servicer)
    finally:
        await channel.close()
        await grpc_server.stop(None)


def handled(side: Side, kind: str, method: str, code: str) -> float:
    return side.value(
        f"grpc_{side.metrics.side}_handled_total",
        grpc_type=kind,
        grpc_service=SERVICE,
        grpc_method=method,
        grpc_code=code,
    )


def count(side: Side, what: str, kind: str, method: str) -> float:
    return side.value(
        f"grpc_{side.metrics.side}_{what}",
        grpc_type=kind,
        grpc_service=SERVICE,
        grpc_method=method,
    )


async def test_all_four_kinds_are_counted_on_both_sides(pair: Pair) -> None:
    stub = pair.stub
    assert (await stub.Unary(EchoRequest(message="u"))).message == "u"
    replies = [r.message async for r in stub.ServerStream(EchoRequest(message="s", count=3))]
    assert replies == ["s#0", "s#1", "s#2"]
    assert (await stub.ClientStream(aiter_requests("a", "b"))).message == "a,b"
    bidi = [r.message async for r in stub.BidiStream(aiter_requests("x", "y", "z"))]
    assert bidi == ["x", "y", "z"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Unary(EchoRequest(message="nope", fail_code=grpc.StatusCode.NOT_FOUND.value[0]))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND

    client, server = pair.client, pair.server
    await eventually(lambda: len(client.spans()) == len(server.spans()) == 5)
    for side in (client, server):
        assert count(side, "started_total", "unary", "Unary") == 2
        assert handled(side, "unary", "Unary", "OK") == 1
        assert handled(side, "unary", "Unary", "NotFound") == 1
        assert count(side, "handling_seconds_count", "unary", "Unary") == 2
        assert handled(side, "server_stream", "ServerStream", "OK") == 1
        assert handled(side, "client_stream", "ClientStream", "OK") == 1
        assert handled(side, "bidi_stream", "BidiStream", "OK") == 1

    # messages: what one side sends, the other receives
    assert count(client, "msg_sent_total", "client_stream", "ClientStream") == 2
    assert count(server, "msg_received_total", "client_stream", "ClientStream") == 2
    assert count(server, "msg_sent_total", "server_stream", "ServerStream") == 3
    assert count(client, "msg_received_total", "server_stream", "ServerStream") == 3
    assert count(client, "msg_sent_total", "bidi_stream", "BidiStream") == 3
    assert count(server, "msg_sent_total", "bidi_stream", "BidiStream") == 3
    assert count(client, "msg_received_total", "bidi_stream", "BidiStream") == 3
    assert count(client, "msg_received_total", "unary", "Unary") == 1  # the failed one had none


async def test_server_span_is_child_of_client_span(pair: Pair) -> None:
    await pair.stub.Unary(EchoRequest(message="u"))
    await eventually(lambda: len(pair.client.spans()) == len(pair.server.spans()) == 1)
    (client_span,) = pair.client.spans()
    (server_span,) = pair.server.spans()

    for span, kind in ((client_span, SpanKind.CLIENT), (server_span, SpanKind.SERVER)):
        assert span.name == f"{SERVICE}/Unary"
        assert span.kind is kind
        assert span.attributes is not None
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.service"] == SERVICE
        assert span.attributes["rpc.method"] == "Unary"
        assert span.attributes["rpc.grpc.status_code"] == 0
        assert span.status.status_code is StatusCode.UNSET

    assert client_span.context is not None and server_span.parent is not None
    assert server_span.parent.is_remote
    assert server_span.parent.span_id == client_span.context.span_id
    assert server_span.context is not None
    assert server_span.context.trace_id == client_span.context.trace_id


async def test_failing_call_marks_spans_as_errors(pair: Pair) -> None:
    code = grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError):
        await pair.stub.Unary(EchoRequest(message="denied", fail_code=code.value[0]))
    await eventually(lambda: len(pair.client.spans()) == len(pair.server.spans()) == 1)
    for span in (*pair.client.spans(), *pair.server.spans()):
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["rpc.grpc.status_code"] == code.value[0]


async def test_deadline_and_cancellation_codes(pair: Pair) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pair.stub.Unary(EchoRequest(message="slow", delay_s=5), timeout=0.2)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # the client gives up first: wait for the server to be done with it (servicer.active)
    await eventually(lambda: handled(pair.server, "unary", "Unary", "DeadlineExceeded") == 1)

    call = pair.stub.Unary(EchoRequest(message="slow", delay_s=5))
    await eventually(lambda: pair.servicer.active == 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    bidi = pair.stub.BidiStream()
    await bidi.write(EchoRequest(message="one"))
    assert (await bidi.read()).message == "one"
    await bidi.write(EchoRequest(message="two", delay_s=5))
    # The server runs on this loop: once it has taken the second request, it is sleeping.
    # (A cancellation racing a handler's normal return is recorded with the handler's status:
    # grpc.aio tells the server nothing more.)
    await eventually(
        lambda: count(pair.server, "msg_received_total", "bidi_stream", "BidiStream") == 2
    )
    bidi.cancel()

    client, server = pair.client, pair.server
    await eventually(lambda: handled(server, "bidi_stream", "BidiStream", "Canceled") == 1)
    await eventually(lambda: handled(client, "bidi_stream", "BidiStream", "Canceled") == 1)
    await eventually(lambda: handled(server, "unary", "Unary", "Canceled") == 1)
    await eventually(lambda: handled(client, "unary", "Unary", "Canceled") == 1)
    assert len(server.spans()) == 3  # every call's span ended, the cancelled ones' too
    assert handled(client, "unary", "Unary", "DeadlineExceeded") == 1
    assert handled(server, "unary", "Unary", "DeadlineExceeded") == 1


async def test_write_style_streaming_does_not_wait_for_the_interceptor(pair: Pair) -> None:
    # call.write() waits for the client interceptors to return: they must not await the end
    call = pair.stub.ClientStream()
    await call.write(EchoRequest(message="a"))
    await call.write(EchoRequest(message="b"))
    await call.done_writing()
    assert (await asyncio.wait_for(call, 5)).message == "a,b"

    bidi = pair.stub.BidiStream()
    await bidi.write(EchoRequest(message="x"))
    assert (await asyncio.wait_for(bidi.read(), 5)).message == "x"
    await bidi.done_writing()
    assert await bidi.read() is grpc.aio.EOF
    assert await bidi.code() is grpc.StatusCode.OK
    await eventually(lambda: len(pair.client.spans()) == len(pair.server.spans()) == 2)
    assert count(pair.client, "msg_sent_total", "client_stream", "ClientStream") == 2


async def test_trailing_metadata_survives_interception(pair: Pair) -> None:
    call = pair.stub.Unary(EchoRequest(message="m"), metadata=(("x-app", "1"),))
    reply = await call
    assert ("x-echo-trailer", "a") in tuple(await call.trailing_metadata())
    assert "x-app=1" in reply.metadata
    assert any(m.startswith("traceparent=00-") for m in reply.metadata)


async def test_filtered_calls_are_not_instrumented() -> None:
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    client, server = make_side("client"), make_side("server")
    no_health = negate(health_check())
    grpc_server = grpc.aio.server(
        interceptors=[aio_server_interceptor(server.metrics, server.provider, no_health)]
    )
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer("a"), grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    interceptors = aio_client_interceptors(client.metrics, client.provider, no_health)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            echo = await EchoStub(ch).Unary(EchoRequest(message="e"))
            assert any(m.startswith("traceparent=") for m in echo.metadata)
            await eventually(lambda: len(client.spans()) == len(server.spans()) == 1)
    finally:
        await grpc_server.stop(None)

    for side in (client, server):
        assert [s.name for s in side.spans()] == [f"{SERVICE}/Unary"]
        health_labels = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check"}
        name = f"grpc_{side.metrics.side}_started_total"
        assert side.registry.get_sample_value(name, {"grpc_type": "unary", **health_labels}) is None


def _sync_unary(request: object, context: grpc.ServicerContext) -> object:
    if request.fail_code:  # type: ignore[attr-defined]
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad")
    return EchoReply(message=request.message, server="sync")  # type: ignore[attr-defined]


def _sync_server_stream(request: object, context: grpc.ServicerContext) -> Iterator[object]:
    for i in range(request.count):  # type: ignore[attr-defined]
        yield EchoReply(message=str(i), server="sync")


async def test_sync_server_interceptor() -> None:
    client, server = make_side("client"), make_side("server")
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(
                _sync_unary, EchoRequest.FromString, EchoReply.SerializeToString
            ),
            "ServerStream": grpc.unary_stream_rpc_method_handler(
                _sync_server_stream, EchoRequest.FromString, EchoReply.SerializeToString
            ),
        },
    )
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        handlers=[handler],
        interceptors=[server_interceptor(server.metrics, server.provider)],
    )
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    interceptors = aio_client_interceptors(client.metrics, client.provider)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors) as ch:
            stub = EchoStub(ch)
            assert (await stub.Unary(EchoRequest(message="s"))).server == "sync"
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Unary(EchoRequest(message="s", fail_code=3))
            assert [r.message async for r in stub.ServerStream(EchoRequest(count=2))] == ["0", "1"]
            await eventually(lambda: len(client.spans()) == 3)
    finally:
        grpc_server.stop(None)

    assert handled(server, "unary", "Unary", "OK") == 1
    assert handled(server, "unary", "Unary", "InvalidArgument") == 1
    assert handled(server, "server_stream", "ServerStream", "OK") == 1
    assert count(server, "msg_sent_total", "server_stream", "ServerStream") == 2
    server_spans = {s.context.span_id: s for s in server.spans() if s.context}
    for span in client.spans():
        assert span.context is not None
        children = [
            s
            for s in server_spans.values()
            if s.parent and s.parent.span_id == span.context.span_id
        ]
        assert len(children) == 1
