"""Envoy API messages from the private descriptor pool (sidecar.envoy.protos)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import threading
from importlib import resources
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2

from sidecar.envoy import protos
from sidecar.envoy.protos import generate

T = protos.type_url
HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "envoy.extensions.filters.http.router.v3.Router"
RBAC = "envoy.extensions.filters.http.rbac.v3.RBAC"


def _hcm(http_filters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "@type": T(HCM),
        "statPrefix": "outbound",
        "rds": {
            "configSource": {"ads": {}, "resourceApiVersion": "V3"},
            "routeConfigName": "routes",
        },
        "httpFilters": [
            *http_filters,
            {"name": "envoy.filters.http.router", "typedConfig": {"@type": T(ROUTER)}},
        ],
    }


def listener(http_filters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "@type": T("envoy.config.listener.v3.Listener"),
        "name": "outbound",
        "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 15001}},
        "filterChains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typedConfig": _hcm(http_filters or []),
                    }
                ]
            }
        ],
    }


def cluster(name: str = "echo") -> dict[str, Any]:
    return {
        "@type": T("envoy.config.cluster.v3.Cluster"),
        "name": name,
        "type": "EDS",
        "edsClusterConfig": {"edsConfig": {"ads": {}, "resourceApiVersion": "V3"}},
        "connectTimeout": "1s",
        "typedExtensionProtocolOptions": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": T("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
                "explicitHttpConfig": {"http2ProtocolOptions": {}},
            }
        },
        "outlierDetection": {"consecutive5xx": 5, "baseEjectionTime": "30s"},
    }


def load_assignment(count: int = 3) -> dict[str, Any]:
    return {
        "@type": T("envoy.config.endpoint.v3.ClusterLoadAssignment"),
        "clusterName": "echo",
        "endpoints": [
            {
                "lbEndpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socketAddress": {"address": f"10.0.0.{i}", "portValue": 50051}
                            }
                        },
                        "healthStatus": "HEALTHY",
                    }
                    for i in range(1, count + 1)
                ]
            }
        ],
    }


def _rbac(policy_names: list[str]) -> dict[str, Any]:
    """An RBAC filter: its ``policies`` map lies inside an Any inside an Any of a Listener."""
    policy = {"permissions": [{"any": True}], "principals": [{"any": True}]}
    return {
        "name": "envoy.filters.http.rbac",
        "typedConfig": {
            "@type": T(RBAC),
            "rules": {"policies": {name: policy for name in policy_names}},
        },
    }


@pytest.mark.parametrize("resource", [listener(), cluster(), load_assignment()])
def test_json_and_bytes_round_trip(resource: dict[str, Any]) -> None:
    message = protos.from_json(resource)
    assert protos.to_json(message) == resource
    url, data = protos.to_any(resource)
    assert url == resource["@type"]
    again = protos.parse(url.removeprefix(protos.TYPE_URL_PREFIX), data)
    assert again == message
    assert protos.to_json(again) == resource


def test_any_inside_any_is_resolved_through_the_private_pool() -> None:
    message = protos.from_json(listener())
    typed = message.filter_chains[0].filters[0].typed_config
    assert typed.type_url == T(HCM)
    hcm = protos.parse(HCM, typed.value)
    assert hcm.stat_prefix == "outbound"
    assert hcm.rds.route_config_name == "routes"
    assert hcm.http_filters[0].typed_config.type_url == T(ROUTER)


def test_equal_resources_serialize_to_equal_bytes() -> None:
    # Same content, map entries inserted in another order, two Any levels down. With a few
    # keys a hash map may iterate alike by chance; with hundreds, insertion order shows.
    names = [f"policy-{i}" for i in range(300)]
    one = protos.to_any(listener([_rbac(names)]))
    other = protos.to_any(listener([_rbac(names[::-1])]))
    assert one == other
    assert protos.to_any(listener([_rbac(names[1:])])) != one


@pytest.mark.parametrize(
    ("resource", "type_name", "field"),
    [
        (
            {**cluster(), "connectTimeoutt": "1s"},
            "envoy.config.cluster.v3.Cluster",
            "connectTimeoutt",
        ),
        ({**cluster(), "type": "NOPE"}, "envoy.config.cluster.v3.Cluster", "type"),
        (
            listener([{"name": "x", "typedConfig": {"@type": T(ROUTER), "bogus": 1}}]),
            "envoy.config.listener.v3.Listener",
            "bogus",
        ),
    ],
)
def test_bad_field_raises_value_error_naming_type_and_field(
    resource: dict[str, Any], type_name: str, field: str
) -> None:
    with pytest.raises(ValueError) as failure:
        protos.from_json(resource)
    assert type_name in str(failure.value)
    assert field in str(failure.value)


def test_unknown_or_missing_type_raises_value_error() -> None:
    with pytest.raises(ValueError, match=r"envoy\.nope\.Foo"):
        protos.from_json({"@type": T("envoy.nope.Foo")})
    with pytest.raises(ValueError, match="@type"):
        protos.from_json({"name": "x"})
    with pytest.raises(ValueError, match="Cluster"):
        protos.parse("envoy.config.cluster.v3.Cluster", b"\xff\xff\xff")


def test_well_known_types_come_from_the_installed_protobuf() -> None:
    file = protos.pool().FindFileByName("google/protobuf/duration.proto")
    assert file.serialized_pb == duration_pb2.DESCRIPTOR.serialized_pb
    duration = protos.from_json({"@type": T("google.protobuf.Duration"), "value": "1.5s"})
    assert protos.to_json(duration) == {"@type": T("google.protobuf.Duration"), "value": "1.500s"}


def test_default_pool_untouched_and_otlp_exporter_still_imports() -> None:
    # A fresh interpreter, so the import order is ours: Envoy pool first, then OTLP.
    script = """
