"""Per-call metrics and server spans of the proxy: a real proxy in front of a real echo server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from balancers import RetryPolicy
from sidecar.proxy import (
    ProxyHandler,
    Upstream,
    server_options,
    upstream_channel_options,
)
from sidecar.proxy_metrics import ProxyMetrics
from sidecar.routing import Router
from telemetry.rpc_kind import RpcKind
from tests.support.echo import EchoRequest, EchoServer, EchoStub, aiter_requests, start_echo_server
from tests.support.waiting import wait_until

SERVICE = "meshkit.test.Echo"
KINDS = {
    f"/{SERVICE}/Unary": RpcKind.UNARY_UNARY,
    f"/{SERVICE}/ServerStream": RpcKind.UNARY_STREAM,
    f"/{SERVICE}/ClientStream": RpcKind.STREAM_UNARY,
    f"/{SERVICE}/BidiStream": RpcKind.STREAM_STREAM,
}
ECHO = {"direction": "outbound", "cluster": "echo"}
ECHO_CLUSTER = {"cluster": "echo"}
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@dataclass
class Setup:
    stub: EchoStub
    client: grpc.aio.Channel
    registry: CollectorRegistry
    echo: EchoServer
    handler: ProxyHandler

    def handled(
        self, method: str, code: str, grpc_type: str = "unary", side: str = "server"
    ) -> float:
        labels = {"grpc_type": grpc_type, "grpc_service": SERVICE, "grpc_method": method}
        value = self.registry.get_sample_value(
            f"grpc_{side}_handled_total", {**labels, **ECHO, "grpc_code": code}
        )
        return value or 0.0

    def value(self, name: str, method: str, grpc_type: str = "unary") -> float:
        labels = {"grpc_type": grpc_type, "grpc_service": SERVICE, "grpc_method": method}
        return self.registry.get_sample_value(name, {**labels, **ECHO}) or 0.0

    async def wait_handled(
        self, method: str, code: str, n: float, grpc_type: str = "unary"
    ) -> None:
        await wait_until(
            lambda: self.handled(method, code, grpc_type) >= n,
            timeout=10,
            message=f"{n} {method} calls handled with {code}",
        )
        assert self.handled(method, code, grpc_type) == n


Factory = Callable[..., Awaitable[Setup]]


class FailFirst(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Answers the first ``failures`` calls UNAVAILABLE at once (trailers-only, so a proxy may
    retry them), then lets calls through."""

    def __init__(self, failures: int = 1) -> None:
        self.failures = failures
        self.calls = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        self.calls += 1
        if self.calls > self.failures:
            return await continuation(handler_call_details)

        async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "failing once on purpose")

        return grpc.stream_stream_rpc_method_handler(refuse)


@pytest.fixture
async def proxied() -> AsyncIterator[Factory]:
    closers: list[Callable[[], Awaitable[Any]]] = []

    async def make(
        *,
        kinds: dict[str, RpcKind] | None = KINDS,
        upstream_address: str | None = None,
        retry: RetryPolicy | None = None,
        interceptors: list[grpc.aio.ServerInterceptor] | None = None,
        **kw: Any,
    ) -> Setup:
        echo = await start_echo_server("a", interceptors=interceptors)
        closers.append(lambda: echo.stop(None))
        channel = grpc.aio.insecure_channel(
            upstream_address or echo.address,
            options=upstream_channel_options(local_subchannel_pool=True),
        )
        closers.append(channel.close)
        upstream = Upstream("echo", channel, kinds=kinds or {}, retry=retry)
        router = Router([(f"/{SERVICE}/", upstream)])
        registry = CollectorRegistry()
        metrics = ProxyMetrics(registry, clusters=lambda: {"echo": channel})
        handler = ProxyHandler(router.match, metrics=metrics, **kw)
        server = grpc.aio.server(options=server_options())
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        closers.append(lambda: server.stop(None))
        client = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        closers.append(client.close)
        return Setup(EchoStub(client), client, registry, echo, handler)

    yield make
    for close in reversed(closers):
        await close()


async def test_all_four_kinds_counted_ok(proxied: Factory) -> None:
    setup = await proxied()
    stub = setup.stub
    await stub.Unary(EchoRequest(message="a"), timeout=5)
    replies = [r async for r in stub.ServerStream(EchoRequest(message="s", count=3), timeout=5)]
    assert len(replies) == 3
    await stub.ClientStream(aiter_requests("a", "b"), timeout=5)
    assert len([r async for r in stub.BidiStream(aiter_requests("x", "y"), timeout=5)]) == 2

    await setup.wait_handled("Unary", "OK", 1, "unary")
    await setup.wait_handled("ServerStream", "OK", 1, "server_stream")
    await setup.wait_handled("ClientStream", "OK", 1, "client_stream")
    await setup.wait_handled("BidiStream", "OK", 1, "bidi_stream")
    for method, grpc_type in [("Unary", "unary"), ("BidiStream", "bidi_stream")]:
        assert setup.value("grpc_server_started_total", method, grpc_type) == 1
        assert setup.value("grpc_server_handling_seconds_count", method, grpc_type) == 1
        assert setup.value("grpc_server_handling_seconds_sum", method, grpc_type) > 0


