"""``outbound.routes[].kind``: the RPC-kind hint of a route, validated and carried to the core."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.config import RPC_KINDS, ConfigError, parse_config
from sidecar.proxy import RpcKind


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
    from google.protobuf import descriptor_pb2

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
