"""Envoy stats and cluster state read back in meshkit's terms, from output captured from Envoy.

``envoy_data/`` holds real Envoy 1.40 answers: ``stats_prometheus.txt`` is an excerpt of
``/stats/prometheus?usedonly`` from an Envoy with meshkit's ``stats_config`` and the
``grpc_stats`` filter, routing 50/50 to clusters ``echo_a`` and ``echo_b`` after 6 OK and
2 NOT_FOUND unary calls and one server-streaming call of 3 replies (echo_a: 2 OK + 1 NOT_FOUND;
echo_b: 4 OK + 1 NOT_FOUND + the stream). ``clusters.json`` is ``/clusters?format=json`` of that
Envoy; ``clusters_health.json`` of one with active gRPC health checks on a live endpoint, a
dead one, and a unix-socket one the config marks DRAINING.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from sidecar.envoy.admin_client import AdminError
from sidecar.envoy.bootstrap import GRPC_LATENCY_BUCKETS_MS
from sidecar.envoy.metrics import (
    EnvoyCollector,
    clusters_view,
    envoy_families,
    meshkit_scope,
    reexport,
    translate_grpc,
)
from sidecar.proxy_metrics import ProxyMetrics
from telemetry.metrics import UNARY, GrpcMetrics

DATA = Path(__file__).parent / "envoy_data"
STATS = (DATA / "stats_prometheus.txt").read_text()
SERVICE = "meshkit.test.Echo"


def _labels(method: str, **extra: str) -> dict[str, str]:
    return {"grpc_type": "unknown", "grpc_service": SERVICE, "grpc_method": method, **extra}


class _Families:
    """Families yielded by a collector, registered in a registry of their own."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.registry = CollectorRegistry()
        self.list = list(families)
        outer = self

        class _Static:
            def collect(self) -> Iterator[Metric]:
                return iter(outer.list)

        self.registry.register(_Static())

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.registry.get_sample_value(name, labels or {})


@pytest.fixture
def translated() -> _Families:
    return _Families(envoy_families(STATS))


# -- grpc_server_* -------------------------------------------------------------------------


def test_handled_by_method_and_code_summed_over_clusters(translated: _Families) -> None:
    handled = "grpc_server_handled_total"
    assert translated.value(handled, _labels("Unary", grpc_code="OK")) == 6
    assert translated.value(handled, _labels("Unary", grpc_code="NotFound")) == 2
    assert translated.value(handled, _labels("ServerStream", grpc_code="OK")) == 1
    assert translated.value("grpc_server_started_total", _labels("Unary")) == 8
    assert translated.value("grpc_server_started_total", _labels("ServerStream")) == 1


def test_messages_received_and_sent(translated: _Families) -> None:
    assert translated.value("grpc_server_msg_received_total", _labels("Unary")) == 8
    assert translated.value("grpc_server_msg_sent_total", _labels("Unary")) == 6
    assert translated.value("grpc_server_msg_received_total", _labels("ServerStream")) == 1
    assert translated.value("grpc_server_msg_sent_total", _labels("ServerStream")) == 3


def test_latency_histogram_in_seconds_on_meshkit_bounds(translated: _Families) -> None:
    name = "grpc_server_handling_seconds"
    assert translated.value(f"{name}_count", _labels("Unary")) == 8
    # Envoy's sum is 1.047... ms (one call of ~1 ms, the others under 1 ms)
    total = translated.value(f"{name}_sum", _labels("Unary"))
    assert total is not None and 0.001 < total < 0.0011
    family = next(f for f in translated.list if f.name == name)
    unary = [s for s in family.samples if s.labels["grpc_method"] == "Unary"]
    bounds = [s.labels["le"] for s in unary if s.name.endswith("_bucket")]
    assert bounds == [*(str(ms / 1000) for ms in GRPC_LATENCY_BUCKETS_MS), "+Inf"]
    counts = [s.value for s in unary if s.name.endswith("_bucket")]
    assert counts == sorted(counts) and counts[-1] == 8


