"""Load balancing above the transport: subchannels, pickers, and balanced channels.

``balancers.insecure_channel(target)`` is a sync ``grpc.Channel``;
``balancers.aio.insecure_channel(target)`` a ``grpc.aio.Channel``. Policies register by name
(``round_robin``, the default, ``pick_first`` and ``weighted_round_robin`` for SRV weights
are built in); third-party policies use
:func:`register` or the ``meshkit.balancers`` entry-point group.

Names follow grpcio's convention: the sync API is at the top (``balancers.BalancedChannel``,
``insecure_channel``, ``secure_channel``, like ``grpc.Channel``) and its asyncio twin has the
same names in ``balancers.aio`` (like ``grpc.aio.Channel``); ``import balancers`` is enough to
use both. What both share (``RetryPolicy``, the policy contract) is only here.
``BalancedSyncChannel`` is the deprecated former name of ``BalancedChannel``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from balancers._base import (
    Balancer,
    BalancerBuilder,
    BalancerController,
    BalancerOptions,
    ConfigParser,
    DoneInfo,
    ErrorPicker,
    NoSubchannelAvailable,
    Picker,
    PickFailed,
    PickInfo,
    PickResult,
    QueuePicker,
    Subchannel,
    SubchannelState,
    aggregate,
    parse_policy_config,
)
from balancers._factory import settings_from
from balancers._registry import ENTRY_POINT_GROUP, get, policy_names, register
from balancers._retry import RetryPolicy
from balancers._sync import BalancedChannel, PickError
from balancers.pick_first import PickFirstBuilder
from balancers.round_robin import RoundRobinBuilder
from balancers.weighted_round_robin import WeightedRoundRobinBuilder
from health.outlier import OutlierConfig
from resolvers import ResolverOptions

register(RoundRobinBuilder())
register(PickFirstBuilder())
register(WeightedRoundRobinBuilder())

__all__ = [
    "ENTRY_POINT_GROUP",
    "BalancedChannel",
    "Balancer",
    "BalancerBuilder",
    "BalancerController",
    "BalancerOptions",
    "ConfigParser",
    "DoneInfo",
    "ErrorPicker",
    "NoSubchannelAvailable",
    "PickError",
    "PickFailed",
    "PickInfo",
    "PickResult",
    "Picker",
    "QueuePicker",
    "RetryPolicy",
    "Subchannel",
    "SubchannelState",
    "aggregate",
    "aio",
    "get",
    "insecure_channel",
    "parse_policy_config",
    "policy_names",
    "register",
    "secure_channel",
]


def insecure_channel(
    target: str,
    options: Sequence[tuple[str, Any]] | None = None,
    compression: grpc.Compression | None = None,
    interceptors: Sequence[Any] | None = None,
    *,
    lb_policy: str = "round_robin",
    lb_config: dict[str, Any] | None = None,
    health_check_service: str | None = None,
    outlier_detection: OutlierConfig | None = None,
    resolver_options: ResolverOptions | None = None,
    drain_timeout: float = 30.0,
    retry: RetryPolicy | None = None,
) -> BalancedChannel:
    """A balanced plaintext sync ``grpc.Channel``; see :func:`balancers.aio.insecure_channel`.

    ``interceptors`` are ``grpc`` client interceptors, applied per endpoint. ``retry`` (a
    :class:`RetryPolicy`) retries ``__call__``/``with_call`` of unary-unary methods and
    unary-stream calls until their first message; ``future()`` and request-streaming calls
    get one attempt.
    """
    settings = settings_from(
        lb_policy,
        lb_config,
        health_check_service,
        outlier_detection,
        resolver_options,
        drain_timeout,
        retry,
    )
    return BalancedChannel(target, None, options, settings, compression, interceptors)


def secure_channel(
    target: str,
    credentials: grpc.ChannelCredentials,
    options: Sequence[tuple[str, Any]] | None = None,
    compression: grpc.Compression | None = None,
    interceptors: Sequence[Any] | None = None,
    *,
    lb_policy: str = "round_robin",
    lb_config: dict[str, Any] | None = None,
    health_check_service: str | None = None,
    outlier_detection: OutlierConfig | None = None,
    resolver_options: ResolverOptions | None = None,
    drain_timeout: float = 30.0,
    retry: RetryPolicy | None = None,
) -> BalancedChannel:
    """Like :func:`insecure_channel`, over TLS with ``credentials``."""
    settings = settings_from(
        lb_policy,
        lb_config,
        health_check_service,
        outlier_detection,
        resolver_options,
        drain_timeout,
        retry,
    )
    return BalancedChannel(target, credentials, options, settings, compression, interceptors)


# Last: the twin imports this package's modules (as ``grpc`` imports ``grpc.aio``).
from balancers import aio  # noqa: E402

_DEPRECATED = {"BalancedSyncChannel": ("BalancedChannel", BalancedChannel)}

if TYPE_CHECKING:
    BalancedSyncChannel = BalancedChannel  # deprecated
else:  # hidden from type checkers, which would otherwise accept any name of this module

    def __getattr__(name: str) -> Any:
        """Former names, still importable for one release with a ``DeprecationWarning``."""
        if name in _DEPRECATED:
            new, value = _DEPRECATED[name]
            warnings.warn(
                f"balancers.{name} is deprecated; use balancers.{new}",
                DeprecationWarning,
                stacklevel=2,
            )
            return value
        raise AttributeError(f"module 'balancers' has no attribute {name!r}")
