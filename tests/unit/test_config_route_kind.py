"""``outbound.routes[].kind``: the RPC-kind hint of a route, validated and carried to the core,
and its precedence over the kinds the sidecar learns (``method_kinds``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.app import descriptor_kinds, kind_sources
from sidecar.clusters import Cluster, ClusterSet, build_router
from sidecar.config import RPC_KINDS, ConfigError, parse_config
from sidecar.method_kinds import MethodKinds
from sidecar.proxy import Upstream
from telemetry.rpc_kind import RpcKind


def _raw(**route: Any) -> dict[str, Any]:
    return {
        "outbound": {"listen": "127.0.0.1:0", "routes": [{"prefix": "/", "cluster": "b", **route}]},
        "clusters": {"b": {"target": "static:///127.0.0.1:10000"}},
    }


def test_default_kind_is_null_learned_else_stream_stream() -> None:
    config = parse_config(_raw(), {})
    assert config.outbound is not None
    assert config.outbound.routes[0].kind is None


@pytest.mark.parametrize("kind", RPC_KINDS)
def test_every_kind_parses_and_names_a_forwarding_path(kind: str) -> None:
    config = parse_config(_raw(kind=kind), {})
    assert config.outbound is not None
    assert RpcKind(config.outbound.routes[0].kind).value == kind
    assert config.to_dict()["outbound"]["routes"][0]["kind"] == kind


@pytest.mark.parametrize("bad", ["unary", "UNARY_UNARY", "", 1])
def test_unknown_kind_is_an_error_naming_the_field(bad: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_raw(kind=bad), {})
    paths = [e.path for e in caught.value.errors]
    assert paths == ["outbound.routes[0].kind"]


def test_kind_from_the_environment() -> None:
    config = parse_config(_raw(), {"MESHKIT_OUTBOUND__ROUTES__0__KIND": "unary_unary"})
    assert config.outbound is not None
    assert config.outbound.routes[0].kind == "unary_unary"


def test_method_kinds_block_defaults_and_descriptor_sets(tmp_path: Path) -> None:
    from google.protobuf import descriptor_pb2  # type: ignore[import-untyped]

    config = parse_config(_raw(), {})
    assert config.method_kinds.reflection is True
    assert config.method_kinds.descriptor_sets == ()
    good = descriptor_pb2.FileDescriptorSet()
    good.file.add(name="a.proto", package="a").service.add(name="S")
    (tmp_path / "good.pb").write_bytes(good.SerializeToString())
    (tmp_path / "bad.pb").write_bytes(b"\xff\xfe garbage")
    raw = {**_raw(), "method_kinds": {"descriptor_sets": ["good.pb"], "reflection": False}}
    config = parse_config(raw, {}, base_dir=str(tmp_path))
    assert config.method_kinds.descriptor_sets == (str(tmp_path / "good.pb"),)
    assert config.method_kinds.reflection is False
    raw["method_kinds"] = {"descriptor_sets": ["good.pb", "bad.pb", "missing.pb"]}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {}, base_dir=str(tmp_path))
    problems = {e.path: e.message for e in info.value.errors}
    assert set(problems) == {"method_kinds.descriptor_sets[1]", "method_kinds.descriptor_sets[2]"}
    assert "FileDescriptorSet" in problems["method_kinds.descriptor_sets[1]"]
    assert "no such file" in problems["method_kinds.descriptor_sets[2]"]
    raw["method_kinds"] = {"refresh": "0s", "timeout": "61s"}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, {})
    assert {e.path for e in info.value.errors} == {"method_kinds.refresh", "method_kinds.timeout"}


# -- which kind a call is forwarded as: hint, else learned, else stream_stream ---------------

ECHO_UNARY = "/pkg.Echo/Unary"


def _learned() -> MethodKinds:
    return MethodKinds(files={ECHO_UNARY: "unary_unary", "/pkg.Echo/Up": "stream_unary"})


def test_kind_of_a_hint_wins_over_what_was_learned() -> None:
    learned = _learned()
    upstream = Upstream("b", None, default_kind=RpcKind.STREAM_STREAM, learned=learned)
    assert upstream.kind_of(ECHO_UNARY) is RpcKind.STREAM_STREAM
    per_method = Upstream(
        "b",
        None,
        kinds={ECHO_UNARY: RpcKind.UNARY_STREAM},
        default_kind=RpcKind.STREAM_STREAM,
        learned=learned,
    )
    assert per_method.kind_of(ECHO_UNARY) is RpcKind.UNARY_STREAM
    assert per_method.kind_of("/pkg.Echo/Up") is RpcKind.STREAM_STREAM
    assert not learned.wanted  # a hinted method never asks the learner


def test_kind_of_unhinted_is_learned_else_stream_stream_and_a_miss_asks_again() -> None:
    learned = _learned()
    upstream = Upstream("b", None, learned=learned)
    assert upstream.kind_of(ECHO_UNARY) is RpcKind.UNARY_UNARY
    assert upstream.kind_of("/pkg.Echo/Up") is RpcKind.STREAM_UNARY
    assert not learned.wanted
    assert upstream.kind_of("/pkg.Echo/Unknown") is RpcKind.STREAM_STREAM
    assert learned.wanted  # the next learning round was asked for
    assert Upstream("b", None).kind_of(ECHO_UNARY) is RpcKind.STREAM_STREAM


def test_kind_of_follows_a_table_learned_later() -> None:
    learned = MethodKinds()
    upstream = Upstream("b", None, learned=learned)
    assert upstream.kind_of(ECHO_UNARY) is RpcKind.STREAM_STREAM
    learned.set_files({ECHO_UNARY: "unary_unary"})
    assert upstream.kind_of(ECHO_UNARY) is RpcKind.UNARY_UNARY


def test_router_routes_without_a_kind_use_the_learned_kinds() -> None:
    raw = _raw()
    raw["outbound"]["routes"][:0] = [
        {"prefix": "/pkg.Echo/Up", "cluster": "b", "kind": "stream_stream"}
    ]
    config = parse_config(raw, {})
    assert config.outbound is not None
    clusters = ClusterSet({"b": Cluster("b", config.clusters["b"], channel=None)})
    learned = _learned()
    router = build_router(config.outbound, clusters, learned)
    hinted, unhinted = router.match("/pkg.Echo/Up"), router.match(ECHO_UNARY)
    assert hinted is not None and unhinted is not None
    assert hinted.kind_of("/pkg.Echo/Up") is RpcKind.STREAM_STREAM
    assert unhinted.kind_of(ECHO_UNARY) is RpcKind.UNARY_UNARY
    without = build_router(config.outbound, clusters).match(ECHO_UNARY)
    assert without is not None and without.kind_of(ECHO_UNARY) is RpcKind.STREAM_STREAM


def _descriptor_set(path: Path, package: str, **methods: tuple[bool, bool]) -> str:
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet()
    service = files.file.add(name=f"{package}.proto", package=package).service.add(name="S")
    for name, (client, server) in methods.items():
        service.method.add(
            name=name,
            input_type=".x.A",
            output_type=".x.B",
            client_streaming=client,
            server_streaming=server,
        )
    path.write_bytes(files.SerializeToString())
    return str(path)


def test_descriptor_kinds_merge_files_the_earlier_winning(tmp_path: Path) -> None:
    first = _descriptor_set(tmp_path / "1.pb", "a", Get=(False, False))
    second = _descriptor_set(tmp_path / "2.pb", "a", Get=(True, True), Watch=(False, True))
    raw = {**_raw(), "method_kinds": {"descriptor_sets": [first, second]}}
    config = parse_config(raw, {})
    assert descriptor_kinds(config) == {"/a.S/Get": "unary_unary", "/a.S/Watch": "unary_stream"}
    (tmp_path / "2.pb").write_bytes(b"\xff\xfe garbage")  # replaced after validation
    with pytest.raises(ValueError, match=r"method_kinds\.descriptor_sets\[1\]"):
        descriptor_kinds(config)


def test_kind_sources_are_every_cluster_and_the_app_unless_reflection_is_off() -> None:
    raw = {
        **_raw(),
        "inbound": {"listen": "127.0.0.1:0", "app": "127.0.0.1:8080"},
    }
    raw["clusters"]["c"] = {"target": "static:///127.0.0.1:10001"}
    sources = kind_sources(parse_config(raw, {}))
    assert sorted(sources) == [
        "app 127.0.0.1:8080",
        "cluster b static:///127.0.0.1:10000",
        "cluster c static:///127.0.0.1:10001",
    ]
    raw["method_kinds"] = {"reflection": False}
    assert kind_sources(parse_config(raw, {})) == {}