def test_same_names_labels_and_types_as_the_python_plane(translated: _Families) -> None:
    python = CollectorRegistry()
    metrics = GrpcMetrics(python, "server")
    t0 = metrics.start("/meshkit.test.Echo/Unary", UNARY)
    metrics.done("/meshkit.test.Echo/Unary", UNARY, grpc.StatusCode.OK, t0)
    metrics.received("/meshkit.test.Echo/Unary", UNARY)
    metrics.sent("/meshkit.test.Echo/Unary", UNARY)

    def shape(families: Iterable[Metric]) -> dict[str, tuple[str, frozenset[str]]]:
        out = {}
        for family in families:
            if family.name.startswith("grpc_server_"):
                names = {k for s in family.samples if "_created" not in s.name for k in s.labels}
                out[family.name] = (family.type, frozenset(names - {"le"}))
        return out

    assert shape(translated.list) == shape(python.collect())
    python_le = {
        s.labels["le"]
        for f in python.collect()
        if f.name == "grpc_server_handling_seconds"
        for s in f.samples
        if "le" in s.labels
    }
    grpc_le = {
        s.labels["le"]
        for f in translated.list
        if f.name == "grpc_server_handling_seconds"
        for s in f.samples
        if "le" in s.labels
    }
    assert grpc_le <= python_le  # the same bounds, from 1 ms up


def _meshkit_names(text: str) -> str:
    # The sample was taken from a static Envoy: give its clusters the sidecar's names.
    return text.replace('"echo_a"', '"outbound|backend"').replace('"echo_b"', '"inbound|app"')


def test_meshkit_scope_names_direction_and_cluster() -> None:
    assert meshkit_scope("outbound|backend") == ("outbound", "backend")
    assert meshkit_scope("outbound|a|b") == ("outbound", "a|b")
    assert meshkit_scope("inbound|app") == ("inbound", "app")
    assert meshkit_scope("meshkit|health") is None
    assert meshkit_scope("meshkit|otlp") is None
    assert meshkit_scope("xds") is None


def test_scope_labels_server_and_client_families() -> None:
    families = _Families(envoy_families(_meshkit_names(STATS), scope=meshkit_scope))
    out = {"direction": "outbound", "cluster": "backend"}
    inb = {"direction": "inbound", "cluster": "app"}
    for side in ("server", "client"):
        handled = f"grpc_{side}_handled_total"
        assert families.value(handled, _labels("Unary", grpc_code="OK", **out)) == 2
        assert families.value(handled, _labels("Unary", grpc_code="OK", **inb)) == 4
        assert families.value(handled, _labels("Unary", grpc_code="OK")) is None
        assert families.value(f"grpc_{side}_handling_seconds_count", _labels("Unary", **out)) == 3
    # requests: received by the server side, sent by the client side
    received = families.value("grpc_server_msg_received_total", _labels("Unary", **out))
    assert received == 3
    assert families.value("grpc_client_msg_sent_total", _labels("Unary", **out)) == received
    sent = families.value("grpc_server_msg_sent_total", _labels("Unary", **out))
    assert families.value("grpc_client_msg_received_total", _labels("Unary", **out)) == sent


def test_scope_leaves_out_meshkit_clusters() -> None:
    text = STATS.replace('"echo_a"', '"meshkit|health"').replace('"echo_b"', '"outbound|b"')
    families = _Families(envoy_families(text, scope=meshkit_scope))
    started = [s for f in families.list if f.name == "grpc_server_started" for s in f.samples]
    assert started and {s.labels["cluster"] for s in started} == {"b"}


def test_retries_and_ejections_per_outbound_cluster() -> None:
    text = (
        "# TYPE envoy_cluster_upstream_rq_retry counter\n"
        'envoy_cluster_upstream_rq_retry{envoy_cluster_name="outbound|a"} 3\n'
        'envoy_cluster_upstream_rq_retry{envoy_cluster_name="outbound|b"} 0\n'
        'envoy_cluster_upstream_rq_retry{envoy_cluster_name="inbound|app"} 9\n'
        'envoy_cluster_upstream_rq_retry{envoy_cluster_name="meshkit|health"} 9\n'
        "# TYPE envoy_cluster_outlier_detection_ejections_enforced_total counter\n"
        'envoy_cluster_outlier_detection_ejections_enforced_total{envoy_cluster_name="outbound|a"}'
        " 2\n"
    )
    families = _Families(envoy_families(text, scope=meshkit_scope))
    assert families.value("meshkit_cluster_retries_total", {"cluster": "a"}) == 3
    assert families.value("meshkit_cluster_retries_total", {"cluster": "b"}) == 0
    assert families.value("meshkit_cluster_retries_total", {"cluster": "app"}) is None
    assert families.value("meshkit_cluster_retries_total", {"cluster": "health"}) is None
    assert families.value("meshkit_cluster_ejections_total", {"cluster": "a"}) == 2
    # Envoy's own families stay too
    assert (
        families.value(
            "envoy_cluster_upstream_rq_retry_total", {"envoy_cluster_name": "outbound|a"}
        )
        == 3
    )


