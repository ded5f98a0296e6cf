"""Envoy's view, read back in meshkit's terms: Prometheus families and the ``/clusters`` page.

:class:`EnvoyCollector` reads Envoy's ``/stats/prometheus`` at scrape time and yields:

- the go-grpc-prometheus families of meshkit's Python plane (:mod:`telemetry.metrics`), same
  names, labels and types, translated from Envoy's ``grpc_stats`` filter stats. Those are kept
  per *upstream cluster* (``cluster.<c>.grpc.<pkg.Service>.<Method>.<stat>``), not per listener,
  and the bootstrap's tag extraction (:func:`sidecar.envoy.bootstrap.stats_config`) turns them
  into ``envoy_cluster_grpc*{envoy_cluster_name, grpc_service, grpc_method[, grpc_code]}``.
  The sidecar passes :func:`meshkit_scope`, so the series carry ``direction`` and ``cluster``
  (the contract of :mod:`sidecar.proxy_metrics`, the same on the Python plane) and come with
  ``grpc_client_*`` twins and the per-cluster retry and ejection counters; without a scope
  they are summed over clusters:

  ========================================  ===================================================
  ``grpc_server_handled_total``             ``cluster.<c>.grpc.<s>.<m>.<status number>``
  ``grpc_server_started_total``             ``...total``: Envoy counts a call when it *ends*, so
                                            ``started - handled`` (calls in flight) is always 0
  ``grpc_server_msg_received_total``        ``...request_message_count``
  ``grpc_server_msg_sent_total``            ``...response_message_count``
  ``grpc_server_handling_seconds``          ``...upstream_rq_time`` (the upstream's time, whole
                                            milliseconds: buckets start at 1 ms)
  ``meshkit_cluster_retries_total``         ``cluster.<c>.upstream_rq_retry``
  ``meshkit_cluster_ejections_total``       ``cluster.<c>.outlier_detection.ejections_enforced_
                                            total``
  ========================================  ===================================================

  Where Envoy has no equivalent: ``grpc_type`` is ``"unknown"`` (Envoy does not know a
  method's streaming kind) unless the owner passes ``grpc_type``, a function from the method
  path (``/pkg.Service/Method``) to the label, as the sidecar does from its routes' ``kind``
  hints so both planes label alike; a call ended by the client (cancel, deadline) carries no
  ``grpc-status`` and is not counted, where the Python plane counts ``Canceled`` /
  ``DeadlineExceeded``; a status code above 16 is spelt ``Code(<n>)``, as Go does.
- every other Envoy stat, re-exported under Envoy's own family names (``envoy_*``). Counters
  come out with the ``_total`` suffix Prometheus client libraries require; where Envoy has both
  ``X`` (labelled, e.g. per response code) and ``X_total``, the labelled one becomes
  ``X_by_<label>_total`` (e.g. ``envoy_cluster_upstream_rq_by_response_code_total``) so that
  every family name stays unique in both text formats.
- ``meshkit_envoy_up``: 1 when Envoy answered this scrape. A down, slow or garbled Envoy makes
  a scrape yield only ``meshkit_envoy_up 0``: a scrape never hangs (one bounded request) and
  never raises.

Envoy's counters restart from zero when Envoy restarts, which Prometheus reads as a reset.

:func:`clusters_view` turns Envoy's ``/clusters?format=json`` into the document of
:func:`telemetry.clusters.clusters_snapshot`, so ``/clusters`` has one shape for both planes;
:func:`read_clusters_view` fetches and turns it in one call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sidecar.envoy._translate_clusters import OUTBOUND_PREFIX
from sidecar.envoy._translate_listeners import APP_CLUSTER as APP_ENVOY_CLUSTER
from sidecar.envoy.admin_client import AdminError, EnvoyAdmin, address_text
from sidecar.envoy.bootstrap import XDS_CLUSTER
from sidecar.proxy_metrics import (
    APP_CLUSTER,
    EJECTIONS,
    EJECTIONS_HELP,
    INBOUND,
    LABELS,
    OUTBOUND,
    RETRIES,
    RETRIES_HELP,
)
from telemetry.metrics import UNKNOWN_LABEL, code_label

__all__ = [
    "EnvoyCollector",
    "clusters_view",
    "envoy_families",
    "meshkit_scope",
    "read_clusters_view",
    "reexport",
    "translate_grpc",
]

_LOG = logging.getLogger(__name__)

#: Method path (``/pkg.Service/Method``) -> ``grpc_type`` label value.
GrpcTypeOf = Callable[[str], str]
#: Envoy cluster name -> ``(direction, cluster)`` label values, ``None`` to leave it out.
ScopeOf = Callable[[str], "tuple[str, str] | None"]

# Family names as prometheus_client's parser gives them (a counter loses ``_total``, so Envoy's
# per-code ``...grpc`` and its ``...grpc.total`` share the name; the grpc_code label tells).
_GRPC: Final = "envoy_cluster_grpc"
_GRPC_FAMILIES: Final = frozenset(
    {
        _GRPC,
        f"{_GRPC}_success",
        f"{_GRPC}_failure",
        f"{_GRPC}_request_message_count",
        f"{_GRPC}_response_message_count",
        f"{_GRPC}_upstream_rq_time",
    }
)
_CLUSTER_LABEL: Final = "envoy_cluster_name"
# Counter family names as the parser gives them (without ``_total``).
_RETRY: Final = "envoy_cluster_upstream_rq_retry"
_EJECTIONS: Final = "envoy_cluster_outlier_detection_ejections_enforced"
_CODE_NAMES: Final = {code.value[0]: code_label(code) for code in grpc.StatusCode}


def _code_name(text: str) -> str:
    try:
        number = int(text)
    except ValueError:
        return UNKNOWN_LABEL
    return _CODE_NAMES.get(number, f"Code({number})")


_Part = tuple[dict[float, float], float]
"""One Envoy cluster's part of a histogram series: cumulative buckets and sum, in ms (the
count is the ``+Inf`` bucket)."""


class _Histogram:
    """One histogram series being summed over clusters."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: dict[float, float] | None = None
        self.total = 0.0

    def add(self, buckets: dict[float, float], total: float) -> None:
        if self.buckets is None:
            self.buckets = dict(buckets)
        else:
            # Cumulative counts add up exactly at bounds every part has; others are dropped.
            self.buckets = {le: n + buckets[le] for le, n in self.buckets.items() if le in buckets}
        self.total += total


