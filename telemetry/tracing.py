"""OpenTelemetry set-up from sidecar settings, and trace-context helpers for raw proxies.

Nothing here sets the process-wide tracer provider unless the caller asks (``set_global``):
an embedding application may already own it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, MutableSequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

__all__ = [
    "MetadataGetter",
    "extract_context",
    "inject_context",
    "is_loopback_endpoint",
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
    set_global: bool = False,
) -> TracerProvider:
    """Build a ``TracerProvider`` from the sidecar's ``telemetry.tracing`` settings.

    Sampling is ``ParentBased(TraceIdRatioBased(sample_ratio))``: a call joining a trace keeps
    its caller's decision, so a trace is never half recorded across the mesh; only roots are
    sampled by ratio. With ``otlp_endpoint`` spans go through a ``BatchSpanProcessor`` (export
    off the call path) to an OTLP/gRPC exporter, in plaintext for loopback endpoints (a local
    collector agent) and TLS otherwise. Without it the provider records nothing to export.
    """
    if not 0.0 <= sample_ratio <= 1.0:
        raise ValueError(f"sample_ratio must be within 0..1, not {sample_ratio}")
    provider = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
        resource=Resource.create({SERVICE_NAME: service_name}),
    )
    if otlp_endpoint:
        # Imported here: the exporter pulls in its protobuf stubs, only needed when exporting.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(
            endpoint=otlp_endpoint, insecure=is_loopback_endpoint(otlp_endpoint)
        )
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