def test_scoped_families_match_the_python_plane_contract() -> None:
    python = CollectorRegistry()
    metrics = ProxyMetrics(python, dict)
    server, client = metrics.scopes("outbound", "backend")
    for side in (server, client):
        side.done(
            "/meshkit.test.Echo/Unary",
            UNARY,
            grpc.StatusCode.OK,
            side.start("/meshkit.test.Echo/Unary", UNARY),
        )
        side.received("/meshkit.test.Echo/Unary", UNARY)
        side.sent("/meshkit.test.Echo/Unary", UNARY)
    metrics.retries.labels("backend").inc()

    def shape(families: Iterable[Metric]) -> dict[str, tuple[str, frozenset[str]]]:
        out = {}
        for family in families:
            if family.name.startswith(("grpc_", "meshkit_cluster_retries")):
                names = {k for s in family.samples if "_created" not in s.name for k in s.labels}
                out[family.name] = (family.type, frozenset(names - {"le"}))
        return out

    envoy = envoy_families(
        _meshkit_names(STATS)
        + "# TYPE envoy_cluster_upstream_rq_retry counter\n"
        + 'envoy_cluster_upstream_rq_retry{envoy_cluster_name="outbound|backend"} 1\n',
        scope=meshkit_scope,
    )
    assert shape(envoy) == shape(python.collect())


def test_unknown_and_out_of_range_codes() -> None:
    text = (
        "# TYPE envoy_cluster_grpc counter\n"
        'envoy_cluster_grpc{envoy_cluster_name="c",grpc_service="s.S",grpc_method="M",'
        'grpc_code="17"} 2\n'
        'envoy_cluster_grpc{envoy_cluster_name="c",grpc_service="s.S",grpc_method="M",'
        'grpc_code="14"} 1\n'
    )
    families = _Families(translate_grpc(text_string_to_metric_families(text)))
    labels = {"grpc_type": "unknown", "grpc_service": "s.S", "grpc_method": "M"}
    assert families.value("grpc_server_handled_total", {**labels, "grpc_code": "Code(17)"}) == 2
    assert families.value("grpc_server_handled_total", {**labels, "grpc_code": "Unavailable"}) == 1


def test_stats_without_meshkit_tags_are_not_translated() -> None:
    # What Envoy gives without meshkit's stats_config: the default extractor's split names.
    text = (
        "# TYPE envoy_cluster_grpc_Echo_Unary_0 counter\n"
        'envoy_cluster_grpc_Echo_Unary_0{envoy_grpc_bridge_method="test",'
        'envoy_grpc_bridge_service="meshkit",envoy_cluster_name="echo"} 3\n'
    )
    families = _Families(envoy_families(text))
    assert (
        families.value(
            "envoy_cluster_grpc_Echo_Unary_0_total",
            {
                "envoy_grpc_bridge_method": "test",
                "envoy_grpc_bridge_service": "meshkit",
                "envoy_cluster_name": "echo",
            },
        )
        == 3
    )
    handled = next(f for f in families.list if f.name == "grpc_server_handled")
    assert handled.samples == []


def test_histogram_parts_with_different_bounds_keep_the_common_ones() -> None:
    def part(cluster: str, buckets: list[tuple[str, int]], total: float) -> str:
        labels = f'envoy_cluster_name="{cluster}",grpc_service="s.S",grpc_method="M"'
        lines = [
            f'envoy_cluster_grpc_upstream_rq_time_bucket{{{labels},le="{le}"}} {n}'
            for le, n in buckets
        ]
        lines.append(f"envoy_cluster_grpc_upstream_rq_time_sum{{{labels}}} {total}")
        lines.append(f"envoy_cluster_grpc_upstream_rq_time_count{{{labels}}} {buckets[-1][1]}")
        return "\n".join(lines)

    text = (
        "\n".join(
            [
                "# TYPE envoy_cluster_grpc_upstream_rq_time histogram",
                part("a", [("1", 1), ("5", 2), ("+Inf", 3)], 20),
                part("b", [("1", 4), ("2.5", 5), ("5", 5), ("+Inf", 6)], 30),
            ]
        )
        + "\n"
    )
    families = _Families(translate_grpc(text_string_to_metric_families(text)))
    labels = {"grpc_type": "unknown", "grpc_service": "s.S", "grpc_method": "M"}
    name = "grpc_server_handling_seconds"
    assert families.value(f"{name}_bucket", {**labels, "le": "0.001"}) == 5
    assert families.value(f"{name}_bucket", {**labels, "le": "0.0025"}) is None
    assert families.value(f"{name}_bucket", {**labels, "le": "0.005"}) == 7
    assert families.value(f"{name}_bucket", {**labels, "le": "+Inf"}) == 9
    assert families.value(f"{name}_count", labels) == 9
    assert families.value(f"{name}_sum", labels) == pytest.approx(0.05)