async def test_codes_of_failing_calls(proxied: Factory) -> None:
    setup = await proxied()
    stub = setup.stub
    for _ in range(3):
        await stub.Unary(EchoRequest(message="ok"), timeout=5)
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Unary(EchoRequest(message="gone", fail_code=5), timeout=5)
        assert failed.value.code() is grpc.StatusCode.NOT_FOUND
    # streamed responses carry the code through set_code rather than abort
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for _ in stub.ServerStream(EchoRequest(message="no", fail_code=7), timeout=5):
            pass
    assert failed.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert len([r async for r in stub.BidiStream(aiter_requests("fine"), timeout=5)]) == 1

    await setup.wait_handled("Unary", "OK", 3)
    await setup.wait_handled("Unary", "NotFound", 2)
    await setup.wait_handled("ServerStream", "PermissionDenied", 1, "server_stream")
    await setup.wait_handled("BidiStream", "OK", 1, "bidi_stream")
    assert setup.value("grpc_server_started_total", "Unary") == 5
    assert setup.value("grpc_server_handling_seconds_count", "Unary") == 5


async def test_deadline_and_cancellation(proxied: Factory) -> None:
    setup = await proxied()
    stub = setup.stub
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Unary(EchoRequest(message="slow", delay_s=5), timeout=0.3)
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await setup.wait_handled("Unary", "DeadlineExceeded", 1)

    # The first call's handler may still be unwinding its cancellation: "active" alone could
    # be that one. The call counter names the second call for sure.
    await wait_until(lambda: setup.echo.servicer.active == 0, message="first call ended")
    call = stub.Unary(EchoRequest(message="slow", delay_s=5), timeout=10)
    await wait_until(
        lambda: setup.echo.servicer.calls["Unary"] == 2 and setup.echo.servicer.active == 1,
        message="second call reached the echo",
    )
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await setup.wait_handled("Unary", "Canceled", 1)


async def test_unreachable_upstream_and_unknown_route(proxied: Factory) -> None:
    setup = await proxied(upstream_address="127.0.0.1:1")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await setup.stub.Unary(EchoRequest(message="x"), timeout=5)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    await setup.wait_handled("Unary", "Unavailable", 1)

    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await setup.client.unary_unary("/other.Service/Call")(b"", timeout=5)
    assert failed.value.code() is grpc.StatusCode.UNIMPLEMENTED
    labels = {
        "grpc_type": "bidi_stream",
        "grpc_service": "other.Service",
        "grpc_method": "Call",
        "grpc_code": "Unimplemented",
        "direction": "outbound",
        "cluster": "",  # no route, no cluster
    }
    await wait_until(
        lambda: setup.registry.get_sample_value("grpc_server_handled_total", labels) == 1
    )


async def test_rejections_are_counted(proxied: Factory) -> None:
    setup = await proxied(authenticate=lambda metadata: "missing token")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await setup.stub.Unary(EchoRequest(message="x"), timeout=5)
    assert failed.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # rejected before routing: the kind hint is unknown, so the wire-generic kind, no cluster
    labels = {"grpc_type": "bidi_stream", "grpc_service": SERVICE, "grpc_method": "Unary"}
    labels |= {"direction": "outbound", "cluster": "", "grpc_code": "Unauthenticated"}
    await wait_until(
        lambda: setup.registry.get_sample_value("grpc_server_handled_total", labels) == 1
    )
    # the upstream was never called
    assert setup.handled("Unary", "Unauthenticated", "bidi_stream", side="client") == 0


async def test_unhinted_methods_count_as_bidi(proxied: Factory) -> None:
    setup = await proxied(kinds={})
    await setup.stub.Unary(EchoRequest(message="a"), timeout=5)
    await setup.wait_handled("Unary", "OK", 1, "bidi_stream")


# -- tracing --------------------------------------------------------------------------------------


