"""``pick_first``: all traffic to the first address (in resolver order) that is READY.

gRPC's pick_first holds one connection and walks the list on failure. Here every address keeps
a warm subchannel, so failing over to the next address costs no connection set-up: the price
is one idle connection per extra address, which for the short lists pick_first is used with
(a primary and its standbys) is the better trade.
"""

from __future__ import annotations

from collections.abc import Sequence

from balancers._base import (
    Balancer,
    BalancerController,
    BalancerOptions,
    Picker,
    PickInfo,
    PickResult,
)
from balancers._subchannel import Subchannel
from balancers._subchannel_set import SubchannelSetBalancer


class FirstReadyPicker(Picker):
    """Always the first READY subchannel."""

    __slots__ = ("_result",)

    def __init__(self, ready: Sequence[Subchannel]) -> None:
        self._result = PickResult(ready[0])

    def pick(self, info: PickInfo) -> PickResult:
        return self._result


class PickFirstBuilder:
    """Builds the ``pick_first`` policy."""

    name = "pick_first"

    def build(self, controller: BalancerController, options: BalancerOptions) -> Balancer:
        return SubchannelSetBalancer(controller, options, FirstReadyPicker)