# -- envoy_* ---------------------------------------------------------------------------------


def test_envoy_stats_reexported_with_unique_names(translated: _Families) -> None:
    names = [f.name for f in translated.list]
    assert len(names) == len(set(names))
    # Envoy has both upstream_rq{code} and upstream_rq_total: the labelled one is renamed
    code = {"envoy_cluster_name": "echo_b", "envoy_response_code": "200"}
    assert translated.value("envoy_cluster_upstream_rq_by_response_code_total", code) == 6
    assert (
        translated.value("envoy_cluster_upstream_rq_total", {"envoy_cluster_name": "echo_b"}) == 6
    )
    assert (
        translated.value("envoy_cluster_upstream_cx_active", {"envoy_cluster_name": "echo_a"}) == 1
    )
    assert translated.value("envoy_server_live") == 1
    assert (
        translated.value(
            "envoy_cluster_upstream_cx_connect_ms_count", {"envoy_cluster_name": "echo_a"}
        )
        == 1
    )
    # the grpc_stats families are exported as grpc_server_* only
    assert not [n for n in names if n.startswith("envoy_cluster_grpc")]


def test_exposition_parses_in_both_formats(translated: _Families) -> None:
    text = generate_latest(translated.registry).decode()
    parsed = {f.name for f in text_string_to_metric_families(text)}
    assert {"grpc_server_handled", "envoy_cluster_upstream_rq"} <= parsed
    openmetrics = generate_openmetrics(translated.registry).decode()  # type: ignore[no-untyped-call]
    # the strict OpenMetrics parser raises on a name clash
    names = [f.name for f in parse_openmetrics(openmetrics)]  # type: ignore[no-untyped-call]
    assert len(names) == len(set(names))


def test_reexport_drops_what_still_clashes() -> None:
    text = (
        "# TYPE envoy_x counter\nenvoy_x 1\n"
        "# TYPE envoy_x_total gauge\nenvoy_x_total 2\n"  # would expose a second envoy_x_total
    )
    families = reexport(text_string_to_metric_families(text))
    assert [(f.name, f.type) for f in families] == [("envoy_x", "counter")]


# -- the collector ---------------------------------------------------------------------------


