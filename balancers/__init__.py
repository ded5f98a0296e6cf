"""Load balancing above the transport: subchannels, pickers, and balanced channels."""

from __future__ import annotations

from balancers._base import (
    Balancer,
    BalancerBuilder,
    BalancerController,
    BalancerOptions,
    DoneInfo,
    ErrorPicker,
    NoSubchannelAvailable,
    PickFailed,
    Picker,
    PickInfo,
    PickResult,
    QueuePicker,
    SubchannelState,
    aggregate,
)

__all__ = [
    "Balancer",
    "BalancerBuilder",
    "BalancerController",
    "BalancerOptions",
    "DoneInfo",
    "ErrorPicker",
    "NoSubchannelAvailable",
    "PickFailed",
    "PickInfo",
    "PickResult",
    "Picker",
    "QueuePicker",
    "SubchannelState",
    "aggregate",
]
