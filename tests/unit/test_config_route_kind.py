"""``outbound.routes[].kind``: the RPC-kind hint of a route, validated and carried to the core."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config import RPC_KINDS, ConfigError, parse_config
from sidecar.proxy import RpcKind


def _raw(**route: Any) -> dict[str, Any]:
    return {
        "outbound": {"listen": "127.0.0.1:0", "routes": [{"prefix": "/", "cluster": "b", **route}]},
        "clusters": {"b": {"target": "static:///127.0.0.1:10000"}},
    }


def test_default_kind_is_stream_stream() -> None:
    config = parse_config(_raw(), {})
    assert config.outbound is not None
    assert config.outbound.routes[0].kind == "stream_stream"


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