def meshkit_scope(envoy_cluster: str) -> tuple[str, str] | None:
    """The ``(direction, cluster)`` labels of calls to an Envoy cluster named by
    :mod:`sidecar.envoy.translate`; ``None`` for meshkit's own clusters (health, OTLP)."""
    if envoy_cluster.startswith(OUTBOUND_PREFIX):
        return OUTBOUND, envoy_cluster[len(OUTBOUND_PREFIX) :]
    if envoy_cluster == APP_ENVOY_CLUSTER:
        return INBOUND, APP_CLUSTER
    return None


def _server_and_client(labels: tuple[str, ...], sides: tuple[str, ...]) -> dict[str, list[Metric]]:
    out: dict[str, list[Metric]] = {}
    for side in sides:
        out[side] = [
            CounterMetricFamily(
                f"grpc_{side}_started",
                f"Total number of RPCs started on the {side}.",
                labels=labels,
            ),
            CounterMetricFamily(
                f"grpc_{side}_handled",
                f"Total number of RPCs completed on the {side}, regardless of success or failure.",
                labels=(*labels, "grpc_code"),
            ),
            HistogramMetricFamily(
                f"grpc_{side}_handling_seconds",
                f"Histogram of RPC handling latency (seconds) on the {side}.",
                labels=labels,
            ),
            CounterMetricFamily(
                f"grpc_{side}_msg_received",
                f"Total number of RPC stream messages received on the {side}.",
                labels=labels,
            ),
            CounterMetricFamily(
                f"grpc_{side}_msg_sent",
                f"Total number of RPC stream messages sent on the {side}.",
                labels=labels,
            ),
        ]
    return out