from google.protobuf import descriptor_pool
from sidecar.envoy import protos
protos.message_class("envoy.config.cluster.v3.Cluster")
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
request = trace_service_pb2.ExportTraceServiceRequest()
request.resource_spans.add().scope_spans.add().spans.add(name="s")
data = request.SerializeToString()
assert trace_service_pb2.ExportTraceServiceRequest.FromString(data) == request
try:
    descriptor_pool.Default().FindMessageTypeByName("envoy.config.cluster.v3.Cluster")
except KeyError:
    print("clean")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clean"
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindMessageTypeByName("envoy.config.cluster.v3.Cluster")


def test_pool_is_built_once_under_concurrent_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protos, "_pool", None)
    barrier = threading.Barrier(8)
    pools: list[Any] = []

    def first_use() -> None:
        barrier.wait()
        pools.append(protos.pool())

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(pools) == 8
    assert all(p is pools[0] for p in pools)


def test_committed_descriptor_set_holds_every_root_and_resolves() -> None:
    data = resources.files(protos).joinpath(generate.OUTPUT).read_bytes()
    file_set = descriptor_pb2.FileDescriptorSet.FromString(data)
    names = [f.name for f in file_set.file]
    assert len(names) == len(set(names))
    assert set(generate.ROOTS) <= set(names)
    seen: set[str] = set()
    for file in file_set.file:
        assert not file.name.startswith(generate.WELL_KNOWN_PREFIX), file.name
        for dependency in file.dependency:
            if dependency.startswith(generate.WELL_KNOWN_PREFIX):
                module = dependency.removesuffix(".proto").replace("/", ".") + "_pb2"
                importlib.import_module(module)  # the installed protobuf has it
            else:
                assert dependency in seen, f"{file.name} needs {dependency} before it"
        seen.add(file.name)
    manifest = resources.files(protos).joinpath(generate.MANIFEST).read_text().splitlines()
    assert [line for line in manifest if not line.startswith("#")] == names
    assert len(data) < 1_500_000


def test_generator_reads_the_serialized_file_without_running_the_module() -> None:
    source = (
        "raise SystemExit('executed')\n"
        "DESCRIPTOR = _pool.Default().AddSerializedFile(b'\\n\\x05a.pro')\n"
    )
    assert generate.serialized_file(source) == b"\n\x05a.pro"
    assert generate.serialized_file("x = 1\n") is None


# -- cross-check against an independent implementation ----------------------------------------


# envoy-data-plane's generated code trips a pydantic deprecation warning on import.
_reference = pytest.mark.filterwarnings("ignore:Using `@model_validator`:DeprecationWarning")


def _envoy_data_plane() -> Any:
    edp = pytest.importorskip(
        "envoy_data_plane", reason="envoy-data-plane (betterproto2) is the independent reference"
    )
    # Importing a module registers its types for Any unpacking in to_dict().
    for module in (
        "envoy.config.listener.v3",
        "envoy.config.cluster.v3",
        "envoy.config.endpoint.v3",
        "envoy.service.discovery.v3",
        "envoy.extensions.filters.network.http_connection_manager.v3",
        "envoy.extensions.filters.http.router.v3",
        "envoy.extensions.filters.http.rbac.v3",
        "envoy.extensions.upstreams.http.v3",
    ):
        importlib.import_module(f"envoy_data_plane.{module}")
    return edp


def _keys_folded(value: Any) -> Any:
    """JSON with lower-cased keys: betterproto2 camel-cases a few names its own way
    (``consecutive5Xx`` where protobuf writes ``consecutive5xx``); values must still agree."""
    if isinstance(value, dict):
        return {k.lower(): _keys_folded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_keys_folded(v) for v in value]
    return value


def _without_type(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "@type"}


@pytest.mark.parametrize(
    ("module", "cls", "resource"),
    [
        ("envoy.config.listener.v3", "Listener", listener([_rbac(["a", "b"])])),
        ("envoy.config.cluster.v3", "Cluster", cluster()),
        ("envoy.config.endpoint.v3", "ClusterLoadAssignment", load_assignment(5)),
    ],
)
@_reference
def test_bytes_parse_with_envoy_data_plane(module: str, cls: str, resource: dict[str, Any]) -> None:
    _envoy_data_plane()
    reference = getattr(importlib.import_module(f"envoy_data_plane.{module}"), cls)
    _, data = protos.to_any(resource)
    assert _keys_folded(reference.parse(data).to_dict()) == _keys_folded(_without_type(resource))


@_reference
def test_discovery_response_parses_with_envoy_data_plane() -> None:
    _envoy_data_plane()
    from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryResponse as Reference

    response = protos.message_class("envoy.service.discovery.v3.DiscoveryResponse")(
        version_info="v1", type_url=T("envoy.config.cluster.v3.Cluster"), nonce="7"
    )
    for name in ("a", "b"):
        url, body = protos.to_any(cluster(name))
        response.resources.add(type_url=url, value=body)
    parsed = Reference.parse(response.SerializeToString())
    assert (parsed.version_info, parsed.type_url, parsed.nonce) == ("v1", response.type_url, "7")
    assert [_keys_folded(r.to_dict()) for r in parsed.resources] == [
        _keys_folded(cluster(name)) for name in ("a", "b")
    ]
