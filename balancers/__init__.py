"""Load balancing above the transport: subchannels, pickers, and balanced channels.

``balancers.insecure_channel(target)`` is a sync ``grpc.Channel``;
``balancers.aio.insecure_channel(target)`` a ``grpc.aio.Channel``. Policies register by name
(``round_robin``, the default, ``pick_first`` and ``weighted_round_robin`` for SRV weights
are built in); third-party policies use
:func:`register` or the ``meshkit.balancers`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from balancers._base import (
    Balancer,
    BalancerBuilder,
    BalancerController,
    BalancerOptions,
    DoneInfo,
    ErrorPicker,
    NoSubchannelAvailable,
    Picker,
    PickFailed,
    PickInfo,
    PickResult,
    QueuePicker,
    SubchannelState,
    aggregate,
)
from balancers._factory import settings_from
from balancers._registry import ENTRY_POINT_GROUP, get, policy_names, register
from balancers._retry import RetryPolicy
from balancers._sync import BalancedSyncChannel, PickError
from balancers.pick_first import PickFirstBuilder
from balancers.round_robin import RoundRobinBuilder
from balancers.weighted_round_robin import WeightedRoundRobinBuilder
from resolvers import ResolverOptions

register(RoundRobinBuilder())
register(PickFirstBuilder())
register(WeightedRoundRobinBuilder())

__all__ = [
    "ENTRY_POINT_GROUP",
    "BalancedSyncChannel",
    "Balancer",
    "BalancerBuilder",
    "BalancerController",
    "BalancerOptions",
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
    "SubchannelState",
    "aggregate",
    "get",
    "insecure_channel",
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
    outlier_detection: Any = None,
    resolver_options: ResolverOptions | None = None,
    drain_timeout: float = 30.0,
    retry: RetryPolicy | None = None,
) -> BalancedSyncChannel:
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
    return BalancedSyncChannel(target, None, options, settings, compression, interceptors)


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
    outlier_detection: Any = None,
    resolver_options: ResolverOptions | None = None,
    drain_timeout: float = 30.0,
    retry: RetryPolicy | None = None,
) -> BalancedSyncChannel:
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
    return BalancedSyncChannel(target, credentials, options, settings, compression, interceptors)
