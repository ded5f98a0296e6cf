"""A real OTLP receiver on loopback (gRPC and HTTP), collecting the spans and metrics sent.

Usage::

    receiver = await start_otlp_receiver()          # 127.0.0.1, ports chosen by the OS
    config["telemetry"] = {"tracing": {"otlp_endpoint": receiver.address, "sample_ratio": 1.0}}
    # or OTLP/HTTP: {"otlp_endpoint": receiver.http_url, "protocol": "http/protobuf"}
    ...
    span = await receiver.wait_for_span(lambda s: s.trace_id == trace_id, timeout=10)
    await receiver.stop()

It serves ``TraceService/Export`` and ``MetricsService/Export`` over gRPC, and ``POST
/v1/traces`` / ``POST /v1/metrics`` (binary protobuf, gzip or not) over HTTP/1.1 from a
``http.server`` thread, with the messages of the ``opentelemetry-proto`` package, as a
collector does, and answers every export with success. Each span is kept flattened with its
resource's service name (:class:`ReceivedSpan`), each metric likewise (:class:`ReceivedMetric`),
and the headers of every export request in ``headers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.server
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["OtlpReceiver", "ReceivedMetric", "ReceivedSpan", "start_otlp_receiver"]


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span: ids as lower-case hex (as in a W3C ``traceparent``)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    service_name: str
    attributes: dict[str, str]
    span: trace_pb2.Span
    transport: str = "grpc"

    @property
    def status_code(self) -> int:
        """``Status.StatusCode``: 0 unset, 1 ok, 2 error."""
        return int(self.span.status.code)


@dataclass(frozen=True)
class ReceivedMetric:
    """One exported metric with its resource's service name and how it came."""

    name: str
    unit: str
    service_name: str
    metric: metrics_pb2.Metric
    transport: str = "grpc"


def _service_name(resource: resource_pb2.Resource) -> str:
    for attribute in resource.attributes:
        if attribute.key == "service.name":
            return str(attribute.value.string_value)
    return ""


def _attributes(span: trace_pb2.Span) -> dict[str, str]:
    out: dict[str, str] = {}
    for attribute in span.attributes:
        value = attribute.value
        kind = value.WhichOneof("value")
        out[attribute.key] = str(getattr(value, kind)) if kind else ""
    return out


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """The ``TraceService`` servicer and what it received; see the module doc."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.spans: list[ReceivedSpan] = []
        self.metrics: list[ReceivedMetric] = []
        self.headers: list[dict[str, str]] = []
        self.exports = 0
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.http_port = 0
        self._http: http.server.ThreadingHTTPServer | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._received = asyncio.Event()

    @property
    def address(self) -> str:
        """``host:port`` of the gRPC receiver, what ``otlp_endpoint`` takes."""
        return f"{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        """``http://host:port`` of the OTLP/HTTP receiver (``/v1/traces``, ``/v1/metrics``)."""
        return f"http://{self.host}:{self.http_port}"

    def _notify(self) -> None:
        self._received.set()

    def add_traces(
        self, request: trace_service_pb2.ExportTraceServiceRequest, transport: str
    ) -> None:
        """Record the spans of one export (from any thread)."""
        received = []
        for resource_spans in request.resource_spans:
            service = _service_name(resource_spans.resource)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            service_name=service,
                            attributes=_attributes(span),
                            span=span,
                            transport=transport,
                        )
                    )
        with self._lock:
            self.exports += 1
            self.spans.extend(received)
        self._loop.call_soon_threadsafe(self._notify)

    def add_metrics(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, transport: str
    ) -> None:
        """Record the metrics of one export (from any thread)."""
        received = []
        for resource_metrics in request.resource_metrics:
            service = _service_name(resource_metrics.resource)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    received.append(
                        ReceivedMetric(metric.name, metric.unit, service, metric, transport)
                    )
        with self._lock:
            self.exports += 1
            self.metrics.extend(received)
        self._loop.call_soon_threadsafe(self._notify)

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.headers.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        self.add_traces(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()

    async def _wait_for(
        self, items: Callable[[], list[Any]], predicate: Callable[[Any], bool], timeout: float
    ) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._lock:
                snapshot = list(items())
            for item in snapshot:
                if predicate(item):
                    return item
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = [(getattr(s, "service_name", ""), s.name) for s in snapshot]
                raise AssertionError(
                    f"nothing matching within {timeout:g}s; {self.exports} export(s), got: {seen}"
                )
            self._received.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._received.wait(), remaining)

    async def wait_for_span(
        self, predicate: Callable[[ReceivedSpan], bool], *, timeout: float = 10.0
    ) -> ReceivedSpan:
        """The first span received matching ``predicate``, waiting up to ``timeout`` seconds;
        ``AssertionError`` listing what did arrive otherwise."""
        span: ReceivedSpan = await self._wait_for(lambda: self.spans, predicate, timeout)
        return span

    async def wait_for_metric(
        self, predicate: Callable[[ReceivedMetric], bool], *, timeout: float = 10.0
    ) -> ReceivedMetric:
        """The first metric received matching ``predicate``, as :meth:`wait_for_span`."""
        metric: ReceivedMetric = await self._wait_for(lambda: self.metrics, predicate, timeout)
        return metric

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        server, self.server = self.server, None
        if server is not None:
            await server.stop(None)
        httpd, self._http = self._http, None
        if httpd is not None:
            await asyncio.to_thread(httpd.shutdown)
            httpd.server_close()


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    async def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.aio.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._receiver.headers.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        self._receiver.add_metrics(request, "grpc")
        return metrics_service_pb2.ExportMetricsServiceResponse()


_MAX_BODY = 16 << 20


def _http_handler(receiver: OtlpReceiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                body = self._read_chunked()  # Envoy's OTLP/HTTP exporter streams its body
            else:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if 0 <= length <= _MAX_BODY else b""
            if body is None or len(body) > _MAX_BODY:
                self._answer(413, b"")
                return
            if self.headers.get("content-encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            path = self.path.split("?", 1)[0]
            receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
            if path == "/v1/traces":
                traces = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                receiver.add_traces(traces, "http")
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            elif path == "/v1/metrics":
                metrics = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
                receiver.add_metrics(metrics, "http")
                reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
            else:
                self._answer(404, b"")
                return
            self._answer(200, reply)

        def _read_chunked(self) -> bytes | None:
            parts: list[bytes] = []
            size = 0
            while True:
                length = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if length == 0:
                    self.rfile.readline()  # the blank line ending the (absent) trailers
                    return b"".join(parts)
                size += length
                if size > _MAX_BODY:
                    return None
                parts.append(self.rfile.read(length))
                self.rfile.readline()  # CRLF after each chunk

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the tests assert on what was received

    return Handler


async def start_otlp_receiver(host: str = "127.0.0.1") -> OtlpReceiver:
    """Start a receiver on ``host``: gRPC and HTTP, at ports the kernel chooses."""
    receiver = OtlpReceiver(host)
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _MetricsServicer(receiver), server
    )
    port = server.add_insecure_port(f"{host}:0")
    if port == 0:
        raise RuntimeError(f"could not bind {host}:0")
    await server.start()
    receiver.server, receiver.port = server, port
    httpd = http.server.ThreadingHTTPServer((host, 0), _http_handler(receiver))
    httpd.daemon_threads = True
    receiver._http, receiver.http_port = httpd, httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, name="otlp-http", daemon=True).start()
    return receiver