def translate_grpc(
    families: Iterable[Metric],
    *,
    scope: ScopeOf | None = None,
    grpc_type: GrpcTypeOf | None = None,
) -> list[Metric]:
    """The ``grpc_server_*`` families from Envoy's parsed ``envoy_cluster_grpc*`` families
    (see the module doc); samples without ``grpc_service`` / ``grpc_method`` are skipped.

    ``scope``: Envoy cluster name -> ``(direction, cluster)`` labels, or ``None`` to leave the
    cluster's calls out (e.g. :func:`meshkit_scope`). With it the families carry those labels,
    ``grpc_client_*`` twins come too (Envoy's per-method stats are per downstream request, so
    the two sides count the same calls; the messages swap sides), and
    ``meshkit_cluster_retries_total`` / ``meshkit_cluster_ejections_total`` for outbound
    clusters. Without it, series are summed over clusters."""
    labels: tuple[str, ...] = ("grpc_type", "grpc_service", "grpc_method")
    sides: tuple[str, ...] = ("server",)
    if scope is not None:
        labels = (*labels, *LABELS)
        sides = ("server", "client")
    started: dict[tuple[str, ...], float] = {}
    handled: dict[tuple[str, ...], float] = {}
    received: dict[tuple[str, ...], float] = {}
    sent: dict[tuple[str, ...], float] = {}
    histograms: dict[tuple[str, ...], dict[str, _Part]] = {}
    retries: dict[str, float] = {}
    ejections: dict[str, float] = {}

    def key(sample_labels: Mapping[str, str]) -> tuple[str, ...] | None:
        service = sample_labels.get("grpc_service")
        method = sample_labels.get("grpc_method")
        if not service or not method:
            return None
        kind = grpc_type(f"/{service}/{method}") if grpc_type is not None else UNKNOWN_LABEL
        base = (kind, service, method)
        if scope is None:
            return base
        found = scope(sample_labels.get(_CLUSTER_LABEL, ""))
        return None if found is None else (*base, *found)

    def outbound_cluster(sample_labels: Mapping[str, str]) -> str | None:
        found = scope(sample_labels.get(_CLUSTER_LABEL, "")) if scope is not None else None
        return found[1] if found is not None and found[0] == OUTBOUND else None

    messages = {
        f"{_GRPC}_request_message_count": received,
        f"{_GRPC}_response_message_count": sent,
    }
    cluster_counts = {_RETRY: retries, _EJECTIONS: ejections}
    for family in families:
        if family.type == "counter" and (family.name == _GRPC or family.name in messages):
            for sample in family.samples:
                k = key(sample.labels)
                if k is None or not sample.name.endswith("_total"):
                    continue
                code = sample.labels.get("grpc_code")
                if family.name in messages:
                    target = messages[family.name]
                elif code is None:
                    target = started
                else:
                    target, k = handled, (*k, _code_name(code))
                target[k] = target.get(k, 0.0) + sample.value
        elif family.type == "histogram" and family.name == f"{_GRPC}_upstream_rq_time":
            for sample in family.samples:
                k = key(sample.labels)
                if k is not None:
                    _add_part(histograms.setdefault(k, {}), sample)
        elif family.type == "counter" and family.name in cluster_counts:
            counts = cluster_counts[family.name]
            for sample in family.samples:
                name = outbound_cluster(sample.labels)
                if name is not None and sample.name.endswith("_total"):
                    counts[name] = counts.get(name, 0.0) + sample.value

    out = _server_and_client(labels, sides)
    merged_histograms: list[tuple[tuple[str, ...], list[tuple[str, float]], float]] = []
    for k, parts in sorted(histograms.items()):
        merged = _Histogram()
        for buckets, total in parts.values():
            merged.add(buckets, total)
        bounds = sorted(merged.buckets or {})
        if not bounds or bounds[-1] != float("inf"):
            continue  # not a whole histogram: better none than a wrong one
        points = [(_le_seconds(le), (merged.buckets or {})[le]) for le in bounds]
        merged_histograms.append((k, points, merged.total / 1000.0))
    for side, (o_started, o_handled, o_seconds, o_received, o_sent) in out.items():
        # A server receives requests and sends responses; a client the other way round.
        ins, outs = (received, sent) if side == "server" else (sent, received)
        for source, family in (
            (started, o_started),
            (handled, o_handled),
            (ins, o_received),
            (outs, o_sent),
        ):
            for k, value in sorted(source.items()):
                family.add_metric(list(k), value)  # type: ignore[attr-defined]
        for k, points, total in merged_histograms:
            o_seconds.add_metric(list(k), points, total)  # type: ignore[attr-defined]
    result = [metric for side in sides for metric in out[side]]
    if scope is not None:
        for name, help_, counts in (
            (RETRIES, RETRIES_HELP, retries),
            (EJECTIONS, EJECTIONS_HELP, ejections),
        ):
            family = CounterMetricFamily(name, help_, labels=("cluster",))
            for cluster, value in sorted(counts.items()):
                family.add_metric([cluster], value)
            result.append(family)
    return result


