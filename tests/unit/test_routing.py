"""Prefix routing: order, exact method routes, validation, bounded cache."""

from __future__ import annotations

import pytest

from sidecar.routing import Router


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
