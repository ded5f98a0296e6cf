"""The sidecar's tracer set-up (cluster metrics and ``/clusters`` come from
:mod:`telemetry.clusters`)."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from sidecar.config import TracingConfig
from telemetry.tracing import tracer_provider_from_settings

__all__ = ["TRACER_NAME", "Tracing", "build_tracer"]

TRACER_NAME = "meshkit.sidecar"


@dataclass(frozen=True)
class Tracing:
    """The sidecar's tracer and the provider behind it (shut it down to flush spans)."""

    provider: TracerProvider
    tracer: Tracer

    def shutdown(self) -> None:
        """Flush pending spans and stop exporting; call once at exit."""
        self.provider.shutdown()


def build_tracer(settings: TracingConfig, *, set_global: bool = False) -> Tracing | None:
    """The tracer for ``ProxyHandler(tracer=...)`` from ``telemetry.tracing`` settings, or
    ``None`` when tracing is off (no ``otlp_endpoint``): the proxy then skips spans entirely.
    """
    if not settings.otlp_endpoint:
        return None
    provider = tracer_provider_from_settings(
        settings.otlp_endpoint,
        settings.sample_ratio,
        settings.service_name,
        protocol=settings.protocol,
        headers=settings.headers,
        set_global=set_global,
    )
    return Tracing(provider, provider.get_tracer(TRACER_NAME))