def _add_part(parts: dict[str, _Part], sample: Any) -> None:
    """Add one histogram sample to its Envoy cluster's part."""
    cluster = sample.labels.get(_CLUSTER_LABEL, "")
    buckets, total = parts.get(cluster, ({}, 0.0))
    if sample.name.endswith("_bucket"):
        le = sample.labels.get("le", "")
        buckets = {**buckets, (float("inf") if le == "+Inf" else float(le)): sample.value}
    elif sample.name.endswith("_sum"):
        total = sample.value
    parts[cluster] = (buckets, total)


def _le_seconds(milliseconds: float) -> str:
    if milliseconds == float("inf"):
        return "+Inf"
    # Nine significant digits drop the float noise of /1000 (2.5 ms -> "0.0025"); then the
    # spelling prometheus_client gives its own histograms' bounds.
    seconds = float(f"{milliseconds / 1000.0:.9g}")
    return str(floatToGoString(seconds))  # type: ignore[no-untyped-call]


def _reserved(family: Metric) -> set[str]:
    names = {family.name}
    names.update(sample.name for sample in family.samples)
    if family.type == "counter":
        names.add(family.name + "_total")
    elif family.type == "histogram":
        names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def _renamed(family: Metric, name: str) -> Metric:
    out = Metric(name, family.documentation, family.type)
    cut = len(family.name)
    out.samples = [sample._replace(name=name + sample.name[cut:]) for sample in family.samples]
    return out


def _label_names(family: Metric) -> frozenset[str]:
    names: set[str] = set()
    for sample in family.samples:
        names.update(sample.labels)
    names.discard("le")
    return frozenset(names)


def reexport(families: Iterable[Metric], *, skip: Iterable[str] = _GRPC_FAMILIES) -> list[Metric]:
    """Envoy's parsed families with unique names (see the module doc); ``skip``: family names
    left out (by default the ``grpc_stats`` ones, exported as ``grpc_server_*`` instead)."""
    skipped = set(skip)
    kept = [f for f in families if f.name not in skipped]
    by_name: dict[str, list[Metric]] = {}
    for family in kept:
        by_name.setdefault(family.name, []).append(family)
    out: list[Metric] = []
    taken: set[str] = set()
    for family in kept:
        same = by_name[family.name]
        if len(same) > 1 and all(f.type == "counter" for f in same):
            extra = _label_names(family) - frozenset().union(
                *(_label_names(f) for f in same if f is not family)
            )
            if extra and len(extra) == 1:
                family = _renamed(family, f"{family.name}_by_{_short(next(iter(extra)))}")
        names = _reserved(family)
        if names & taken:
            _LOG.debug("envoy stat family %s clashes with another; left out", family.name)
            continue
        taken |= names
        out.append(family)
    return out


def _short(label: str) -> str:
    return label.removeprefix("envoy_")


def envoy_families(
    text: str, *, scope: ScopeOf | None = None, grpc_type: GrpcTypeOf | None = None
) -> list[Metric]:
    """Everything :class:`EnvoyCollector` yields from one ``/stats/prometheus`` answer, but
    ``meshkit_envoy_up``. Raises ``ValueError`` on text that is not Prometheus' format."""
    families = list(text_string_to_metric_families(text))
    return [
        *translate_grpc(families, scope=scope, grpc_type=grpc_type),
        *reexport(families),
    ]


