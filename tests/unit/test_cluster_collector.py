"""ClusterCollector and clusters_snapshot over fake channel cores (no sockets): the real
``ChannelCore.snapshot`` runs over the fakes' state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from balancers import SubchannelState

# Reaches inside: the real ChannelCore.snapshot runs over fake cores (no sockets).
from balancers._core import ChannelCore
from telemetry.clusters import ClusterCollector, clusters_snapshot

READY = grpc.ChannelConnectivity.READY
TF = grpc.ChannelConnectivity.TRANSIENT_FAILURE
CONNECTING = grpc.ChannelConnectivity.CONNECTING


@dataclass
class FakeSubchannel:
    address: str
    state: SubchannelState
    health: str = "off"
    ejected: bool = False
    picks: int = 0


@dataclass
class FakeSettings:
    lb_policy: str = "round_robin"


@dataclass
class FakeCore:
    target_text: str
    connectivity: grpc.ChannelConnectivity
    subchannels: list[FakeSubchannel] = field(default_factory=list)
    settings: FakeSettings = field(default_factory=FakeSettings)
    ejections_total: int = 0


@dataclass
class FakeChannel:
    core: Any

    def snapshot(self) -> dict[str, Any]:
        return ChannelCore.snapshot(self.core)


class BrokenCore:
    target_text = "static:///broken:1"
    connectivity = READY
    settings = FakeSettings()
    ejections_total = 0

    @property
    def subchannels(self) -> list[FakeSubchannel]:
        raise RuntimeError("boom")


def echo_cluster() -> FakeChannel:
    return FakeChannel(
        FakeCore(
            "static:///10.0.0.1:80,10.0.0.2:80,10.0.0.3:80",
            READY,
            [
                FakeSubchannel("10.0.0.1:80", SubchannelState(READY), "healthy", picks=7),
                FakeSubchannel("10.0.0.2:80", SubchannelState(READY), picks=5),
                FakeSubchannel(
                    "10.0.0.3:80",
                    SubchannelState(TF, "ejected by outlier detection"),
                    "healthy",
                    ejected=True,
                    picks=2,
                ),
            ],
        )
    )


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_reports_states_picks_ejected_and_healthy() -> None:
    registry = CollectorRegistry()
    ClusterCollector(lambda: {"echo": echo_cluster()}, registry=registry)

    assert value(registry, "meshkit_cluster_endpoints", cluster="echo", state="READY") == 2
    assert value(registry, "meshkit_cluster_endpoints", cluster="echo", state="TRANSIENT_FAILURE")
    # every state is reported, 0 when empty: series do not come and go
    assert value(registry, "meshkit_cluster_endpoints", cluster="echo", state="IDLE") == 0
    assert value(registry, "meshkit_cluster_endpoints", cluster="echo", state="CONNECTING") == 0
    assert value(registry, "meshkit_cluster_endpoints_healthy", cluster="echo") == 2
    assert value(registry, "meshkit_cluster_endpoints_ejected", cluster="echo") == 1
    picks = samples(registry, "meshkit_cluster_endpoint_picks_total")
    assert picks == {
        (("cluster", "echo"), ("endpoint", "10.0.0.1:80")): 7,
        (("cluster", "echo"), ("endpoint", "10.0.0.2:80")): 5,
        (("cluster", "echo"), ("endpoint", "10.0.0.3:80")): 2,
    }
    connectivity = samples(registry, "meshkit_cluster_connectivity")
    assert connectivity[(("cluster", "echo"), ("state", "READY"))] == 1
    assert sum(connectivity.values()) == 1
    info = samples(registry, "meshkit_cluster_info")
    assert info == {
        (
            ("cluster", "echo"),
            ("lb_policy", "round_robin"),
            ("target", "static:///10.0.0.1:80,10.0.0.2:80,10.0.0.3:80"),
        ): 1
    }


def test_reads_at_scrape_time_only() -> None:
    registry = CollectorRegistry()
    channel = echo_cluster()
    calls = 0

    def clusters() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"echo": channel}

    ClusterCollector(clusters, registry=registry)
    assert calls == 0  # describe() lets the registry check names without reading clusters
    channel.core.subchannels[1].picks = 9
    assert (
        value(
            registry, "meshkit_cluster_endpoint_picks_total", cluster="echo", endpoint="10.0.0.2:80"
        )
        == 9
    )
    assert calls == 1


def test_broken_cluster_is_skipped_not_fatal() -> None:
    registry = CollectorRegistry()
    ClusterCollector(
        lambda: {"bad": FakeChannel(BrokenCore()), "echo": echo_cluster()}, registry=registry
    )
    assert value(registry, "meshkit_cluster_endpoints", cluster="echo", state="READY") == 2
    assert value(registry, "meshkit_cluster_endpoints", cluster="bad", state="READY") is None
    assert value(registry, "meshkit_cluster_info", cluster="bad") is None


def test_failing_listing_gives_empty_families() -> None:
    def clusters() -> dict[str, Any]:
        raise RuntimeError("not configured yet")

    registry = CollectorRegistry()
    ClusterCollector(clusters, registry=registry)
    assert samples(registry, "meshkit_cluster_endpoints") == {}


def test_duplicate_picks_for_one_address_are_summed() -> None:
    core = FakeCore(
        "static:///a:1",
        CONNECTING,
        [
            FakeSubchannel("a:1", SubchannelState(READY), picks=3),
            FakeSubchannel("a:1", SubchannelState(CONNECTING), picks=4),
        ],
    )
    registry = CollectorRegistry()
    ClusterCollector(lambda: {"c": FakeChannel(core)}, registry=registry)
    assert samples(registry, "meshkit_cluster_endpoint_picks_total") == {
        (("cluster", "c"), ("endpoint", "a:1")): 7
    }


def test_not_registered_without_registry() -> None:
    collector = ClusterCollector(lambda: {"echo": echo_cluster()})
    names = {family.name for family in collector.collect()}
    assert "meshkit_cluster_endpoints" in names


def test_snapshot_shape() -> None:
    snapshot = clusters_snapshot({"echo": echo_cluster(), "bad": FakeChannel(BrokenCore())})
    assert list(snapshot) == ["bad", "echo"]
    assert snapshot["bad"] == {"error": "RuntimeError: boom"}
    echo = snapshot["echo"]
    assert echo["target"] == "static:///10.0.0.1:80,10.0.0.2:80,10.0.0.3:80"
    assert echo["lb_policy"] == "round_robin"
    assert echo["state"] == "READY"
    assert echo["ejections_total"] == 0
    assert [e["address"] for e in echo["endpoints"]] == [
        "10.0.0.1:80",
        "10.0.0.2:80",
        "10.0.0.3:80",
    ]
    assert echo["endpoints"][2] == {
        "address": "10.0.0.3:80",
        "state": "TRANSIENT_FAILURE",
        "reason": "ejected by outlier detection",
        "health": "healthy",
        "ejected": True,
        "picks": 2,
    }
