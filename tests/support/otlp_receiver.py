"""A real OTLP/gRPC trace receiver on loopback, collecting the spans exported to it.

Usage::

    receiver = await start_otlp_receiver()          # 127.0.0.1, port chosen by the OS
    config["telemetry"] = {"tracing": {"otlp_endpoint": receiver.address, "sample_ratio": 1.0}}
    ...
    span = await receiver.wait_for_span(lambda s: s.trace_id == trace_id, timeout=10)
    await receiver.stop()

It serves ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` with the messages of
the ``opentelemetry-proto`` package, as a collector does, and answers every export with
success. Each span is kept flattened with its resource's service name (:class:`ReceivedSpan`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["OtlpReceiver", "ReceivedSpan", "start_otlp_receiver"]


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


def _service_name(resource_spans: trace_pb2.ResourceSpans) -> str:
    for attribute in resource_spans.resource.attributes:
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
        self.exports = 0
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._received = asyncio.Event()

    @property
    def address(self) -> str:
        """``host:port``, what ``otlp_endpoint`` takes."""
        return f"{self.host}:{self.port}"

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.exports += 1
        for resource_spans in request.resource_spans:
            service = _service_name(resource_spans)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            service_name=service,
                            attributes=_attributes(span),
                            span=span,
                        )
                    )
        self._received.set()
        return trace_service_pb2.ExportTraceServiceResponse()

    async def wait_for_span(
        self, predicate: Callable[[ReceivedSpan], bool], *, timeout: float = 10.0
    ) -> ReceivedSpan:
        """The first span received matching ``predicate``, waiting up to ``timeout`` seconds;
        ``AssertionError`` listing what did arrive otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for span in self.spans:
                if predicate(span):
                    return span
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = [(s.service_name, s.name, s.trace_id) for s in self.spans]
                raise AssertionError(
                    f"no matching span within {timeout:g}s; {self.exports} export(s), spans: {seen}"
                )
            self._received.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._received.wait(), remaining)

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        server, self.server = self.server, None
        if server is not None:
            await server.stop(None)


async def start_otlp_receiver(host: str = "127.0.0.1") -> OtlpReceiver:
    """Start a receiver on ``host`` at a port the kernel chooses."""
    receiver = OtlpReceiver(host)
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(f"{host}:0")
    if port == 0:
        raise RuntimeError(f"could not bind {host}:0")
    await server.start()
    receiver.server, receiver.port = server, port
    return receiver
