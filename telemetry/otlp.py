"""Where and how OTLP data goes: endpoint rules, protocols, headers, the standard ``OTEL_*``
variables, and the exporters built from them.

Endpoint rules (the same for traces and metrics, for the Python exporters and for Envoy):

- ``http://host:port[/path]`` is plaintext, ``https://...`` is TLS (a URL without a port takes
  80 / 443);
- a bare ``host:port`` (or ``[v6]:port``) is plaintext on loopback (a local agent) and TLS
  otherwise;
- ``grpc`` ignores any path; ``http/protobuf`` posts to the URL's path, ``/v1/traces`` (or
  ``/v1/metrics``) when it has none.
"""

from __future__ import annotations

import importlib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from telemetry.tracing import is_loopback_endpoint

__all__ = [
    "GRPC",
    "HTTP_PROTOBUF",
    "OTEL_SAMPLERS",
    "PROTOCOLS",
    "OtelVariable",
    "OtlpTarget",
    "metric_exporter",
    "otel_endpoint",
    "otel_exporter_variable",
    "otel_sample_ratio",
    "otlp_target",
    "parse_headers",
    "span_exporter",
]

GRPC: Final = "grpc"
HTTP_PROTOBUF: Final = "http/protobuf"
#: Values of ``protocol`` (``OTEL_EXPORTER_OTLP_PROTOCOL``'s names; ``http/json`` is not offered).
PROTOCOLS: Final = (GRPC, HTTP_PROTOBUF)
Signal = Literal["traces", "metrics"]
_DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class OtlpTarget:
    """A resolved OTLP endpoint: where to connect, whether with TLS, and (HTTP) the path."""

    host: str
    port: int
    secure: bool
    protocol: str
    path: str

    @property
    def authority(self) -> str:
        """``host:port``, IPv6 hosts in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL posted to (HTTP), or ``scheme://host:port`` (gRPC)."""
        scheme = "https" if self.secure else "http"
        path = self.path if self.protocol == HTTP_PROTOBUF else ""
        return f"{scheme}://{self.authority}{path}"


def otlp_target(endpoint: str, protocol: str = GRPC, signal: Signal = "traces") -> OtlpTarget:
    """Resolve ``endpoint`` by the rules of the module doc; ``ValueError`` when it is not
    ``host:port`` or an http(s) URL with a host."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)} (got {protocol!r})")
    scheme, sep, _ = endpoint.partition("://")
    if sep and scheme not in ("http", "https"):
        raise ValueError(f"an OTLP endpoint URL must be http:// or https:// (got {scheme!r})")
    parts = urllib.parse.urlsplit(endpoint if sep else f"//{endpoint}")
    host = parts.hostname or ""
    if not host:
        raise ValueError("an OTLP endpoint needs a host")
    secure = scheme == "https" if sep else not is_loopback_endpoint(endpoint)
    port = parts.port or (443 if secure else 80)
    path = parts.path.rstrip("/") if sep else ""
    if parts.query:
        path = f"{path}?{parts.query}"
    return OtlpTarget(host, port, secure, protocol, path or f"/v1/{signal}")


def parse_headers(text: str) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_HEADERS`` syntax: ``k1=v1,k2=v2``, values percent-decoded, keys
    lower-cased (gRPC metadata keys must be); ``ValueError`` naming the bad entry's key."""
    headers: dict[str, str] = {}
    for entry in text.split(","):
        if not entry.strip():
            continue
        key, sep, value = entry.partition("=")
        key = urllib.parse.unquote(key).strip().lower()
        if not sep or not key:
            # the entry may hold a secret: show only where it is
            raise ValueError(f"entry {len(headers) + 1} is not key=value")
        headers[key] = urllib.parse.unquote(value).strip()
    return headers


#: The exporter classes per signal and protocol (module, class), imported when first used:
#: they pull in protobuf stubs (and ``requests`` for HTTP), only needed when exporting.
_EXPORTERS: Mapping[tuple[Signal, str], tuple[str, str]] = {
    ("traces", GRPC): ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
    ("traces", HTTP_PROTOBUF): (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "OTLPSpanExporter",
    ),
    ("metrics", GRPC): (
        "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
        "OTLPMetricExporter",
    ),
    ("metrics", HTTP_PROTOBUF): (
        "opentelemetry.exporter.otlp.proto.http.metric_exporter",
        "OTLPMetricExporter",
    ),
}


