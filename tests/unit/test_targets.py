"""gRPC's target syntax (naming doc): every form parsed, checked once, by the same code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import resolvers

# Reaches inside: the grpcio target and options a subchannel gets are internal by design.
from balancers._core import channel_options
from balancers._subchannel import grpc_target
from resolvers import Address, ResolverOptions, ResolverState, Target
from resolvers.static import (
    Ipv4ResolverBuilder,
    Ipv6ResolverBuilder,
    StaticResolverBuilder,
    UnixResolverBuilder,
)
from sidecar.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[2]


class _Recorder:
    def __init__(self) -> None:
        self.states: list[ResolverState] = []

    def update_state(self, state: ResolverState) -> None:
        self.states.append(state)

    def report_error(self, error: Exception) -> None:
        raise AssertionError(f"a fixed list never fails: {error}")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("dns:svc:50051", ("dns", "", "svc:50051", True)),
        ("dns:///svc:50051", ("dns", "", "svc:50051", False)),
        ("dns://10.0.0.53:53/svc:50051", ("dns", "10.0.0.53:53", "svc:50051", False)),
        ("ipv4:10.0.0.1:80,10.0.0.2:80", ("ipv4", "", "10.0.0.1:80,10.0.0.2:80", True)),
        ("ipv6:[::1]:80,[::2]:81", ("ipv6", "", "[::1]:80,[::2]:81", True)),
        ("unix:run/app.sock", ("unix", "", "run/app.sock", True)),
        ("unix:/run/app.sock", ("unix", "", "run/app.sock", False)),
        ("unix:///run/app.sock", ("unix", "", "run/app.sock", False)),
        ("svc.ns:50051", ("dns", "", "svc.ns:50051", False)),
        ("localhost:50051", ("dns", "", "localhost:50051", False)),
    ],
)
def test_every_form_of_the_naming_doc_parses(
    uri: str, expected: tuple[str, str, str, bool]
) -> None:
    target = Target.parse(uri)
    assert (target.scheme, target.authority, target.endpoint, target.opaque) == expected
    assert Target.parse(str(target)) == target  # str() keeps the form (relative stays relative)


GOOD = [
    "dns:localhost:50061",
    "dns:///localhost:50061",
    "dns://127.0.0.1:53/echo.test:50061",
    "dns://[::1]/echo.test:50061",
    "dns:echo.test",
    "ipv4:127.0.0.1:50061,127.0.0.2:50062",
    "ipv4:127.0.0.1",
    "ipv4:///127.0.0.1:50061",
    "ipv6:[::1]:50061,[::1]:50062",
    "ipv6:[::1]",
    "unix:app.sock",
    "unix:run/app.sock",
    "unix:/run/app.sock",
    "unix:///run/app.sock",
    "localhost:50061",
    "127.0.0.1:50061",
    "[::1]:50061",
    "static:///127.0.0.1:1,svc:2",
    "dns+srv:///_grpc._tcp.echo.test",
]


@pytest.mark.parametrize("uri", GOOD)
def test_check_target_accepts_every_form(uri: str) -> None:
    assert resolvers.check_target(uri) == Target.parse(uri)


BAD = [
    ("dns:", "empty endpoint"),
    ("dns:///", "empty endpoint"),
    ("dns:///:80", "empty host"),
    ("dns:///svc:0", "port must be 1..65535"),
    ("dns:///a:b:c", "neither host:port nor an IPv6 address"),
    ("dns://ns.example/svc:1", "must be an IP address"),
    ("ipv4:", "empty endpoint"),
    ("ipv4:1.2.3", "'1.2.3' is not an IPv4 address"),
    ("ipv4:1.2.3.4:99999", "port must be 1..65535"),
    ("ipv4:1.2.3.4,,1.2.3.5", "empty entry"),
    ("ipv4:[::1]:80", "use ipv6:"),
    ("ipv4://x/1.2.3.4", "authority 'x' must be empty"),
    ("ipv6:::1:80", "must be in brackets"),
    ("ipv6:[::1", "unterminated '['"),
    ("ipv6:[1.2.3.4]:80", "is not an IPv6 address"),
    ("unix:", "empty endpoint"),
    ("unix:///", "empty endpoint"),
    ("unix://host/run/app.sock", "authority 'host' must be empty"),
    ("unix:/" + "a" * 120, "at most 107"),
    ("static:///127.0.0.1", "missing port"),
    ("dns+srv:///_grpc._tcp.svc:80", "ports come from the records"),
]


@pytest.mark.parametrize(("uri", "problem"), BAD)
def test_check_target_names_the_problem(uri: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        resolvers.check_target(uri)
    assert problem in str(caught.value)
    assert repr(uri) in str(caught.value)  # and which target


def test_an_unknown_scheme_is_a_lookup_error_with_a_hint_for_named_ports() -> None:
    with pytest.raises(LookupError, match="no resolver for scheme 'bogus'"):
        resolvers.check_target("bogus:///x")
    with pytest.raises(LookupError, match="'http' would need to be a port number"):
        resolvers.check_target("svc:http")


def test_the_builders_run_the_check_too() -> None:
    # The listener must see nothing: a malformed target fails before anything starts.
    cases: list[tuple[resolvers.ResolverBuilder, str]] = [
        (Ipv4ResolverBuilder(), "ipv4:1.2.3"),
        (Ipv6ResolverBuilder(), "ipv6:::1:80"),
        (UnixResolverBuilder(), "unix://host/x"),
    ]
    for builder, uri in cases:
        with pytest.raises(ValueError):
            builder.build(Target.parse(uri), _Recorder(), ResolverOptions())


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("ipv4:127.0.0.1:80,127.0.0.2,127.0.0.1:80", ["127.0.0.1:80", "127.0.0.2:443"]),
        ("ipv6:[::1]:80,[0::2]", ["[::1]:80", "[::2]:443"]),
        ("static:///a:1,[::1]:2", ["a:1", "[::1]:2"]),
        ("unix:app.sock", ["unix:app.sock"]),
        ("unix:/run/app.sock", ["unix:/run/app.sock"]),
        ("unix:///run/app.sock", ["unix:/run/app.sock"]),
    ],
)
def test_fixed_lists_push_their_addresses_once(uri: str, expected: list[str]) -> None:
    listener = _Recorder()
    resolvers.build(uri, listener)
    assert len(listener.states) == 1
    assert [str(a) for a in listener.states[0].addresses] == expected


def test_unix_addresses_reach_grpcio_as_unix_targets() -> None:
    listener = _Recorder()
    resolvers.build("unix:run/app.sock", listener)
    (relative,) = listener.states[0].addresses
    assert (relative.network, relative.host, relative.port) == ("unix", "run/app.sock", 0)
    assert grpc_target(relative) == "unix:run/app.sock"
    assert grpc_target(Address.unix("/run/app.sock")) == "unix:/run/app.sock"
    assert grpc_target(Address("127.0.0.1", 80)) == "ipv4:127.0.0.1:80"
    assert grpc_target(Address("::1", 80)) == "ipv6:[::1]:80"


def test_address_ports_follow_the_network() -> None:
    assert Address.unix("/a") == Address("/a", 0, network="unix")
    assert Address.unix("/a") != Address("/a", 1)
    with pytest.raises(ValueError, match="port 0"):
        Address("/a", 5, network="unix")
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        Address("a", 0)
    with pytest.raises(ValueError, match="network"):
        Address("a", 1, network="udp")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("uri", "authority"),
    [
        ("dns:svc.ns:50051", "svc.ns:50051"),
        ("dns:///svc.ns:50051", "svc.ns:50051"),
        ("dns+srv:///_grpc._tcp.svc.ns", "svc.ns"),
        ("ipv4:10.0.0.1:80", "10.0.0.1:80"),
        ("ipv6:[::1]:80", "[::1]:80"),
        ("static:///svc:80", "svc:80"),
        ("unix:/run/app.sock", "localhost"),
        ("ipv4:10.0.0.1:80,10.0.0.2:80", None),
    ],
)
def test_each_builder_gives_the_default_authority(uri: str, authority: str | None) -> None:
    options = dict(channel_options(None, Target.parse(uri)))
    assert options.get("grpc.default_authority") == authority


def test_the_new_schemes_are_built_in_and_declared_as_entry_points() -> None:
    assert isinstance(resolvers.get("ipv4"), Ipv4ResolverBuilder)
    assert isinstance(resolvers.get("ipv6"), Ipv6ResolverBuilder)
    assert isinstance(resolvers.get("unix"), UnixResolverBuilder)
    assert isinstance(resolvers.get("static"), StaticResolverBuilder)
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = project["project"]["entry-points"]["meshkit.resolvers"]
    assert set(declared) == {"static", "ipv4", "ipv6", "unix", "dns", "dns+srv"}
    for scheme, ref in declared.items():
        module, _, name = ref.partition(":")
        builder = getattr(__import__(module, fromlist=[name]), name)
        assert builder.scheme == scheme
        assert type(resolvers.get(scheme)) is builder


def _config(target: str) -> dict[str, Any]:
    return {
        "outbound": {"listen": "127.0.0.1:15001", "routes": [{"prefix": "/", "cluster": "up"}]},
        "clusters": {"up": {"target": target}},
        "admin": {"listen": "127.0.0.1:9901"},
    }


@pytest.mark.parametrize("uri", GOOD)
def test_the_config_accepts_every_form(uri: str) -> None:
    assert parse_config(_config(uri), {}).clusters["up"].target == uri


@pytest.mark.parametrize(("uri", "problem"), BAD)
def test_the_config_gives_the_check_target_verdict(uri: str, problem: str) -> None:
    with pytest.raises(ValueError) as direct:
        resolvers.check_target(uri)
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(uri), {})
    messages = {str(e) for e in caught.value.errors}
    assert messages == {f"clusters.up.target: {direct.value}"}
    assert problem in next(iter(messages))
