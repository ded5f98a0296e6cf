"""The RPC metrics of a Prometheus registry exported as OpenTelemetry metrics over OTLP.

One source of truth: the ``grpc_{server,client}_*`` families (:mod:`telemetry.metrics`, and the
same families the Envoy plane's collector serves) are read from the registry every
``interval`` and sent as the semantic-convention RPC metrics, so nothing is measured twice and
both data planes export the same numbers:

================================  ===============================  ========================
Prometheus family                 OpenTelemetry metric             kind, unit
================================  ===============================  ========================
``grpc_server_handling_seconds``  ``rpc.server.call.duration``     histogram, ``s``
``grpc_client_handling_seconds``  ``rpc.client.call.duration``     histogram, ``s``
``grpc_server_handled_total``     ``meshkit.rpc.server.calls``     monotonic sum, ``{call}``
``grpc_client_handled_total``     ``meshkit.rpc.client.calls``     monotonic sum, ``{call}``
================================  ===============================  ========================

(The durations follow the current RPC conventions, seconds; the older ``rpc.server.duration``
in milliseconds is not sent. The call counts carry the status, which the duration histograms
of go-grpc-prometheus do not have.) Attributes: ``rpc.system.name`` = ``grpc``, ``rpc.method``
= ``pkg.Service/Method``, ``rpc.response.status_code`` (``OK``, ``UNAVAILABLE``...) on the
counts, and every other label as ``meshkit.<label>`` (``meshkit.grpc_type``,
``meshkit.direction``, ``meshkit.cluster``). Temporality is cumulative, as Prometheus counts.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol

import grpc
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from telemetry.metrics import code_label

__all__ = ["OtelMetricsBridge", "metrics_data"]

_LOG = logging.getLogger(__name__)

_DURATIONS: Final = {
    "grpc_server_handling_seconds": "rpc.server.call.duration",
    "grpc_client_handling_seconds": "rpc.client.call.duration",
}
_CALLS: Final = {
    "grpc_server_handled": "meshkit.rpc.server.calls",
    "grpc_client_handled": "meshkit.rpc.client.calls",
}
_DESCRIPTIONS: Final = {
    "rpc.server.call.duration": "Duration of incoming RPCs (the sidecar's downstream calls).",
    "rpc.client.call.duration": "Duration of outgoing RPCs (the sidecar's upstream calls).",
    "meshkit.rpc.server.calls": "Incoming RPCs completed, by status.",
    "meshkit.rpc.client.calls": "Outgoing RPCs completed, by status.",
}
# go-grpc-prometheus' code spelling (DeadlineExceeded) -> the gRPC name (DEADLINE_EXCEEDED)
_CODE_NAMES: Final = {code_label(c): c.name for c in grpc.StatusCode}
_SCOPE = InstrumentationScope("meshkit.telemetry.otel_metrics")


class _Collector(Protocol):
    def collect(self) -> Iterable[Any]: ...


def _attributes(labels: Mapping[str, str]) -> dict[str, str]:
    out = {"rpc.system.name": "grpc"}
    service, method = labels.get("grpc_service", ""), labels.get("grpc_method", "")
    out["rpc.method"] = f"{service}/{method}"
    for name, value in labels.items():
        if name in ("grpc_service", "grpc_method", "le"):
            continue
        if name == "grpc_code":
            out["rpc.response.status_code"] = _CODE_NAMES.get(value, value)
        else:
            out[f"meshkit.{name}"] = value
    return out


def _key(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "le"))


def _histogram_points(family: Any, start: int, now: int) -> list[HistogramDataPoint]:
    # Prometheus buckets are cumulative (le="0.1" counts all calls up to 0.1 s); OTLP's
    # bucket_counts are per bucket, the last one above the highest bound.
    series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for sample in family.samples:
        entry = series.setdefault(_key(sample.labels), {"buckets": [], "labels": sample.labels})
        if sample.name.endswith("_bucket"):
            entry["buckets"].append((float(sample.labels["le"]), sample.value))
        elif sample.name.endswith("_count"):
            entry["count"] = sample.value
        elif sample.name.endswith("_sum"):
            entry["sum"] = sample.value
        elif sample.name.endswith("_created"):
            entry["created"] = sample.value
    points = []
    for entry in series.values():
        buckets = sorted(entry["buckets"])
        if not buckets:
            continue
        bounds = [le for le, _ in buckets if not math.isinf(le)]
        cumulative = [v for _, v in buckets]
        per_bucket = [int(cumulative[0])] + [int(b - a) for a, b in itertools.pairwise(cumulative)]
        if len(per_bucket) == len(bounds):  # no +Inf bucket: add the rest
            per_bucket.append(int(entry.get("count", cumulative[-1]) - cumulative[-1]))
        created = entry.get("created")
        points.append(
            HistogramDataPoint(
                attributes=_attributes(_strip(entry["labels"])),
                start_time_unix_nano=int(created * 1e9) if created else start,
                time_unix_nano=now,
                count=int(entry.get("count", cumulative[-1])),
                sum=float(entry.get("sum", 0.0)),
                bucket_counts=per_bucket,
                explicit_bounds=bounds,
                # Prometheus keeps no min and max: left out of the message, not invented
                min=None,  # type: ignore[arg-type]
                max=None,  # type: ignore[arg-type]
            )
        )
    return points


def _strip(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != "le"}


def _sum_points(family: Any, start: int, now: int) -> list[NumberDataPoint]:
    created = {_key(s.labels): s.value for s in family.samples if s.name.endswith("_created")}
    points = []
    for sample in family.samples:
        if not sample.name.endswith("_total"):
            continue
        began = created.get(_key(sample.labels))
        points.append(
            NumberDataPoint(
                attributes=_attributes(sample.labels),
                start_time_unix_nano=int(began * 1e9) if began else start,
                time_unix_nano=now,
                value=int(sample.value),
            )
        )
    return points


def metrics_data(
    collector: _Collector, resource: Resource, *, start_time_unix_nano: int
) -> MetricsData:
    """The RPC families ``collector`` (a ``CollectorRegistry``) holds now, as OTLP-ready
    ``MetricsData`` (see the module doc); families it lacks are simply absent."""
    now = time.time_ns()
    metrics: list[Metric] = []
    for family in collector.collect():
        name = _DURATIONS.get(family.name)
        if name is not None and family.type == "histogram":
            points = _histogram_points(family, start_time_unix_nano, now)
            data: Any = Histogram(points, AggregationTemporality.CUMULATIVE)
            metrics.append(Metric(name, _DESCRIPTIONS[name], "s", data))
            continue
        name = _CALLS.get(family.name)
        if name is not None and family.type == "counter":
            sums = _sum_points(family, start_time_unix_nano, now)
            data = Sum(sums, AggregationTemporality.CUMULATIVE, is_monotonic=True)
            metrics.append(Metric(name, _DESCRIPTIONS[name], "{call}", data))
    scope = ScopeMetrics(_SCOPE, metrics, "")
    return MetricsData([ResourceMetrics(resource, [scope], "")])


class OtelMetricsBridge:
    """Every ``interval`` seconds, reads ``registry`` and hands :func:`metrics_data` to
    ``exporter`` (an OTLP ``MetricExporter``: see :func:`telemetry.otlp.metric_exporter`),
    from a daemon thread: an export never blocks the data path. :meth:`shutdown` exports a
    last time, then stops the exporter."""

    def __init__(
        self,
        registry: _Collector,
        exporter: MetricExporter,
        *,
        interval: float,
        service_name: str,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval}")
        self._registry = registry
        self._exporter = exporter
        self._interval = interval
        self._resource = Resource.create({SERVICE_NAME: service_name})
        self._start = time.time_ns()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def export_once(self) -> MetricExportResult:
        """Read and export now (the periodic thread calls this too, one at a time)."""
        data = metrics_data(self._registry, self._resource, start_time_unix_nano=self._start)
        with self._lock:
            try:
                return self._exporter.export(data, timeout_millis=10_000)
            except Exception:  # an exporter bug must not kill the thread: log, go on
                _LOG.exception("OTLP metrics export failed")
                return MetricExportResult.FAILURE

    def start(self) -> None:
        """Start the periodic export (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="otel-metrics", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self.export_once() is not MetricExportResult.SUCCESS:
                _LOG.warning("OTLP metrics export failed; retrying in %gs", self._interval)

    def shutdown(self) -> None:
        """Stop the thread, export a last time, shut the exporter down (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self.export_once()
        self._exporter.shutdown()
