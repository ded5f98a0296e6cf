"""Keyword arguments shared by every balanced-channel constructor."""

from __future__ import annotations

from typing import Any

from balancers._core import ChannelSettings
from balancers._retry import RetryPolicy
from health.outlier import OutlierConfig
from resolvers import ResolverOptions


def settings_from(
    lb_policy: str,
    lb_config: dict[str, Any] | None,
    health_check_service: str | None,
    outlier_detection: OutlierConfig | None,
    resolver_options: ResolverOptions | None,
    drain_timeout: float,
    retry: RetryPolicy | None = None,
) -> ChannelSettings:
    """Validate and bundle the balancing settings of a channel."""
    if drain_timeout < 0:
        raise ValueError("drain_timeout must be >= 0")
    if health_check_service is not None and not isinstance(health_check_service, str):
        raise ValueError("health_check_service must be a service name (str) or None")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ValueError("retry must be a balancers.RetryPolicy or None")
    if outlier_detection is not None and not isinstance(outlier_detection, OutlierConfig):
        raise ValueError("outlier_detection must be a health.OutlierConfig or None")
    return ChannelSettings(
        lb_policy=lb_policy,
        lb_config=dict(lb_config or {}),
        health_check_service=health_check_service,
        outlier_detection=outlier_detection,
        resolver_options=resolver_options or ResolverOptions(),
        drain_timeout=drain_timeout,
        retry=retry,
    )
