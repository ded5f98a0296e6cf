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
from balancers._registry import ENTRY_POINT_GROUP, get, policy_names, register

__all__ = [
    "ENTRY_POINT_GROUP",
    "get",
    "policy_names",
    "register",
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
