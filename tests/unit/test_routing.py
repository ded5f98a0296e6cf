"""Prefix routing: order, exact method routes, validation, bounded cache, and the config's
reachability check made with the same matcher."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config import ConfigError, parse_config
from sidecar.routing import PathMatcher, Router, shadowed_routes


def test_first_match_wins_in_the_given_order() -> None:
    router = Router([("/pkg.A/Get", "get"), ("/pkg.A/", "a"), ("/pkg.", "pkg"), ("/", "default")])
    assert router.match("/pkg.A/Get") == "get"
    assert router.match("/pkg.A/List") == "a"
    assert router.match("/pkg.B/Get") == "pkg"
    assert router.match("/other.C/Get") == "default"
    shadowed = Router([("/", "default"), ("/pkg.A/", "a")])
    assert shadowed.match("/pkg.A/Get") == "default"


def test_a_full_method_route_is_exact() -> None:
    router = Router([("/pkg.A/Get", "get"), ("/pkg.A/", "a")])
    assert router.match("/pkg.A/GetAll") == "a"
    assert router.match("/pkg.A/Get") == "get"


def test_service_prefix_needs_the_slash_to_be_precise() -> None:
    router = Router([("/pkg.A/", "a")])
    assert router.match("/pkg.A/X") == "a"
    assert router.match("/pkg.AB/X") is None


def test_no_match_is_none_and_is_cached_too() -> None:
    router: Router[str] = Router([("/pkg.A/", "a")])
    assert router.match("/x.Y/Z") is None
    assert router.match("/x.Y/Z") is None
    assert router("/pkg.A/M") == "a"  # callable: usable directly as ``upstream_for``


def test_cache_stays_bounded_and_answers_stay_right() -> None:
    router = Router([("/a.S/", 1), ("/", 2)], cache_size=8)
    for i in range(100):
        assert router.match(f"/x{i}.S/M") == 2
        assert router.match("/a.S/M") == 1
    assert len(router._cache) <= 8


@pytest.mark.parametrize("prefix", ["", "pkg.A/", "*"])
def test_invalid_prefixes_are_rejected_naming_the_route(prefix: str) -> None:
    with pytest.raises(ValueError, match=r"routes\[1\]\.prefix"):
        Router([("/", 1), (prefix, 2)])


def test_routes_are_reported_in_order() -> None:
    assert Router([("/b.S/", "b"), ("/", "d")]).routes == (("/b.S/", "b"), ("/", "d"))


# -- one matcher: the config judges reachability with the router's own rule --------------------


def _covers(earlier: str, later: str) -> bool:
    return PathMatcher(earlier).covers(PathMatcher(later))


def test_a_method_route_covers_only_itself() -> None:
    assert _covers("/pkg.Svc/Get", "/pkg.Svc/Get")
    assert not _covers("/pkg.Svc/Get", "/pkg.Svc/GetAll")
    assert not _covers("/pkg.Svc/Get", "/pkg.Svc/")


def test_a_prefix_route_covers_what_starts_with_it() -> None:
    assert _covers("/", "/pkg.Svc/")
    assert _covers("/", "/pkg.Svc/Get")
    assert _covers("/pkg.Svc/", "/pkg.Svc/Get")
    assert _covers("/pkg.", "/pkg.Svc/")
    assert not _covers("/pkg.Svc/", "/pkg.SvcB/")
    assert not _covers("/pkg.Svc/", "/")


@pytest.mark.parametrize(
    "prefixes",
    [
        ["/pkg.Svc/Get", "/pkg.Svc/GetAll", "/pkg.Svc/", "/"],
        ["/", "/pkg.Svc/"],
        ["/pkg.Svc/", "/pkg.Svc/Get", "/pkg.Svc/GetAll"],
        ["/pkg.Svc/Get", "/pkg.Svc/Get"],
    ],
)
def test_shadowed_routes_are_the_ones_the_router_never_picks(prefixes: list[str]) -> None:
    router = Router([(prefix, i) for i, prefix in enumerate(prefixes)])
    # Every route's own prefix (and, for prefix routes, a method under it) as the probe.
    probes = {p for p in prefixes} | {p + "X" for p in prefixes if p.endswith("/")}
    picked = {router.match(method) for method in probes}
    shadowed = {later for later, _ in shadowed_routes(prefixes)}
    assert shadowed == set(range(len(prefixes))) - picked


def _outbound(*prefixes: str) -> dict[str, Any]:
    return {
        "outbound": {
            "listen": "127.0.0.1:15001",
            "routes": [{"prefix": p, "cluster": "up"} for p in prefixes],
        },
        "clusters": {"up": {"target": "static:///127.0.0.1:1"}},
    }


def test_the_config_accepts_method_routes_the_router_tells_apart() -> None:
    config = parse_config(_outbound("/pkg.Svc/Get", "/pkg.Svc/GetAll", "/pkg.Svc/", "/"), {})
    outbound = config.outbound
    assert outbound is not None
    routes = outbound.routes
    assert outbound.route("/pkg.Svc/Get") is routes[0]
    assert outbound.route("/pkg.Svc/GetAll") is routes[1]
    assert outbound.route("/pkg.Svc/List") is routes[2]
    assert outbound.route("/other.Svc/Get") is routes[3]


@pytest.mark.parametrize(
    ("prefixes", "path", "earlier"),
    [
        (("/pkg.Svc/", "/pkg.Svc/Get"), "outbound.routes[1].prefix", "routes[0]"),
        (("/", "/pkg.Svc/"), "outbound.routes[1].prefix", "routes[0]"),
        (("/", "/pkg.Svc/Get"), "outbound.routes[1].prefix", "routes[0]"),
        (("/pkg.Svc/Get", "/", "/pkg.Svc/Get"), "outbound.routes[2].prefix", "routes[0]"),
    ],
)
def test_a_truly_unreachable_route_is_still_an_error(
    prefixes: tuple[str, ...], path: str, earlier: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_outbound(*prefixes), {})
    (error,) = caught.value.errors
    assert error.path == path
    assert f"unreachable: {earlier}" in error.message
