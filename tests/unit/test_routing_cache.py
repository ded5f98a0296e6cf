"""The router's answer cache: hits, its bound, its size check; and the edge of exact routes."""

from __future__ import annotations

import pytest

from sidecar.routing import Router


class CountingPath(str):
    """A method path that counts the prefix comparisons a route makes against it."""

    def __init__(self, value: str) -> None:
        self.compared = 0

    def startswith(self, *args: object, **kwargs: object) -> bool:
        self.compared += 1
        return super().startswith(*args, **kwargs)  # type: ignore[arg-type]


ROUTES = [("/a.S/", 1), ("/", 2)]


def test_a_repeated_path_is_answered_from_the_cache() -> None:
    router = Router(ROUTES)
    first = CountingPath("/b.S/M")
    assert router.match(first) == 2
    assert first.compared == 2  # tried /a.S/ then /
    again = CountingPath("/b.S/M")  # equal, not the same object: as from the network
    assert router.match(again) == 2
    assert again.compared == 0


def test_the_cache_never_holds_more_than_its_size() -> None:
    router = Router(ROUTES, cache_size=2)
    for path in ("/p1.S/M", "/p2.S/M", "/p3.S/M"):
        router.match(path)
    # Full at p3: the cache was emptied and holds p3 alone.
    p3, p1 = CountingPath("/p3.S/M"), CountingPath("/p1.S/M")
    assert router.match(p3) == 2 and p3.compared == 0
    assert router.match(p1) == 2 and p1.compared > 0


def test_a_cache_of_one_works() -> None:
    router = Router(ROUTES, cache_size=1)
    for _ in range(3):
        assert router.match("/a.S/M") == 1
        assert router.match("/z.S/M") == 2
    hit = CountingPath("/z.S/M")
    assert router.match(hit) == 2 and hit.compared == 0


@pytest.mark.parametrize("size", [0, -1])
def test_a_cache_size_below_one_is_rejected(size: int) -> None:
    with pytest.raises(ValueError, match=rf"^cache_size: must be >= 1, got {size}$"):
        Router(ROUTES, cache_size=size)


def test_a_route_with_an_empty_service_is_a_prefix_not_a_method() -> None:
    # Exact needs both segments non-empty: ``//Get`` matches by prefix, as ``/pkg.S/`` does.
    router = Router([("//Get", "x"), ("/pkg.S/", "s")])
    assert router.match("//Get") == "x"
    assert router.match("//GetAll") == "x"
    assert router.match("/pkg.S/") == "s"
    assert router.match("/pkg.S/Get") == "s"
