"""The balancer contract (grpc-go's, the Python way).

A *balancer* (policy) receives resolver snapshots and subchannel state changes, serially on the
channel's event loop, and publishes an immutable *picker*. The channel asks the current picker
for a subchannel on every call; ``Picker.pick`` never blocks, never awaits and never mutates
shared state beyond a counter.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

import grpc

from resolvers import Address, ResolverState

Connectivity: TypeAlias = grpc.ChannelConnectivity
IDLE = grpc.ChannelConnectivity.IDLE
CONNECTING = grpc.ChannelConnectivity.CONNECTING
READY = grpc.ChannelConnectivity.READY
TRANSIENT_FAILURE = grpc.ChannelConnectivity.TRANSIENT_FAILURE
SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN


@dataclass(frozen=True)
class SubchannelState:
    """What a policy sees of one subchannel: connectivity combined with health and ejection
    (a connected but unhealthy or ejected endpoint is reported TRANSIENT_FAILURE)."""

    connectivity: Connectivity
    reason: str = ""


class Subchannel(Protocol):
    """One endpoint, as a policy sees it (grpc-go's ``SubConn``). The channel makes them
    (:meth:`BalancerController.new_subchannel`) and owns their connections; a policy only
    connects them, follows their state, moves one to new address attributes, and hands them
    to its pickers."""

    @property
    def address(self) -> Address:
        """The endpoint's address, with its attributes (e.g. an SRV weight)."""
        ...

    @property
    def state(self) -> SubchannelState:
        """What the picker should see: connectivity combined with health and ejection."""
        ...

    def connect(self) -> None:
        """Start connecting, and keep reconnecting until the subchannel is given back."""
        ...

    def update_address(self, address: Address) -> None:
        """New attributes for the same endpoint (same host and port)."""
        ...


@dataclass(frozen=True)
class PickInfo:
    """What a picker may look at: the full method name and the call's metadata."""

    method: str
    metadata: Sequence[tuple[str, str | bytes]] | None = None


@dataclass(frozen=True)
class DoneInfo:
    """How a picked call ended; fed to ``PickResult.done``."""

    code: grpc.StatusCode
    details: str = ""


@dataclass(frozen=True)
class PickResult:
    """The chosen subchannel and an optional hook called once when the call ends."""

    subchannel: Subchannel
    done: Callable[[DoneInfo], None] | None = None


class NoSubchannelAvailable(Exception):
    """Raised by ``pick``: nothing pickable yet; the call waits for the next picker."""


class PickFailed(Exception):
    """Raised by ``pick``: fail the call with ``code`` unless it is wait-for-ready, in which
    case it waits for the next picker like ``NoSubchannelAvailable``."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Picker(abc.ABC):
    """Chooses a subchannel for one call. Immutable once published."""

    @abc.abstractmethod
    def pick(self, info: PickInfo) -> PickResult:
        """Return a result or raise ``NoSubchannelAvailable`` / ``PickFailed``."""


class QueuePicker(Picker):
    """Published while connecting: every call waits for the next picker."""

    def pick(self, info: PickInfo) -> PickResult:
        raise NoSubchannelAvailable()


@dataclass(frozen=True)
class ErrorPicker(Picker):
    """Published in TRANSIENT_FAILURE: fail-fast calls fail with this status."""

    code: grpc.StatusCode
    details: str

    def pick(self, info: PickInfo) -> PickResult:
        raise PickFailed(self.code, self.details)


@dataclass(frozen=True)
class BalancerOptions:
    """Per-channel knobs a policy may read: the channel's ``target``, and ``config``, the
    policy's own config as its builder's ``parse_config`` returned it (``None`` for a policy
    without config)."""

    target: str = ""
    config: Any = None


class BalancerController(Protocol):
    """The channel side of a policy (grpc-go's ``balancer.ClientConn``).

    Policies never own grpc channels: they ask for subchannels here and give them back.
    """

    def new_subchannel(
        self,
        address: Address,
        listener: Callable[[Subchannel, SubchannelState], None],
    ) -> Subchannel:
        """A subchannel to ``address``, IDLE until ``connect()``; state changes go to
        ``listener`` on the event loop."""
        ...

    def remove_subchannel(self, subchannel: Subchannel) -> None:
        """Give it back: it leaves rotation now and closes once its in-flight calls end."""
        ...

    def update_state(self, connectivity: Connectivity, picker: Picker) -> None:
        """Publish the channel's aggregate state and a new picker."""
        ...

    def resolve_now(self) -> None:
        """Ask the resolver for a fresh lookup (a hint, rate-limited by the resolver)."""
        ...


class Balancer(abc.ABC):
    """A load-balancing policy instance, driven serially by the channel."""

    @abc.abstractmethod
    def update_resolver_state(self, state: ResolverState) -> None:
        """A new full address snapshot."""

    @abc.abstractmethod
    def resolver_error(self, error: Exception) -> None:
        """The resolver failed; keep serving the last good addresses if there are any."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every subchannel; idempotent."""


class BalancerBuilder(Protocol):
    """Makes one policy; registered by ``name``."""

    name: str

    def build(self, controller: BalancerController, options: BalancerOptions) -> Balancer:
        """A new policy instance bound to ``controller``."""
        ...


@runtime_checkable
class ConfigParser(Protocol):
    """A builder that takes config (grpc-go's ``balancer.ConfigParser``): it alone knows its
    policy's settings, so it alone checks them."""

    def parse_config(self, config: Mapping[str, Any]) -> Any:
        """The policy's parsed config; ``ValueError`` naming the bad key otherwise."""
        ...


def parse_policy_config(builder: BalancerBuilder, config: Mapping[str, Any] | None) -> Any:
    """``config`` parsed by ``builder`` (:class:`ConfigParser`); a builder without a parser
    takes none, so a non-empty ``config`` is a ``ValueError`` naming the policy."""
    if isinstance(builder, ConfigParser):
        return builder.parse_config(dict(config or {}))
    if config:
        keys = ", ".join(sorted(map(str, config)))
        raise ValueError(f"policy {builder.name} takes no config (got {keys})")
    return None


def aggregate(states: Sequence[Connectivity]) -> Connectivity:
    """gRPC's rule: any READY -> READY, else CONNECTING, else IDLE, else TRANSIENT_FAILURE.

    No subchannels at all is TRANSIENT_FAILURE (nothing to talk to).
    """
    if READY in states:
        return READY
    if CONNECTING in states:
        return CONNECTING
    if IDLE in states:
        return IDLE
    return TRANSIENT_FAILURE
