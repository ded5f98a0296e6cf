"""Target parsing: URIs, host:port, static lists, and what the DNS/SRV builders accept."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resolvers import ResolverOptions, Target, split_host_port
from resolvers.dns import (
    DEFAULT_PORT,
    DnsResolverBuilder,
    parse_dns_name,
    parse_nameserver,
)
from resolvers.srv import SrvResolverBuilder
from resolvers.static import parse_static_endpoint


class _NullListener:
    def update_state(self, state: object) -> None:
        raise AssertionError("a rejected target must not push anything")

    def report_error(self, error: Exception) -> None:
        raise AssertionError("a rejected target must not report anything")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("dns:///svc.example:50051", ("dns", "", "svc.example:50051")),
        ("dns://8.8.8.8:53/svc:50051", ("dns", "8.8.8.8:53", "svc:50051")),
        ("dns://127.0.0.1:5353/svc", ("dns", "127.0.0.1:5353", "svc")),
        ("DNS:///a:1", ("dns", "", "a:1")),
        ("dns:///[::1]:443", ("dns", "", "[::1]:443")),
        ("dns+srv:///_grpc._tcp.svc.example", ("dns+srv", "", "_grpc._tcp.svc.example")),
        ("dns+srv://[::1]:53/_grpc._tcp.x", ("dns+srv", "[::1]:53", "_grpc._tcp.x")),
        ("static:///a:1,b:2", ("static", "", "a:1,b:2")),
        # No scheme: gRPC's default is dns.
        ("svc:50051", ("dns", "", "svc:50051")),
        ("localhost:50051", ("dns", "", "localhost:50051")),
        ("svc.example.com:443", ("dns", "", "svc.example.com:443")),
        ("1.2.3.4:80", ("dns", "", "1.2.3.4:80")),
        ("[::1]:50051", ("dns", "", "[::1]:50051")),
        ("::1", ("dns", "", "::1")),
        ("svc", ("dns", "", "svc")),
    ],
)
def test_target_parse(uri: str, expected: tuple[str, str, str]) -> None:
    target = Target.parse(uri)
    assert (target.scheme, target.authority, target.endpoint) == expected


@pytest.mark.parametrize(
    "uri",
    ["", " svc:1", "svc:1 ", "a b", "x/y", "dns:/", "dns://", "dns:///", "dns://x", "dns://ns/"],
)
def test_target_parse_rejects_junk(uri: str) -> None:
    with pytest.raises(ValueError):
        Target.parse(uri)


def test_target_parse_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        Target.parse(42)  # type: ignore[arg-type]


def test_target_str_round_trips() -> None:
    for uri in ["dns:///svc:1", "dns://1.2.3.4:53/svc:1", "dns+srv:///_grpc._tcp.x"]:
        assert str(Target.parse(uri)) == uri
        assert Target.parse(str(Target.parse(uri))) == Target.parse(uri)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a:1", ("a", 1)),
        ("svc.example:65535", ("svc.example", 65535)),
        ("[::1]:2", ("::1", 2)),
        ("[fe80::1%eth0]:2", ("fe80::1%eth0", 2)),
        ("::1", ("::1", DEFAULT_PORT)),
        ("a", ("a", DEFAULT_PORT)),
        ("[::1]", ("::1", DEFAULT_PORT)),
    ],
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text, DEFAULT_PORT) == expected


@pytest.mark.parametrize(
    "text",
    ["", "  ", "a:0", "a:65536", "a:-1", "a:1x", "a: 1", "a:http", "[::1", "[::1]x", ":5", "[]:1"],
)
def test_split_host_port_rejects_junk(text: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(text, DEFAULT_PORT)


def test_split_host_port_requires_port_without_default() -> None:
    with pytest.raises(ValueError, match="missing port"):
        split_host_port("a")


@given(st.integers(min_value=1, max_value=65535))
def test_split_host_port_accepts_every_valid_port(port: int) -> None:
    assert split_host_port(f"h:{port}") == ("h", port)
    assert split_host_port(f"[::1]:{port}") == ("::1", port)


def test_static_endpoints() -> None:
    addresses = parse_static_endpoint("a:1,[::1]:2,a:1,b:3")
    assert [str(a) for a in addresses] == ["a:1", "[::1]:2", "b:3"]  # duplicates dropped


@pytest.mark.parametrize("endpoint", ["", "a:1,", ",a:1", "a:1,,b:2", "a", "a:0", "a:1,b"])
def test_static_endpoints_reject_junk(endpoint: str) -> None:
    with pytest.raises(ValueError):
        parse_static_endpoint(endpoint)


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("", None),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("8.8.8.8", ("8.8.8.8", 53)),
        ("[::1]:53", ("::1", 53)),
        ("localhost:5353", ("127.0.0.1", 5353)),
    ],
)
def test_parse_nameserver(authority: str, expected: tuple[str, int] | None) -> None:
    assert parse_nameserver(authority) == expected


@pytest.mark.parametrize("authority", ["ns.example:53", "1.2.3.4:0", "1.2.3.4:x", "[::1"])
def test_parse_nameserver_rejects_junk(authority: str) -> None:
    with pytest.raises(ValueError):
        parse_nameserver(authority)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("svc.example", "svc.example."),
        ("svc.example.", "svc.example."),
        ("_grpc._tcp.svc-1.example", "_grpc._tcp.svc-1.example."),
        ("a" * 63 + ".b", "a" * 63 + ".b."),
    ],
)
def test_parse_dns_name(name: str, shown: str) -> None:
    parsed = parse_dns_name(name)
    assert parsed.is_absolute() == name.endswith(".")  # relative names get the search list
    assert parsed.to_text() + ("" if parsed.is_absolute() else ".") == shown


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "a..b",
        "-a.b",
        "a-.b",
        "a b",
        "a/b",
        "a:b",
        "a" * 64,
        ".".join(["a" * 60] * 5),
        "é.fr",
    ],
)
def test_parse_dns_name_rejects_junk(name: str) -> None:
    with pytest.raises(ValueError):
        parse_dns_name(name)


@pytest.mark.parametrize(
    "uri",
    [
        "dns://ns.example:53/svc:1",  # nameserver must be an IP
        "dns://1.2.3.4:0/svc:1",
        "dns:///svc:0",
        "dns:///svc:x",
        "dns:///a..b:1",
        "dns:///a/b:1",
        "dns:///[::1:1",
        "dns:a..b:80",  # the opaque form (dns:host:port) is checked like the others
    ],
)
def test_dns_builder_rejects_malformed_targets(uri: str) -> None:
    with pytest.raises(ValueError):
        DnsResolverBuilder().build(Target.parse(uri), _NullListener(), ResolverOptions())


@pytest.mark.parametrize(
    "uri",
    [
        "dns+srv:///_grpc._tcp.svc:50051",  # ports come from the records
        "dns+srv://ns.example/_grpc._tcp.svc",
        "dns+srv:///a..b",
        "dns+srv:///[::1]",
    ],
)
def test_srv_builder_rejects_malformed_targets(uri: str) -> None:
    with pytest.raises(ValueError):
        SrvResolverBuilder().build(Target.parse(uri), _NullListener(), ResolverOptions())


def test_builders_are_registered() -> None:
    import resolvers

    assert isinstance(resolvers.get("dns"), DnsResolverBuilder)
    assert isinstance(resolvers.get("dns+srv"), SrvResolverBuilder)
    assert {"dns", "dns+srv", "static"} <= set(resolvers.schemes())
