"""``round_robin``: every READY endpoint in turn, starting at a random one."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from balancers._base import (
    Balancer,
    BalancerController,
    BalancerOptions,
    Picker,
    PickInfo,
    PickResult,
    Subchannel,
)
from balancers._subchannel_set import SubchannelSetBalancer


class RoundRobinPicker(Picker):
    """Cycles over a fixed tuple of READY subchannels.

    The random start keeps many clients from all hitting the first endpoint after a restart.
    ``itertools.count`` advances atomically under the GIL, so threads share it safely.
    """

    __slots__ = ("_counter", "_results", "_size")

    def __init__(self, ready: Sequence[Subchannel], start: int | None = None) -> None:
        # One PickResult per endpoint, made once: a pick allocates nothing.
        self._results = tuple(PickResult(sc) for sc in ready)
        self._size = len(self._results)
        first = random.randrange(self._size) if start is None else start
        self._counter = itertools.count(first)

    def pick(self, info: PickInfo) -> PickResult:
        return self._results[next(self._counter) % self._size]


class RoundRobinBuilder:
    """Builds the ``round_robin`` policy."""

    name = "round_robin"

    def build(self, controller: BalancerController, options: BalancerOptions) -> Balancer:
        return SubchannelSetBalancer(controller, options, RoundRobinPicker)