def tracing(sampler: Any = None) -> tuple[Any, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler or ParentBased(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


def forwarded(reply: Any, key: str) -> list[str]:
    return [m.split("=", 1)[1] for m in reply.metadata if m.startswith(key + "=")]


def server_spans(exporter: InMemorySpanExporter) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def client_spans(exporter: InMemorySpanExporter) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]


async def test_span_joins_the_incoming_trace_and_is_forwarded(proxied: Factory) -> None:
    tracer, exporter = tracing()
    setup = await proxied(tracer=tracer)
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    reply = await setup.stub.Unary(
        EchoRequest(message="t"), metadata=(("traceparent", traceparent),), timeout=5
    )
    await wait_until(lambda: len(exporter.get_finished_spans()) == 2, message="two spans")
    (span,) = server_spans(exporter)
    (attempt,) = client_spans(exporter)
    assert span.kind is SpanKind.SERVER
    assert span.name == f"{SERVICE}/Unary"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.attributes is not None
    assert span.attributes["rpc.system"] == "grpc"
    assert span.attributes["rpc.service"] == SERVICE
    assert span.attributes["rpc.method"] == "Unary"
    assert span.attributes["rpc.grpc.status_code"] == 0
    assert span.attributes["network.peer.address"] == "127.0.0.1"
    assert isinstance(span.attributes["network.peer.port"], int)
    # one CLIENT span for the one attempt, under the SERVER span
    assert attempt.parent is not None and attempt.parent.span_id == span.context.span_id
    assert attempt.context.trace_id == span.context.trace_id
    assert attempt.attributes is not None
    assert attempt.attributes["meshkit.attempt"] == 1
    assert attempt.attributes["meshkit.cluster"] == "echo"
    assert attempt.attributes["rpc.method"] == "Unary"
    assert attempt.attributes["rpc.grpc.status_code"] == 0
    # the upstream sees the attempt's span as its parent, and only that one
    attempt_id = format(attempt.context.span_id, "016x")
    assert forwarded(reply, "traceparent") == [f"00-{TRACE_ID}-{attempt_id}-01"]


async def test_span_status_on_failures(proxied: Factory) -> None:
    tracer, exporter = tracing()
    setup = await proxied(tracer=tracer)
    for code in (14, 5):  # UNAVAILABLE is the server's failure, NOT_FOUND the caller's
        with pytest.raises(grpc.aio.AioRpcError):
            await setup.stub.Unary(EchoRequest(message="f", fail_code=code), timeout=5)
    await wait_until(lambda: len(server_spans(exporter)) == 2, message="two server spans")
    unavailable, not_found = server_spans(exporter)
    assert unavailable.status.status_code is StatusCode.ERROR
    assert unavailable.status.description == "f"  # the status details
    assert unavailable.attributes is not None
    assert unavailable.attributes["rpc.grpc.status_code"] == 14
    assert not_found.status.status_code is StatusCode.UNSET
    # a CLIENT span fails on any code but OK
    await wait_until(lambda: len(client_spans(exporter)) == 2, message="two client spans")
    codes = sorted(
        (s.attributes["rpc.grpc.status_code"], s.status.status_code) for s in client_spans(exporter)
    )
    assert codes == [(5, StatusCode.ERROR), (14, StatusCode.ERROR)]


async def test_root_span_when_no_traceparent(proxied: Factory) -> None:
    tracer, exporter = tracing()
    setup = await proxied(tracer=tracer, kinds={})
    reply = await setup.stub.Unary(EchoRequest(message="t"), timeout=5)
    await wait_until(lambda: len(exporter.get_finished_spans()) == 2, message="two spans")
    (span,) = server_spans(exporter)
    (attempt,) = client_spans(exporter)
    assert span.parent is None
    span_id = format(attempt.context.span_id, "016x")
    trace_id = format(span.context.trace_id, "032x")
    (sent,) = forwarded(reply, "traceparent")
    version, sent_trace, sent_parent, flags = sent.split("-")
    assert (version, sent_trace, sent_parent) == ("00", trace_id, span_id)
    assert int(flags, 16) & 1  # sampled (a new root may also set the "random" flag)


async def test_unsampled_call_records_nothing_and_forwards_the_caller_context(
    proxied: Factory,
) -> None:
    tracer, exporter = tracing()  # parent-based: an unsampled caller stays unsampled
    setup = await proxied(tracer=tracer)
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-00"
    reply = await setup.stub.Unary(
        EchoRequest(message="t"), metadata=(("traceparent", traceparent),), timeout=5
    )
    await setup.wait_handled("Unary", "OK", 1)
    assert exporter.get_finished_spans() == ()
    assert forwarded(reply, "traceparent") == [traceparent]


# -- the client side, messages, retries -----------------------------------------------------------


async def test_messages_and_upstream_calls_counted(proxied: Factory) -> None:
    setup = await proxied()
    stub = setup.stub
    await stub.Unary(EchoRequest(message="a"), timeout=5)
    replies = [r async for r in stub.ServerStream(EchoRequest(message="s", count=3), timeout=5)]
    assert len(replies) == 3
    await stub.ClientStream(aiter_requests("a", "b", "c", "d"), timeout=5)
    assert len([r async for r in stub.BidiStream(aiter_requests("x", "y"), timeout=5)]) == 2

    # (method, grpc_type, requests, responses)
    expected = [
        ("Unary", "unary", 1, 1),
        ("ServerStream", "server_stream", 1, 3),
        ("ClientStream", "client_stream", 4, 1),
        ("BidiStream", "bidi_stream", 2, 2),
    ]
    for method, grpc_type, requests, responses in expected:
        await setup.wait_handled(method, "OK", 1, grpc_type)
        assert setup.handled(method, "OK", grpc_type, side="client") == 1
        assert setup.value("grpc_client_started_total", method, grpc_type) == 1
        assert setup.value("grpc_client_handling_seconds_count", method, grpc_type) == 1
        assert setup.value("grpc_server_msg_received_total", method, grpc_type) == requests
        assert setup.value("grpc_server_msg_sent_total", method, grpc_type) == responses
        assert setup.value("grpc_client_msg_sent_total", method, grpc_type) == requests
        assert setup.value("grpc_client_msg_received_total", method, grpc_type) == responses
    # no retry, no ejection: no series, as on Envoy's page
    assert setup.registry.get_sample_value("meshkit_cluster_retries_total", ECHO_CLUSTER) is None
    assert setup.registry.get_sample_value("meshkit_cluster_ejections_total", ECHO_CLUSTER) is None


async def test_unhinted_streams_count_their_messages(proxied: Factory) -> None:
    setup = await proxied(kinds={})
    assert len([r async for r in setup.stub.BidiStream(aiter_requests("x", "y", "z"))]) == 3
    replies = [r async for r in setup.stub.ServerStream(EchoRequest(message="s", count=5))]
    assert len(replies) == 5
    await setup.wait_handled("ServerStream", "OK", 1, "bidi_stream")
    for method, requests, responses in [("BidiStream", 3, 3), ("ServerStream", 1, 5)]:
        assert setup.value("grpc_server_msg_received_total", method, "bidi_stream") == requests
        assert setup.value("grpc_server_msg_sent_total", method, "bidi_stream") == responses


async def test_a_retried_call_counts_one_retry_and_shows_both_attempts(proxied: Factory) -> None:
    tracer, exporter = tracing()
    failing = FailFirst(1)
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.01)
    setup = await proxied(retry=policy, interceptors=[failing], tracer=tracer)
    await setup.stub.ClientStream(aiter_requests("a", "b"), timeout=5)
    assert failing.calls == 2

    await setup.wait_handled("ClientStream", "OK", 1, "client_stream")
    labels = {"cluster": "echo"}
    assert setup.registry.get_sample_value("meshkit_cluster_retries_total", labels) == 1
    # one upstream call (with its last attempt's status), the messages once
    assert setup.handled("ClientStream", "OK", "client_stream", side="client") == 1
    assert setup.handled("ClientStream", "Unavailable", "client_stream", side="client") == 0
    assert setup.value("grpc_client_msg_sent_total", "ClientStream", "client_stream") == 2

    await wait_until(lambda: len(exporter.get_finished_spans()) == 3, message="three spans")
    (server,) = server_spans(exporter)
    attempts = sorted(client_spans(exporter), key=lambda s: s.attributes["meshkit.attempt"])
    assert [s.attributes["meshkit.attempt"] for s in attempts] == [1, 2]
    assert all(s.parent.span_id == server.context.span_id for s in attempts)
    first, second = attempts
    assert first.attributes["rpc.grpc.status_code"] == 14
    assert first.status.status_code is StatusCode.ERROR
    assert second.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes is not None and server.attributes["rpc.grpc.status_code"] == 0


async def test_calls_in_flight_are_counted_by_the_handler(proxied: Factory) -> None:
    setup = await proxied()
    handler = setup.handler
    assert (handler.active, handler.started) == (0, 0)
    call = setup.stub.Unary(EchoRequest(message="slow", delay_s=5), timeout=10)
    await wait_until(lambda: setup.echo.servicer.active == 1, message="call reached the echo")
    assert (handler.active, handler.started) == (1, 1)
    call.cancel()
    await wait_until(lambda: handler.active == 0, message="call ended")
    with pytest.raises(grpc.aio.AioRpcError):  # refused calls count as started too
        await setup.client.unary_unary("/other.Service/Call")(b"", timeout=5)
    assert (handler.active, handler.started) == (0, 2)