class EnvoyCollector(Collector):
    """Scrape-time metrics of a running Envoy (see the module doc).

    ``admin``: the :class:`EnvoyAdmin` to read, or a callable returning the current one or
    its address (``None`` while no Envoy runs), e.g. ``lambda: process.admin``, as the admin
    address changes when Envoy is restarted. ``timeout``: bound on one scrape's request
    (``None``: the admin client's own, 2 s by default). ``used_only``: only stats Envoy has
    written at least once (a fraction of the size).
    Registered in ``registry`` when one is given.
    """

    def __init__(
        self,
        admin: EnvoyAdmin | Callable[[], EnvoyAdmin | str | None],
        *,
        registry: CollectorRegistry | None = None,
        timeout: float | None = None,
        used_only: bool = True,
        scope: ScopeOf | None = None,
        grpc_type: GrpcTypeOf | None = None,
    ) -> None:
        self._grpc_type = grpc_type
        self._admin: Callable[[], EnvoyAdmin | str | None] = (
            admin if callable(admin) else (lambda: admin)
        )
        self._timeout = timeout
        self._used_only = used_only
        self._scope = scope
        self._was_up = True
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterable[Metric]:
        """The families always present: lets a registry catch a clash (e.g. the Python
        plane's ``grpc_server_*`` registered in the same registry) at registration."""
        return [_up(), *translate_grpc((), scope=self._scope)]

    def collect(self) -> Iterator[Metric]:
        """Read Envoy now; only ``meshkit_envoy_up 0`` when that fails."""
        try:
            admin = self._admin()
            if admin is None:
                raise LookupError("no Envoy running")
            if isinstance(admin, str):
                admin = EnvoyAdmin(admin)
            text = admin.stats_prometheus(used_only=self._used_only, timeout=self._timeout)
            families = envoy_families(text, scope=self._scope, grpc_type=self._grpc_type)
        except Exception as exc:
            if self._was_up:
                _LOG.warning("envoy: reading stats failed: %s", exc)
            self._was_up = False
            yield _up(0.0)
            return
        if not self._was_up:
            _LOG.info("envoy: reading stats again")
        self._was_up = True
        yield _up(1.0)
        yield from families


def _up(value: float | None = None) -> GaugeMetricFamily:
    up = GaugeMetricFamily("meshkit_envoy_up", "1 when Envoy's admin answered this scrape, else 0.")
    if value is not None:
        up.add_metric([], value)
    return up


# -- /clusters -----------------------------------------------------------------------------

_UNHEALTHY_EDS: Final = frozenset({"UNHEALTHY", "DRAINING", "TIMEOUT"})
_READY, _CONNECTING, _IDLE, _FAILURE = "READY", "CONNECTING", "IDLE", "TRANSIENT_FAILURE"


def _stat_values(host: Mapping[str, Any]) -> dict[str, int]:
    values: dict[str, int] = {}
    for stat in host.get("stats", ()):
        if isinstance(stat, Mapping) and "name" in stat:
            # Envoy leaves out "value" when it is 0, and writes numbers as strings.
            values[str(stat["name"])] = int(stat.get("value", 0) or 0)
    return values


