"""Prefix routing of gRPC method paths (``/package.Service/Method``) to targets.

A route is a path prefix and a target (a cluster name, an :class:`~sidecar.proxy.Upstream`,
anything). Routes are tried in the order given and the first match wins, as in Envoy and
linkerd. Three shapes are meaningful for gRPC:

- ``/`` matches every method (the catch-all, put it last);
- ``/pkg.Service/`` matches every method of one service (any prefix ending in ``/``, or any
  other string prefix such as ``/pkg.``, matches by ``str.startswith``);
- ``/pkg.Service/Method`` (two path segments, both non-empty) matches that method exactly, so
  ``/pkg.Service/Get`` does not capture ``/pkg.Service/GetAll``.

Matching is precomputed: the answer per method path is cached, so the steady-state cost is one
dict lookup. The cache is bounded because method paths come from the network (a client can send
any path and a ``/`` route matches them all); when full it is cleared and refilled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["DEFAULT_CACHE_SIZE", "Router"]

DEFAULT_CACHE_SIZE = 4096
_MISS = object()


def _is_exact(prefix: str) -> bool:
    parts = prefix.split("/")
    return len(parts) == 3 and parts[0] == "" and bool(parts[1]) and bool(parts[2])


class Router(Generic[T]):
    """First-match prefix router: ``Router([("/pkg.Svc/", a), ("/", b)]).match(path)``."""

    __slots__ = ("_cache", "_cache_size", "_routes")

    def __init__(
        self, routes: Sequence[tuple[str, T]], *, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        """Validate ``routes`` (each prefix starts with ``/``) and keep their order.

        Raises :class:`ValueError` naming the offending route.
        """
        compiled: list[tuple[str, bool, T]] = []
        for index, (prefix, target) in enumerate(routes):
            if not isinstance(prefix, str) or not prefix.startswith("/"):
                raise ValueError(f"routes[{index}].prefix: must start with '/', got {prefix!r}")
            compiled.append((prefix, _is_exact(prefix), target))
        if cache_size < 1:
            raise ValueError(f"cache_size: must be >= 1, got {cache_size}")
        self._routes: tuple[tuple[str, bool, T], ...] = tuple(compiled)
        self._cache: dict[str, T | None] = {}
        self._cache_size = cache_size

    @property
    def routes(self) -> tuple[tuple[str, T], ...]:
        """The routes in match order."""
        return tuple((prefix, target) for prefix, _, target in self._routes)

    def match(self, method: str) -> T | None:
        """The target of the first route matching ``method``, or ``None``."""
        found = self._cache.get(method, _MISS)
        if found is not _MISS:
            return found  # type: ignore[return-value]
        result: T | None = None
        for prefix, exact, target in self._routes:
            if (method == prefix) if exact else method.startswith(prefix):
                result = target
                break
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[method] = result
        return result

    __call__ = match
