"""Interceptors on both sides of real loopback gRPC calls: metrics, spans, propagation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from telemetry import (
    GrpcMetrics,
    aio,
    health_check,
    inject_context,
    negate,
    server_interceptor,
    tracer_provider_from_settings,
)
from telemetry.otel_metrics import OtelMetricsBridge
from telemetry.otlp import metric_exporter
from telemetry.tracing import client_attempt_span, start_client_attempt
from tests.support.echo import (
    EchoReply,
    EchoRequest,
    EchoServicer,
    EchoStub,
    aiter_requests,
    echo_pb2_grpc,
)
from tests.support.otlp_receiver import OtlpReceiver, start_otlp_receiver

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


class _LateAddressServer(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """``aio.server_interceptor`` built on the first call, once the bound port is known."""

    def __init__(self, side: Side, address: list[str]) -> None:
        self._side = side
        self._address = address
        self._inner: grpc.aio.ServerInterceptor | None = None

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        if self._inner is None:
            self._inner = aio.server_interceptor(
                self._side.metrics, self._side.provider, server_address=self._address[0]
            )
        return await self._inner.intercept_service(continuation, details)


@dataclass
class Pair:
    client: Side
    server: Side
    stub: EchoStub
    channel: grpc.aio.Channel
    servicer: EchoServicer
    address: str


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
    # the server's address is known only once bound: the interceptor reads it per call
    address: list[str] = []
    grpc_server = grpc.aio.server(interceptors=[_LateAddressServer(server, address)])
    servicer = EchoServicer("a")
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    address.append(f"127.0.0.1:{port}")
    await grpc_server.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        interceptors=aio.client_interceptors(
            client.metrics, client.provider, server_address=f"dns:///127.0.0.1:{port}"
        ),
    )
    try:
        yield Pair(client, server, EchoStub(channel), channel, servicer, address[0])
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


async def _fail(stub: EchoStub, method: str, code: grpc.StatusCode, details: str) -> None:
    request = EchoRequest(message=details, fail_code=code.value[0])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if method == "Unary":
            await stub.Unary(request)
        elif method == "ServerStream":
            _ = [r async for r in stub.ServerStream(request)]
        else:
            _ = [r async for r in stub.BidiStream(aiter_requests_of(request))]
    assert (err.value.code(), err.value.details()) == (code, details)


async def aiter_requests_of(*requests: object) -> AsyncIterator[object]:
    for request in requests:
        yield request


@pytest.mark.parametrize("method", ["Unary", "ServerStream", "BidiStream"])
@pytest.mark.parametrize(
    ("code", "server_error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.PERMISSION_DENIED, False),
        (grpc.StatusCode.NOT_FOUND, False),
        (grpc.StatusCode.INTERNAL, True),
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DATA_LOSS, True),
    ],
)
async def test_span_status_follows_rpc_conventions(
    pair: Pair, method: str, code: grpc.StatusCode, server_error: bool
) -> None:
    details = f"why {code.name} (ü)"
    await _fail(pair.stub, method, code, details)
    await eventually(lambda: len(pair.client.spans()) == len(pair.server.spans()) == 1)
    (client_span,) = pair.client.spans()
    (server_span,) = pair.server.spans()
    for span in (client_span, server_span):
        assert span.attributes is not None
        assert span.attributes["rpc.grpc.status_code"] == code.value[0]
        assert span.attributes["rpc.method"] == method
    # a client span fails with any non-OK code; a server span only with a server fault
    assert client_span.status.status_code is StatusCode.ERROR
    assert client_span.status.description == details
    if server_error:
        assert server_span.status.status_code is StatusCode.ERROR
        assert server_span.status.description == details  # not "Locally aborted."
    else:
        assert server_span.status.status_code is StatusCode.UNSET


async def test_unhandled_exception_is_an_unknown_server_fault() -> None:
    client, server = make_side("client"), make_side("server")

    class Broken(EchoServicer):
        async def Unary(self, request, context):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    grpc_server = grpc.aio.server(
        interceptors=[aio.server_interceptor(server.metrics, server.provider)]
    )
    echo_pb2_grpc.add_EchoServicer_to_server(Broken("b"), grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    interceptors = aio.client_interceptors(client.metrics, client.provider)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await EchoStub(ch).Unary(EchoRequest(message="x"))
            assert err.value.code() is grpc.StatusCode.UNKNOWN
            await eventually(lambda: len(client.spans()) == len(server.spans()) == 1)
    finally:
        await grpc_server.stop(None)
    (span,) = server.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "RuntimeError: boom"
    (client_span,) = client.spans()
    assert client_span.status.description == err.value.details()


async def test_address_attributes(pair: Pair) -> None:
    reply = await pair.stub.Unary(EchoRequest(message="u"))
    assert reply.message == "u"
    await eventually(lambda: len(pair.client.spans()) == len(pair.server.spans()) == 1)
    (client_span,) = pair.client.spans()
    (server_span,) = pair.server.spans()
    assert server_span.attributes is not None and client_span.attributes is not None
    port = server_span.attributes["server.port"]
    assert isinstance(port, int) and port > 0
    assert server_span.attributes["server.address"] == "127.0.0.1"
    # the client was told the gRPC target form: the same host and port
    assert client_span.attributes["server.address"] == "127.0.0.1"
    assert client_span.attributes["server.port"] == port
    # the caller's ephemeral address, as grpc reports the peer
    assert server_span.attributes["network.peer.address"] == "127.0.0.1"
    peer_port = server_span.attributes["network.peer.port"]
    assert isinstance(peer_port, int) and peer_port not in (0, port)


async def test_ipv6_peer_attributes() -> None:
    server = make_side("server")
    grpc_server = grpc.aio.server(interceptors=[aio.server_interceptor(None, server.provider)])
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer("6"), grpc_server)
    port = grpc_server.add_insecure_port("[::1]:0")
    if port == 0:
        pytest.skip("no IPv6 loopback here")
    await grpc_server.start()
    try:
        async with grpc.aio.insecure_channel(f"[::1]:{port}") as ch:
            await EchoStub(ch).Unary(EchoRequest(message="6"))
        await eventually(lambda: len(server.spans()) == 1)
    finally:
        await grpc_server.stop(None)
    (span,) = server.spans()
    assert span.attributes is not None
    assert span.attributes["network.peer.address"] == "::1"  # grpc writes ipv6:%5B::1%5D:port
    assert isinstance(span.attributes["network.peer.port"], int)


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
        interceptors=[aio.server_interceptor(server.metrics, server.provider, no_health)]
    )
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer("a"), grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    interceptors = aio.client_interceptors(client.metrics, client.provider, no_health)
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
    interceptors = aio.client_interceptors(client.metrics, client.provider)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=interceptors) as ch:
            stub = EchoStub(ch)
            assert (await stub.Unary(EchoRequest(message="s"))).server == "sync"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Unary(EchoRequest(message="s", fail_code=3))
            assert err.value.details() == "bad"
            assert [r.message async for r in stub.ServerStream(EchoRequest(count=2))] == ["0", "1"]
            await eventually(lambda: len(client.spans()) == 3)
    finally:
        grpc_server.stop(None)

    assert handled(server, "unary", "Unary", "OK") == 1
    assert handled(server, "unary", "Unary", "InvalidArgument") == 1
    assert handled(server, "server_stream", "ServerStream", "OK") == 1
    assert count(server, "msg_sent_total", "server_stream", "ServerStream") == 2
    (invalid,) = [
        s for s in server.spans() if s.attributes and s.attributes.get("rpc.grpc.status_code") == 3
    ]
    assert invalid.status.status_code is StatusCode.UNSET  # the caller's error, not the server's
    assert invalid.attributes is not None
    assert invalid.attributes["network.peer.address"] == "127.0.0.1"
    server_spans = {s.context.span_id: s for s in server.spans() if s.context}
    for span in client.spans():
        assert span.context is not None
        children = [
            s
            for s in server_spans.values()
            if s.parent and s.parent.span_id == span.context.span_id
        ]
        assert len(children) == 1


# -- OTLP export to a real receiver --------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    started = await start_otlp_receiver()
    try:
        yield started
    finally:
        await started.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_spans_reach_a_collector_over_either_protocol(
    receiver: OtlpReceiver, protocol: str
) -> None:
    # an http:// URL: plaintext, as for an in-cluster collector (not only on loopback)
    endpoint = receiver.http_url if protocol == "http/protobuf" else f"http://{receiver.address}"
    provider = tracer_provider_from_settings(
        endpoint, 1.0, "svc-otlp", protocol=protocol, headers={"x-tenant": "t1"}
    )
    try:
        span = provider.get_tracer("t").start_span("exported")
        span.end()
        trace_id = format(span.get_span_context().trace_id, "032x")
        await asyncio.to_thread(provider.force_flush)
        got = await receiver.wait_for_span(lambda s: s.trace_id == trace_id)
    finally:
        await asyncio.to_thread(provider.shutdown)
    assert got.service_name == "svc-otlp"
    assert got.transport == ("http" if protocol == "http/protobuf" else "grpc")
    assert any(h.get("x-tenant") == "t1" for h in receiver.headers)


async def test_attempt_spans_around_real_calls(pair: Pair) -> None:
    """What a proxy does per upstream attempt: the upstream's span is the attempt's child."""
    tracer = pair.client.provider.get_tracer("proxy")
    server_span = tracer.start_span("proxy", kind=SpanKind.SERVER)
    forwarded = inject_context([], trace.set_span_in_context(server_span))
    failing = EchoRequest(message="busy", fail_code=grpc.StatusCode.UNAVAILABLE.value[0])
    # a raw channel: the attempt span is the only client-side span
    target = pair.address
    async with grpc.aio.insecure_channel(target) as raw:
        stub = EchoStub(raw)
        with client_attempt_span(tracer, "/meshkit.test.Echo/Unary", target, 1, forwarded) as one:
            try:
                await stub.Unary(failing, metadata=one.headers)
            except grpc.aio.AioRpcError as error:
                one.fail(error)
        # the other style: started, then ended by the call's own done callback
        two = start_client_attempt(tracer, "/meshkit.test.Echo/Unary", target, 2, forwarded)
        call = stub.Unary(EchoRequest(message="ok"), metadata=two.headers)
        two.end_when_done(call)
        assert (await call).message == "ok"
        # a third attempt the proxy abandons: its span ends CANCELLED
        three = start_client_attempt(tracer, "/meshkit.test.Echo/Unary", target, 3, forwarded)
        slow = stub.Unary(EchoRequest(message="slow", delay_s=5), metadata=three.headers)
        three.end_when_done(slow)
        await eventually(lambda: pair.servicer.active == 1)
        slow.cancel()
        await eventually(lambda: len(pair.client.spans()) == 3)
    server_span.end()
    await eventually(lambda: len(pair.server.spans()) == 3)
    attempts = [s for s in pair.client.spans() if s.kind is SpanKind.CLIENT]
    cancelled = attempts.pop()
    assert cancelled.attributes is not None
    assert cancelled.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert cancelled.status.status_code is StatusCode.ERROR
    assert [s.attributes["meshkit.attempt"] for s in attempts if s.attributes] == [1, 2]
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert attempts[0].status.description == "busy"
    assert attempts[1].status.status_code is StatusCode.UNSET
    upstream = sorted(pair.server.spans(), key=lambda s: s.start_time or 0)[:2]
    for attempt, served in zip(attempts, upstream, strict=True):
        assert attempt.parent is not None and attempt.context is not None
        assert attempt.parent.span_id == server_span.get_span_context().span_id
        assert served.parent is not None and served.parent.span_id == attempt.context.span_id


async def test_rpc_metrics_reach_a_collector(receiver: OtlpReceiver, pair: Pair) -> None:
    await pair.stub.Unary(EchoRequest(message="m"))
    with pytest.raises(grpc.aio.AioRpcError):
        await pair.stub.Unary(EchoRequest(message="x", fail_code=5))
    await eventually(lambda: handled(pair.server, "unary", "Unary", "NotFound") == 1)
    for protocol, endpoint in (("grpc", receiver.address), ("http/protobuf", receiver.http_url)):
        bridge = OtelMetricsBridge(
            pair.server.registry,
            metric_exporter(endpoint, protocol),
            interval=3600,
            service_name="svc-metrics",
        )
        assert await asyncio.to_thread(bridge.export_once) is MetricExportResult.SUCCESS
        transport = "http" if protocol == "http/protobuf" else "grpc"
        got = await receiver.wait_for_metric(
            lambda m, t=transport: m.name == "rpc.server.call.duration" and m.transport == t  # type: ignore[misc]
        )
        await asyncio.to_thread(bridge.shutdown)
        assert got.unit == "s" and got.service_name == "svc-metrics"
        (point,) = [
            p
            for p in got.metric.histogram.data_points
            if {a.key: a.value.string_value for a in p.attributes}.get("rpc.method")
            == f"{SERVICE}/Unary"
        ]
        assert point.count == 2
        assert sum(point.bucket_counts) == 2
        calls = await receiver.wait_for_metric(
            lambda m, t=transport: m.name == "meshkit.rpc.server.calls" and m.transport == t  # type: ignore[misc]
        )
        status = "rpc.response.status_code"
        codes = {
            {a.key: a.value.string_value for a in p.attributes}[status]: p.as_int
            for p in calls.metric.sum.data_points
        }
        assert codes == {"OK": 1, "NOT_FOUND": 1}
