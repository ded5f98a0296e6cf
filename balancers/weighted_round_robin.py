"""``weighted_round_robin``: READY endpoints in proportion to their address weight.

Weights come from the resolver (SRV records give them; other addresses weigh 1). The
schedule is nginx's smooth weighted round robin, computed once per picker, so picks stay
allocation-free and interleaved (weights 5:1:1 give a a b a c a a, not a a a a a b c).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from balancers._base import Balancer, BalancerController, BalancerOptions, Picker, Subchannel
from balancers._subchannel_set import SubchannelSetBalancer
from balancers.round_robin import RoundRobinPicker

MAX_SCHEDULE = 1000
"""Longest schedule kept: larger weight totals are scaled down (each endpoint keeps >= 1)."""


def smooth_schedule(weights: Sequence[int]) -> list[int]:
    """Indices into ``weights`` in smooth weighted round-robin order, one full cycle.

    A weight below 1 (SRV allows 0: "very small chance") counts as 1.
    """
    clamped = [max(int(w), 1) for w in weights]
    divisor = math.gcd(*clamped)
    clamped = [w // divisor for w in clamped]
    total = sum(clamped)
    if total > MAX_SCHEDULE:
        clamped = [max(1, round(w * MAX_SCHEDULE / total)) for w in clamped]
        total = sum(clamped)
    current = [0] * len(clamped)
    order: list[int] = []
    for _ in range(total):
        for i, w in enumerate(clamped):
            current[i] += w
        best = max(range(len(clamped)), key=current.__getitem__)
        current[best] -= total
        order.append(best)
    return order


def weighted_picker(ready: Sequence[Subchannel]) -> Picker:
    """A round-robin picker over the smooth weighted schedule of ``ready``."""
    return RoundRobinPicker(
        [ready[i] for i in smooth_schedule([sc.address.weight for sc in ready])]
    )


class WeightedRoundRobinBuilder:
    """Builds the ``weighted_round_robin`` policy."""

    name = "weighted_round_robin"

    def build(self, controller: BalancerController, options: BalancerOptions) -> Balancer:
        return SubchannelSetBalancer(controller, options, weighted_picker)
