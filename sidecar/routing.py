"""Prefix routing of gRPC method paths (``/package.Service/Method``) to targets.

A route is a path prefix and a target (a cluster name, an :class:`~sidecar.proxy.Upstream`,
anything). Routes are tried in the order given and the first match wins, as in Envoy and
linkerd. Three shapes are meaningful for gRPC:

- ``/`` matches every method (the catch-all, put it last);
- ``/pkg.Service/`` matches every method of one service (any prefix ending in ``/``, or any
  other string prefix such as ``/pkg.``, matches by ``str.startswith``);
- ``/pkg.Service/Method`` (two path segments, both non-empty) matches that method exactly, so
  ``/pkg.Service/Get`` does not capture ``/pkg.Service/GetAll``.

:class:`PathMatcher` is that rule, the only copy: the router matches with it, and the config
uses it to reject a route no call can reach (:func:`shadowed_routes`).

Matching is precomputed: the answer per method path is cached, so the steady-state cost is one
dict lookup. The cache is bounded because method paths come from the network (a client can send
any path and a ``/`` route matches them all); when full it is cleared and refilled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["DEFAULT_CACHE_SIZE", "PathMatcher", "Router", "shadowed_routes"]

DEFAULT_CACHE_SIZE = 4096
_MISS = object()


class PathMatcher:
    """One route's ``prefix``: which method paths it takes (see the module doc).

    ``exact`` is true for a full method path (``/pkg.Service/Method``): only that method
    matches; any other prefix matches by ``str.startswith``.
    """

    __slots__ = ("exact", "prefix")

    def __init__(self, prefix: str) -> None:
        parts = prefix.split("/")
        self.prefix = prefix
        self.exact = len(parts) == 3 and parts[0] == "" and bool(parts[1]) and bool(parts[2])

    def matches(self, method: str) -> bool:
        """True when this route takes calls to ``method`` (``/pkg.Service/Method``)."""
        return method == self.prefix if self.exact else method.startswith(self.prefix)

    def covers(self, later: PathMatcher) -> bool:
        """True when every method ``later`` matches is matched by this route too, so ``later``
        placed after it is unreachable."""
        if later.exact:
            return self.matches(later.prefix)
        return not self.exact and later.prefix.startswith(self.prefix)

    def __repr__(self) -> str:
        return f"PathMatcher({self.prefix!r})"


def shadowed_routes(prefixes: Sequence[str]) -> Iterator[tuple[int, int]]:
    """``(later, earlier)`` index pairs where route ``later`` can never match because route
    ``earlier`` (the first such) takes every method it would; routes try in order."""
    matchers = [PathMatcher(prefix) for prefix in prefixes]
    for j, later in enumerate(matchers):
        for i, earlier in enumerate(matchers[:j]):
            if earlier.covers(later):
                yield j, i
                break


class Router(Generic[T]):
    """First-match prefix router: ``Router([("/pkg.Svc/", a), ("/", b)]).match(path)``."""

    __slots__ = ("_cache", "_cache_size", "_routes")

    def __init__(
        self, routes: Sequence[tuple[str, T]], *, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        """Validate ``routes`` (each prefix starts with ``/``) and keep their order.

        Raises :class:`ValueError` naming the offending route.
        """
        compiled: list[tuple[PathMatcher, T]] = []
        for index, (prefix, target) in enumerate(routes):
            if not isinstance(prefix, str) or not prefix.startswith("/"):
                raise ValueError(f"routes[{index}].prefix: must start with '/', got {prefix!r}")
            compiled.append((PathMatcher(prefix), target))
        if cache_size < 1:
            raise ValueError(f"cache_size: must be >= 1, got {cache_size}")
        self._routes: tuple[tuple[PathMatcher, T], ...] = tuple(compiled)
        self._cache: dict[str, T | None] = {}
        self._cache_size = cache_size

    @property
    def routes(self) -> tuple[tuple[str, T], ...]:
        """The routes in match order."""
        return tuple((matcher.prefix, target) for matcher, target in self._routes)

    def match(self, method: str) -> T | None:
        """The target of the first route matching ``method``, or ``None``."""
        found = self._cache.get(method, _MISS)
        if found is not _MISS:
            return found  # type: ignore[return-value]
        result: T | None = None
        for matcher, target in self._routes:
            if matcher.matches(method):
                result = target
                break
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[method] = result
        return result

    __call__ = match