def _exporter(
    signal: Signal, endpoint: str, protocol: str, headers: Mapping[str, str] | None, timeout: float
) -> Any:
    target = otlp_target(endpoint, protocol, signal)
    module, name = _EXPORTERS[signal, GRPC if protocol == GRPC else HTTP_PROTOBUF]
    exporter_class = getattr(importlib.import_module(module), name)
    sent = dict(headers or {}) or None
    if protocol == GRPC:
        return exporter_class(
            endpoint=target.authority, insecure=not target.secure, headers=sent, timeout=timeout
        )
    return exporter_class(endpoint=target.url, headers=sent, timeout=timeout)


def span_exporter(
    endpoint: str,
    protocol: str = GRPC,
    headers: Mapping[str, str] | None = None,
    *,
    timeout: float = _DEFAULT_TIMEOUT,
) -> Any:
    """An OTLP ``SpanExporter`` for ``endpoint`` over ``protocol`` with ``headers``."""
    return _exporter("traces", endpoint, protocol, headers, timeout)


def metric_exporter(
    endpoint: str,
    protocol: str = GRPC,
    headers: Mapping[str, str] | None = None,
    *,
    timeout: float = _DEFAULT_TIMEOUT,
) -> Any:
    """An OTLP ``MetricExporter`` (cumulative temporality), as :func:`span_exporter`."""
    return _exporter("metrics", endpoint, protocol, headers, timeout)


# -- the standard OTEL_* variables --------------------------------------------------------------


@dataclass(frozen=True)
class OtelVariable:
    """A value read from the environment, with the variable's name (for error messages)."""

    name: str
    value: str


def otel_exporter_variable(
    environ: Mapping[str, str], signal: Signal, key: str
) -> OtelVariable | None:
    """``OTEL_EXPORTER_OTLP_<SIGNAL>_<KEY>``, else ``OTEL_EXPORTER_OTLP_<KEY>`` (the signal's
    own variable wins, as the OpenTelemetry SDKs have it); ``None`` when both are unset or
    empty."""
    for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_{key}", f"OTEL_EXPORTER_OTLP_{key}"):
        value = environ.get(name, "").strip()
        if value:
            return OtelVariable(name, value)
    return None


def otel_endpoint(environ: Mapping[str, str], signal: Signal, protocol: str) -> OtelVariable | None:
    """The endpoint the ``OTEL_*`` variables name for ``signal``.

    The signal's own variable is used as written; the generic ``OTEL_EXPORTER_OTLP_ENDPOINT``
    is a base URL to which OTLP/HTTP appends ``v1/<signal>``.
    """
    found = otel_exporter_variable(environ, signal, "ENDPOINT")
    if found is None or found.name != "OTEL_EXPORTER_OTLP_ENDPOINT" or protocol != HTTP_PROTOBUF:
        return found
    base = found.value
    if "://" in base:
        base = base.split("?", 1)[0].split("#", 1)[0]
    return OtelVariable(found.name, f"{base.rstrip('/')}/v1/{signal}")


#: ``OTEL_TRACES_SAMPLER`` values and their fixed ratio (``None``: ``OTEL_TRACES_SAMPLER_ARG``).
OTEL_SAMPLERS: Final[Mapping[str, float | None]] = {
    "always_on": 1.0,
    "always_off": 0.0,
    "traceidratio": None,
    "parentbased_always_on": 1.0,
    "parentbased_always_off": 0.0,
    "parentbased_traceidratio": None,
}


def otel_sample_ratio(environ: Mapping[str, str]) -> OtelVariable | None:
    """The root sampling ratio ``OTEL_TRACES_SAMPLER`` (and ``_ARG``) ask for, as text;
    ``ValueError`` naming the variable for an unknown sampler or a bad ratio.

    The sidecar always keeps a caller's sampling decision (a mesh hop must not cut a trace),
    so ``traceidratio`` and ``parentbased_traceidratio`` mean the same ratio for new traces.
    """
    sampler = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if not sampler:
        return None
    if sampler not in OTEL_SAMPLERS:
        raise ValueError(
            f"$OTEL_TRACES_SAMPLER must be one of {', '.join(OTEL_SAMPLERS)} (got {sampler!r})"
        )
    fixed = OTEL_SAMPLERS[sampler]
    if fixed is not None:
        return OtelVariable("OTEL_TRACES_SAMPLER", str(fixed))
    arg = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not arg:
        return OtelVariable("OTEL_TRACES_SAMPLER", "1.0")  # the specification's default
    try:
        ratio = float(arg)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"$OTEL_TRACES_SAMPLER_ARG must be a number 0..1 (got {arg[:40]!r})")
    return OtelVariable("OTEL_TRACES_SAMPLER_ARG", str(ratio))
