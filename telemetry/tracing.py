"""OpenTelemetry set-up from sidecar settings, and trace-context helpers for raw proxies.

Nothing here sets the process-wide tracer provider unless the caller asks (``set_global``):
an embedding application may already own it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, MutableSequence, Sequence
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Status, StatusCode

__all__ = [
    "SERVER_FAULT_CODES",
    "ClientAttempt",
    "MetadataGetter",
    "client_attempt_span",
    "end_rpc_span",
    "extract_context",
    "inject_context",
    "is_loopback_endpoint",
    "peer_attributes",
    "rpc_attributes",
    "server_attributes",
    "start_client_attempt",
    "status_of",
    "tracer_provider_from_settings",
]

Metadatum = tuple[str, Any]


def is_loopback_endpoint(endpoint: str) -> bool:
    """True when ``endpoint`` (``host:port``, ``[v6]:port`` or a URL) names this host."""
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tracer_provider_from_settings(
    otlp_endpoint: str | None,
    sample_ratio: float,
    service_name: str,
    *,
    protocol: str = "grpc",
    headers: Mapping[str, str] | None = None,
    set_global: bool = False,
) -> TracerProvider:
    """Build a ``TracerProvider`` from the sidecar's ``telemetry.tracing`` settings.

    Sampling is ``ParentBased(TraceIdRatioBased(sample_ratio))``: a call joining a trace keeps
    its caller's decision, so a trace is never half recorded across the mesh; only roots are
    sampled by ratio. With ``otlp_endpoint`` spans go through a ``BatchSpanProcessor`` (export
    off the call path) to an OTLP exporter over ``protocol`` (``grpc`` or ``http/protobuf``)
    sending ``headers``; ``http://`` is plaintext, ``https://`` TLS, and a bare ``host:port``
    plaintext only on loopback (see :mod:`telemetry.otlp`). Without it the provider records
    nothing to export.
    """
    if not 0.0 <= sample_ratio <= 1.0:
        raise ValueError(f"sample_ratio must be within 0..1, not {sample_ratio}")
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        resource=Resource.create({SERVICE_NAME: service_name}),
    )
    if otlp_endpoint:
        from telemetry.otlp import span_exporter  # imports this module

        exporter = span_exporter(otlp_endpoint, protocol, headers)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


class MetadataGetter(Getter[Iterable[Metadatum]]):
    """Reads propagation headers from gRPC metadata (``(key, value)`` pairs)."""

    def get(self, carrier: Iterable[Metadatum], key: str) -> list[str] | None:
        values = [
            v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)
            for k, v in carrier
            if k == key
        ]
        return values or None

    def keys(self, carrier: Iterable[Metadatum]) -> list[str]:
        return [k for k, _ in carrier]


class _MetadataSetter(Setter[MutableSequence[Metadatum]]):
    def set(self, carrier: MutableSequence[Metadatum], key: str, value: str) -> None:
        # gRPC metadata keys must be lowercase; W3C header names already are, others may not.
        carrier.append((key.lower(), value))


_GETTER = MetadataGetter()
_SETTER = _MetadataSetter()


def extract_context(metadata: Iterable[Metadatum] | None) -> Context:
    """The trace context carried in incoming metadata (``traceparent``/``tracestate``).

    Uses the configured text-map propagator (W3C trace context and baggage by default).
    """
    return propagate.extract(list(metadata or ()), getter=_GETTER)


def inject_context(
    metadata: MutableSequence[Metadatum], context: Context | None = None
) -> MutableSequence[Metadatum]:
    """Put the propagation headers of ``context`` (default: the current one) into ``metadata``
    in place and return it.

    Headers of the same names already present are removed first: a proxy forwards its caller's
    ``traceparent``, and the next hop must see the proxy's own span as parent, not both.
    """
    fields = propagate.get_global_textmap().fields
    metadata[:] = [m for m in metadata if m[0] not in fields]
    propagate.inject(metadata, context=context, setter=_SETTER)
    return metadata


# -- RPC semantic conventions -------------------------------------------------------------------

#: Codes that mark a SERVER span as failed (OpenTelemetry RPC conventions for gRPC): the
#: server's own faults. The others (INVALID_ARGUMENT, NOT_FOUND...) are answers about the
#: caller's request; a CLIENT span is failed by any code but OK.
SERVER_FAULT_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def rpc_attributes(method: str) -> dict[str, str]:
    """``rpc.system``, ``rpc.service`` and ``rpc.method`` of ``/pkg.Service/Method``."""
    service, _, name = method.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _split_host_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""  # a bare host, or a bare IPv6 address
    return host, int(port) if port.isdigit() else None


def peer_attributes(peer: str | None) -> dict[str, str | int]:
    """``network.peer.address`` / ``network.peer.port`` of a grpc peer string.

    grpc writes ``ipv4:1.2.3.4:5678``, ``ipv6:%5B::1%5D:5678`` (percent-encoded brackets) and
    ``unix:/path``; a Unix socket has no port, and ``network.transport`` says ``unix``.
    """
    if not peer:
        return {}
    scheme, sep, rest = urllib.parse.unquote(peer).partition(":")
    if not sep:
        return {}
    if scheme in ("unix", "unix-abstract"):
        return {"network.peer.address": rest, "network.transport": "unix"}
    if scheme not in ("ipv4", "ipv6"):
        return {}
    host, port = _split_host_port(rest)
    attributes: dict[str, str | int] = {"network.peer.address": host}
    if port is not None:
        attributes["network.peer.port"] = port
    return attributes


def server_attributes(address: str | None) -> dict[str, str | int]:
    """``server.address`` / ``server.port`` of ``host:port``, ``[v6]:port`` or a gRPC target
    (``dns:///host:port``, ``dns:host:port``, ``ipv4:a:p,b:p`` (the first), ``unix:path``)."""
    if not address:
        return {}
    text = address
    scheme, sep, rest = text.partition(":")
    if sep and scheme in ("dns", "ipv4", "ipv6", "static", "dns+srv", "xds"):
        text = rest[2:].partition("/")[2] if rest.startswith("//") else rest
        text = text.split(",", 1)[0]
    elif sep and scheme in ("unix", "unix-abstract"):
        return {"server.address": rest.removeprefix("//")}
    host, port = _split_host_port(text)
    if not host:
        return {}
    attributes: dict[str, str | int] = {"server.address": host}
    if port is not None:
        attributes["server.port"] = port
    return attributes


def end_rpc_span(
    span: trace.Span, code: grpc.StatusCode, details: str | None = None, *, server: bool
) -> None:
    """Record the call's status on ``span`` and end it.

    ``rpc.grpc.status_code`` always; status ERROR for any non-OK code on a client span, and
    only for :data:`SERVER_FAULT_CODES` on a server span; its description is the status
    details (the code's name when there are none).
    """
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK and (not server or code in SERVER_FAULT_CODES):
            span.set_status(Status(StatusCode.ERROR, details or code.name))
    span.end()


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status an exception stands for: an ``RpcError``'s own (or that of an error
    wrapping one as ``.error``), CANCELLED for a cancelled task, else UNKNOWN."""
    inner = getattr(error, "error", None)
    if not isinstance(error, grpc.RpcError) and isinstance(inner, grpc.RpcError):
        error = inner
    if isinstance(error, grpc.RpcError) and callable(getattr(error, "code", None)):
        details = error.details() if callable(getattr(error, "details", None)) else ""
        return error.code(), details or ""
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "cancelled"
    return grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}"


class ClientAttempt:
    """One upstream attempt: its CLIENT span, and the metadata to send upstream with it
    (``headers``: the attempt's own ``traceparent`` when the span is recorded). Made by
    :func:`start_client_attempt` or :func:`client_attempt_span`."""

    __slots__ = ("_ended", "_status", "headers", "span")

    def __init__(self, span: trace.Span, headers: tuple[Metadatum, ...]) -> None:
        self.span = span
        self.headers = headers
        self._status: tuple[grpc.StatusCode, str] | None = None
        self._ended = False

    def set_status(self, code: grpc.StatusCode, details: str = "") -> None:
        """The attempt's outcome (the first one set counts)."""
        if self._status is None:
            self._status = (code, details)

    def fail(self, error: BaseException) -> None:
        """The attempt ended with ``error`` (an ``AioRpcError``...): see :func:`status_of`."""
        self.set_status(*status_of(error))

    def end(self, code: grpc.StatusCode | None = None, details: str = "") -> None:
        """End the span with ``code`` (else the status set before, else OK); only the first
        call counts."""
        if code is not None:
            self.set_status(code, details)
        if self._ended:
            return
        self._ended = True
        code, details = self._status or (grpc.StatusCode.OK, "")
        end_rpc_span(self.span, code, details, server=False)

    def end_when_done(self, call: Any) -> None:
        """End the span when the ``grpc.aio`` call ``call`` is done, with its status (a call
        cancelled by the proxy ends CANCELLED)."""
        if not self.span.is_recording():
            self._ended = True
            self.span.end()
            return

        def done(finished: Any) -> None:
            code = _result_now(finished.code()) or grpc.StatusCode.UNKNOWN
            details = _result_now(finished.details()) or ""
            self.end(code, details if code is not grpc.StatusCode.OK else "")

        call.add_done_callback(done)


def _result_now(value: Any) -> Any:
    """What a ``grpc.aio`` call's ``code()``/``details()`` give once the call is done: their
    coroutines complete without suspending, so one step runs them in a plain callback."""
    if not asyncio.iscoroutine(value):
        return value
    try:
        value.send(None)
    except StopIteration as stop:
        return stop.value
    value.close()
    return None


def start_client_attempt(
    tracer: trace.Tracer | None,
    method: str,
    endpoint: str | None,
    attempt: int,
    headers: Sequence[Metadatum] = (),
    *,
    cluster: str | None = None,
    parent: Context | None = None,
) -> ClientAttempt:
    """Start the CLIENT span of one attempt of a proxied call, so retries show as siblings
    under the proxy's SERVER span; end it with :meth:`ClientAttempt.end` or
    :meth:`ClientAttempt.end_when_done`.

    ``endpoint`` is where the attempt goes (``host:port`` or a gRPC target; ``None`` when
    the balancer picks it later); ``attempt`` counts from 1. The parent is ``parent``, else
    the trace context in ``headers`` (a proxy forwards its SERVER span's ``traceparent``
    there). Send ``ClientAttempt.headers`` upstream: they carry this span's context when it is
    recorded, so the upstream's span is its child. ``tracer=None``: a no-op span, the headers
    as given.
    """
    if tracer is None:
        return ClientAttempt(trace.INVALID_SPAN, tuple(headers))
    attributes: dict[str, Any] = {**rpc_attributes(method), **server_attributes(endpoint)}
    attributes["meshkit.attempt"] = attempt
    if cluster is not None:
        attributes["meshkit.cluster"] = cluster
    span = tracer.start_span(
        method.lstrip("/") or method,
        context=parent if parent is not None else extract_context(headers),
        kind=trace.SpanKind.CLIENT,
        attributes=attributes,
    )
    sent = tuple(headers)
    if span.get_span_context().trace_flags.sampled:
        sent = tuple(inject_context(list(headers), trace.set_span_in_context(span)))
    return ClientAttempt(span, sent)


@contextlib.contextmanager
def client_attempt_span(
    tracer: trace.Tracer | None,
    method: str,
    endpoint: str | None,
    attempt: int,
    headers: Sequence[Metadatum] = (),
    *,
    cluster: str | None = None,
    parent: Context | None = None,
) -> Iterator[ClientAttempt]:
    """:func:`start_client_attempt` as a context manager: the span ends on leaving the block,
    with the status given to ``set_status``/``fail``, else from the exception leaving the
    block, else OK."""
    current = start_client_attempt(
        tracer, method, endpoint, attempt, headers, cluster=cluster, parent=parent
    )
    try:
        yield current
    except BaseException as exc:
        current.fail(exc)
        raise
    finally:
        current.end()