class _Admin:
    """Stands in for EnvoyAdmin: returns ``text`` or raises ``error``."""

    def __init__(self, text: str = "", error: Exception | None = None) -> None:
        self.text, self.error = text, error
        self.calls: list[dict[str, Any]] = []

    def stats_prometheus(self, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return self.text


def _scrape(admin: Any, **kwargs: Any) -> tuple[CollectorRegistry, list[str]]:
    registry = CollectorRegistry()
    EnvoyCollector(admin, registry=registry, **kwargs)
    return registry, [f.name for f in registry.collect()]


def test_collector_reads_envoy_at_scrape_time() -> None:
    admin = _Admin(STATS)
    registry, names = _scrape(lambda: admin, timeout=0.5)
    assert registry.get_sample_value("meshkit_envoy_up") == 1
    assert "grpc_server_handled" in names and "envoy_cluster_upstream_rq" in names
    # one bounded request per scrape (two scrapes here: collect, then get_sample_value)
    assert admin.calls == [{"used_only": True, "timeout": 0.5}] * 2


@pytest.mark.parametrize(
    "admin",
    [
        None,
        _Admin(error=AdminError("connection refused")),
        _Admin(error=RuntimeError("a bug")),
        _Admin("this is { not prometheus\n"),
    ],
    ids=["no-envoy", "admin-error", "any-error", "garbage"],
)
def test_collector_failure_gives_only_up_zero(admin: _Admin | None) -> None:
    registry, names = _scrape(lambda: admin)
    assert names == ["meshkit_envoy_up"]
    assert registry.get_sample_value("meshkit_envoy_up") == 0


def test_collector_clashes_with_the_python_plane_in_one_registry() -> None:
    registry = CollectorRegistry()
    GrpcMetrics(registry, "server")
    with pytest.raises(ValueError, match="grpc_server"):
        EnvoyCollector(_Admin(STATS), registry=registry)  # type: ignore[arg-type]


# -- /clusters -------------------------------------------------------------------------------


def _doc(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((DATA / name).read_text())
    return document


def test_clusters_view_has_meshkit_shape() -> None:
    view = clusters_view(_doc("clusters.json"))
    assert sorted(view) == ["echo_a", "echo_b"]
    echo_b = view["echo_b"]
    assert echo_b["target"] is None and echo_b["lb_policy"] is None
    assert echo_b["state"] == "READY"
    assert echo_b["endpoints"] == [
        {
            "address": "127.0.0.1:45871",
            "state": "READY",
            "reason": "endpoint 127.0.0.1:45871 is READY",
            "health": "off",
            "ejected": False,
            "picks": 6,
        }
    ]


def test_clusters_view_uses_meshkit_config_and_hides_the_rest() -> None:
    document = _doc("clusters.json")
    document["cluster_statuses"].append({"name": "meshkit_xds", "host_statuses": []})
    config = {
        "echo_a": SimpleNamespace(target="dns:///a:1", lb_policy="round_robin", health_check=None),
        "later": SimpleNamespace(target="dns:///l:1", lb_policy="pick_first", health_check=None),
    }
    view = clusters_view(document, clusters=config)
    assert sorted(view) == ["echo_a", "later"]
    assert view["echo_a"]["target"] == "dns:///a:1"
    assert view["echo_a"]["lb_policy"] == "round_robin"
    assert view["echo_a"]["endpoints"][0]["picks"] == 3
    assert "error" in view["later"]
    assert "meshkit_xds" not in clusters_view(document)


def test_clusters_view_health_states() -> None:
    config = {"echo": SimpleNamespace(target="t", lb_policy="round_robin", health_check=object())}
    view = clusters_view(_doc("clusters_health.json"), clusters=config)["echo"]
    live, dead, draining = view["endpoints"]
    assert (live["state"], live["health"], live["ejected"]) == ("READY", "healthy", False)
    assert (dead["state"], dead["health"]) == ("TRANSIENT_FAILURE", "unhealthy")
    assert "failed active health check" in dead["reason"]
    assert draining["address"] == "unix:/tmp/envx/nowhere.sock"
    assert (draining["state"], draining["health"]) == ("TRANSIENT_FAILURE", "unhealthy")
    assert view["state"] == "READY"


def test_clusters_view_ejected_pending_and_empty() -> None:
    document = _doc("clusters_health.json")
    hosts = document["cluster_statuses"][0]["host_statuses"]
    hosts[0]["health_status"] = {"failed_outlier_check": True, "eds_health_status": "HEALTHY"}
    hosts[1]["health_status"] = {"pending_active_hc": True, "eds_health_status": "HEALTHY"}
    del hosts[2]
    document["cluster_statuses"].append({"name": "empty", "host_statuses": []})
    view = clusters_view(document)
    ejected, pending = view["echo"]["endpoints"]
    assert (ejected["state"], ejected["ejected"]) == ("TRANSIENT_FAILURE", True)
    assert "ejected by outlier detection" in ejected["reason"]
    assert (pending["state"], pending["health"]) == ("CONNECTING", "pending")
    assert view["echo"]["state"] == "CONNECTING"
    assert view["empty"] == {
        "target": None,
        "lb_policy": None,
        "state": "TRANSIENT_FAILURE",
        "endpoints": [],
    }


def test_clusters_view_says_why_the_control_plane_keeps_an_endpoint_out() -> None:
    # health from the control plane's watch: EDS status plus its reason, pending before
    config = {"echo": SimpleNamespace(target="t", lb_policy="round_robin", health_check=object())}
    document = _doc("clusters_health.json")
    hosts = document["cluster_statuses"][0]["host_statuses"]
    hosts[0]["health_status"] = {"eds_health_status": "UNHEALTHY"}
    hosts[1]["health_status"] = {"eds_health_status": "UNKNOWN"}
    del hosts[2]
    watched = {
        "echo": {
            "127.0.0.1:34853": ("unhealthy", "health check answered NOT_SERVING"),
            "127.0.0.1:46205": ("pending", "no health answer yet"),
        }
    }
    view = clusters_view(document, clusters=config, health=watched)["echo"]
    out, pending = view["endpoints"]
    assert (out["state"], out["health"]) == ("TRANSIENT_FAILURE", "unhealthy")
    assert out["reason"] == "endpoint 127.0.0.1:34853 unhealthy: health check answered NOT_SERVING"
    # routable meanwhile (Envoy reads no status as UNKNOWN): not CONNECTING, but pending
    assert (pending["state"], pending["health"]) == ("IDLE", "pending")
    assert "health pending" in pending["reason"]
    # without the watch's view, the EDS status alone is shown
    plain = clusters_view(document, clusters=config)["echo"]["endpoints"][0]
    assert plain["reason"].endswith("control plane says UNHEALTHY")
