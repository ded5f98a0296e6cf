"""The resolver contract: builders make resolvers, resolvers push into a listener."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from resolvers._types import ResolverState, Target


class ResolverListener(Protocol):
    """What a resolver pushes into (the channel side). Called on the event loop."""

    def update_state(self, state: ResolverState) -> None:
        """Take a new full snapshot of addresses."""

    def report_error(self, error: Exception) -> None:
        """Resolution failed; the last good state (if any) stays in force."""


@dataclass(frozen=True)
class ResolverOptions:
    """Timing knobs shared by polling resolvers (seconds)."""

    min_refresh: float = 1.0
    max_refresh: float = 300.0
    jitter: float = 0.1
    """Fraction of the refresh delay added at random, so replicas do not poll in lockstep."""
    resolve_now_min_interval: float = 1.0
    """``resolve_now()`` hints closer together than this are merged into one lookup."""
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    lookup_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.min_refresh <= self.max_refresh:
            raise ValueError("ResolverOptions: need 0 < min_refresh <= max_refresh")
        if not 0 <= self.jitter <= 1:
            raise ValueError("ResolverOptions.jitter must be within [0, 1]")
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ValueError("ResolverOptions: need 0 < initial_backoff <= max_backoff")
        if self.lookup_timeout <= 0 or self.resolve_now_min_interval < 0:
            raise ValueError("ResolverOptions: timeouts must be positive")


class Resolver(abc.ABC):
    """A running resolver: started by its builder, watching its target until closed."""

    @abc.abstractmethod
    def resolve_now(self) -> None:
        """Hint that a fresh lookup would help (e.g. an endpoint failed). Never blocks."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop watching; idempotent."""


@runtime_checkable
class ResolverBuilder(Protocol):
    """Makes resolvers for one URI scheme.

    Two more methods are optional (see :class:`TargetChecker`): ``validate_target``, so a
    config can be checked without starting anything, and ``default_authority``.
    """

    scheme: str

    def build(
        self, target: Target, listener: ResolverListener, options: ResolverOptions
    ) -> Resolver:
        """Start a resolver for ``target`` on the running event loop; raise ``ValueError``
        when the target is malformed for this scheme."""
        ...


@runtime_checkable
class TargetChecker(Protocol):
    """What a builder implements to check targets up front (all built-in builders do).

    :func:`resolvers.check_target` calls it for ``sidecar validate``, the sidecar's clusters
    and every balanced channel, and the builder's ``build`` calls it too, so every path gives
    a target the same verdict.
    """

    def validate_target(self, target: Target) -> None:
        """Raise ``ValueError`` saying what is wrong with ``target`` for this scheme."""
        ...

    def default_authority(self, target: Target) -> str | None:
        """The ``:authority`` a channel to ``target`` sends (the service's name, as gRPC
        would); ``None`` when there is none to give (a list of several addresses)."""
        ...