def _endpoint(
    host: Mapping[str, Any],
    health_checked: bool,
    watched: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    address = address_text(host.get("address", {}))
    status = host.get("health_status", {})
    stats = _stat_values(host)
    eds = str(status.get("eds_health_status", "HEALTHY"))
    ejected = bool(status.get("failed_outlier_check", False))
    # What the control plane's health watch says of it (the reason behind its EDS status).
    verdict = watched.get(address) if watched is not None else None
    if status.get("failed_active_health_check"):
        health, state = "unhealthy", _FAILURE
        reason = f"endpoint {address} unhealthy: failed active health check"
    elif eds in _UNHEALTHY_EDS:
        health, state = "unhealthy", _FAILURE
        why = verdict[1] if verdict is not None else f"control plane says {eds}"
        reason = f"endpoint {address} unhealthy: {why}"
    elif status.get("pending_active_hc"):
        health, state = "pending", _CONNECTING
        reason = f"endpoint {address}: health pending"
    elif verdict is not None and verdict[0] == "pending" and not ejected:
        # Routable meanwhile: Envoy cannot hold calls for it (see endpoint_health).
        health = "pending"
        state = _READY if stats.get("cx_active", 0) > 0 else _IDLE
        reason = f"endpoint {address}: health pending (routable meanwhile)"
    else:
        health = "healthy" if health_checked else "off"
        if ejected:
            state, reason = _FAILURE, f"endpoint {address} ejected by outlier detection"
        else:
            # A host passing health checks is one Envoy's balancer picks (its checks use their
            # own connections); else Envoy connects on demand, and no connection is IDLE.
            connected = health_checked or stats.get("cx_active", 0) > 0
            state = _READY if connected else _IDLE
            reason = f"endpoint {address} is {state}"
    return {
        "address": address,
        "state": state,
        "reason": reason,
        "health": health,
        "ejected": ejected,
        "picks": stats.get("rq_total", 0),
    }


def _aggregate(states: list[str]) -> str:
    # gRPC's rule (balancers.aggregate): no endpoint at all is TRANSIENT_FAILURE.
    for state in (_READY, _CONNECTING, _IDLE):
        if state in states:
            return state
    return _FAILURE


def clusters_view(
    document: Mapping[str, Any],
    *,
    clusters: Mapping[str, Any] | None = None,
    health: Mapping[str, Mapping[str, tuple[str, str]]] | None = None,
) -> dict[str, Any]:
    """meshkit's ``/clusters`` document from Envoy's ``/clusters?format=json``.

    ``clusters``: meshkit's cluster configs by name (objects with ``target``, ``lb_policy``,
    ``health_check``); when given, only those clusters are shown, and one Envoy does not
    have (yet) gets an ``error``. Otherwise every Envoy cluster but ``meshkit_xds`` is shown,
    with ``target`` and ``lb_policy`` null. Endpoint ``state`` is what Envoy's balancer sees:
    failing health checks (Envoy's or the control plane's EDS status) or ejected is
    ``TRANSIENT_FAILURE``, health-check pending ``CONNECTING``, passing health checks or with
    an open connection ``READY``, else ``IDLE``; ``picks`` is Envoy's ``rq_total``.

    ``health``: per Envoy cluster, the control plane's health watch of each endpoint
    (address -> (``healthy`` / ``unhealthy`` / ``pending``, why), see
    :meth:`sidecar.envoy.endpoint_health.EndpointHealth.view`): an endpoint its EDS status
    keeps out says why, one with no answer yet is ``pending``.
    """
    statuses: dict[str, Mapping[str, Any]] = {}
    for status in document.get("cluster_statuses", ()):
        if isinstance(status, Mapping) and "name" in status:
            statuses[str(status["name"])] = status
    names = sorted(clusters) if clusters is not None else sorted(set(statuses) - {XDS_CLUSTER})
    out: dict[str, Any] = {}
    for name in names:
        config = clusters.get(name) if clusters is not None else None
        status = statuses.get(name)
        if status is None:
            out[name] = {"error": "cluster not in Envoy's configuration (yet)"}
            continue
        try:
            health_checked = getattr(config, "health_check", None) is not None
            watched = health.get(name) if health is not None else None
            endpoints = [
                _endpoint(host, health_checked, watched)
                for host in status.get("host_statuses", ())
                if isinstance(host, Mapping)
            ]
            out[name] = {
                "target": getattr(config, "target", None),
                "lb_policy": getattr(config, "lb_policy", None),
                "state": _aggregate([e["state"] for e in endpoints]),
                "endpoints": endpoints,
            }
        except (TypeError, ValueError, AttributeError) as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def read_clusters_view(
    admin: EnvoyAdmin | str,
    *,
    clusters: Mapping[str, Any] | None = None,
    health: Mapping[str, Mapping[str, tuple[str, str]]] | None = None,
) -> dict[str, Any]:
    """:func:`clusters_view` of what Envoy's admin (a client or its address) answers now, for
    the admin server's thread (one bounded request). When Envoy does not answer, each cluster
    of ``clusters`` is shown with an ``error`` (no cluster at all without ``clusters``)."""
    client = EnvoyAdmin(admin) if isinstance(admin, str) else admin
    try:
        document = client.clusters()
    except AdminError as exc:
        return {name: {"error": f"envoy: {exc}"} for name in sorted(clusters or {})}
    return clusters_view(document, clusters=clusters, health=health)
