"""Balanced ``grpc.aio`` channels: the asyncio twin of ``balancers``, under the same names.

Replace ``grpc.aio.insecure_channel("dns:///svc:50051")`` by
``balancers.aio.insecure_channel("dns:///svc:50051")``: the same stubs work, and calls are
spread over every address the resolver finds, following them as they change. ``import
balancers`` is enough (as ``import grpc`` gives ``grpc.aio``); what the twins share
(``RetryPolicy``, the policy contract) is in ``balancers`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from balancers._factory import settings_from
from balancers._retry import RetryPolicy
from balancers.aio._channel import BalancedChannel
from health.outlier import OutlierConfig
from resolvers import ResolverOptions

__all__ = ["BalancedChannel", "insecure_channel", "secure_channel"]


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
    """A balanced plaintext channel to ``target`` (``dns:///``, ``static:///``, ...).

    ``options`` are grpcio channel arguments applied to every endpoint's connection
    (keepalive, message sizes...). ``health_check_service`` turns on grpc.health.v1 checking
    of every endpoint (``""`` is the whole server); ``outlier_detection`` takes a
    ``health.OutlierConfig``. ``retry`` (a ``balancers.RetryPolicy``) retries unary-unary and
    unary-stream calls that fail before the server answered (streaming-request calls get one
    attempt); None, the default, keeps calls on grpcio's own call objects with no added cost.
    May be called with no event loop running (at import time): the channel then binds to the
    loop of its first use.
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
    """Like :func:`insecure_channel`, over TLS with ``credentials``.

    The TLS server name checked is the target's service name (``svc`` for ``dns:///svc:443``),
    as with a plain grpcio channel; override it with the ``grpc.ssl_target_name_override``
    option.
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
    return BalancedChannel(target, credentials, options, settings, compression, interceptors)
